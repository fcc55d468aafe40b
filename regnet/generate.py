"""The offline synthetic-data job: every (data, case, type, dsmooth, stage) of the settings -> files.

Two phases, each a set of independent joblib tasks: (1) the original image of every
(data, case, type) on the stage grid with its lung and torso masks; (2) one synthetic pair per
(…, dsmooth). Every file is written atomically and a pair's ``done.json`` last, so a killed job
re-run skips what is finished and redoes the rest, bitwise the same: every draw is seeded by the
stable hash of the task, never by order, process or clock. ``backend="dask"`` runs the same
tasks on a ``dask.distributed`` cluster through joblib.

Where the files go (and which pairs are done) is :mod:`regnet.store`'s job: one
:class:`~regnet.store.PairStore` per run, its data layouts loaded once and shipped with every task.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform.augment import intensity_chain, next_image
from regnet.deform.field import bspline_coefficients, jacobian_determinant, warp, warp_masks
from regnet.deform.kernels import field_statistics
from regnet.deform.kernels import set_threads as set_kernel_threads
from regnet.deform.methods import inputs_of, synthetic_dvf
from regnet.files import remove_stale_temporaries, write_json_atomic
from regnet.geometry import Geometry
from regnet.heap import keep_freed_memory
from regnet.io import (
    dvf_to_image,
    image_from_array,
    isotropic_geometry,
    resample_to_geometry,
    round_array,
    round_image,
    write_dvf,
    write_image,
)
from regnet.masks import compute_masks
from regnet.resume import describe_stale, forget, made_from, stale_pairs
from regnet.seeding import rng_for
from regnet.settings import Settings, load_settings
from regnet.store import ImageId, PairId, PairStore, tasks
from regnet.timing import step

CLI_HELP = "generate the synthetic pairs of a settings file (parallel, resumable, Dask-ready)"


def pair_key(image: ImageId, dsmooth: int) -> tuple:
    """The stable-hash key of a pair without its purpose: the job's, and the device source's for the
    same pair (so device validation draws the job's fields)."""
    return (image.deform_exp, image.data, image.cn, image.type_im, dsmooth, image.stage)


def _rng(image: ImageId, dsmooth: int, purpose: str):
    return rng_for(*pair_key(image, dsmooth), purpose)


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


# ---------------------------------------------------------------- phase 1: originals
def prepare_image(image: ImageId, store: PairStore) -> Path:
    """The original image, lung and torso on the stage grid (``stage`` mm isotropic, direction
    kept), written once per image. Masks come from the layout when it has them, else from
    :mod:`regnet.masks`."""
    out = store.original_dir(image)
    if (out / "Torso.mha").exists():
        return out
    on_grid, torso, lung = original_on_stage_grid(image, store)
    write_image(lung, out / "Lung.mha")
    write_image(on_grid, out / "Image.mha", compress=False)  # zlib: 0.7 CPU s per 20.8 M voxels, 20x the write
    # the torso last: its presence marks a complete set
    write_image(torso, out / "Torso.mha")
    return out


def original_on_stage_grid(image: ImageId, store: PairStore) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(image, torso, lung) of ``image`` on the stage grid, in memory: what :func:`prepare_image`
    writes, and what the in-memory reader uses instead of those files."""
    layout = store.layout(image.data)
    case = _case(image.cn, layout)
    original = layout.read_image(case, image.type_im)
    lung = layout.read_mask("lung", case, image.type_im)
    torso = layout.read_mask("torso", case, image.type_im)
    if lung is None or torso is None:
        computed = compute_masks(original, fallback=None if layout.modality == "CT" else "otsu")
        lung = lung if lung is not None else computed["lung"]
        torso = torso if torso is not None else computed["torso"]
    default = layout.default_pixel_value
    spacing = float(image.stage)
    # CT stays Int16 as RegNet's files; anything else (e.g. normalised MR) is kept as Float32
    is_float = original.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    on_grid = on_stage_grid(original, spacing, "bspline", default, sitk.sitkFloat32 if is_float else sitk.sitkInt16)
    return (on_grid, on_stage_grid(torso, spacing, "nearest", 0, sitk.sitkUInt8),
            on_stage_grid(lung, spacing, "nearest", 0, sitk.sitkUInt8))


def on_stage_grid(image: sitk.Image, spacing: float, interpolator: str, default: float, pixel_id: int) -> sitk.Image:
    """``image`` on the ``spacing`` mm isotropic grid, in ``pixel_id``. An image already on that
    grid is only cast (bitwise unchanged when the type matches): resampling it would cost seconds
    and move nothing. Integer results are rounded and clipped, never truncated toward zero."""
    target = isotropic_geometry(Geometry.of(image), spacing)
    if not Geometry.of(image).close_to(target, tol=1e-6):
        work = image if interpolator == "nearest" else sitk.Cast(image, sitk.sitkFloat32)
        image = resample_to_geometry(work, target, interpolator, default)
    if image.GetPixelID() == pixel_id:
        return image
    if pixel_id not in (sitk.sitkFloat32, sitk.sitkFloat64) and image.GetPixelID() in (sitk.sitkFloat32,
                                                                                        sitk.sitkFloat64):
        return round_image(image, pixel_id)
    return sitk.Cast(image, pixel_id)


def _case(cn: str, layout):
    """Tasks carry cases as strings; give the layout back its own value (int or string)."""
    if isinstance(layout.case_list, list):
        for case in layout.case_list:
            if str(case) == cn:
                return case
    return int(cn) if layout.source == "phantom" else cn


# ---------------------------------------------------------------- phase 2: pairs
def _base_image(pair: PairId, store: PairStore, default: float):
    """Original for dsmooth 0, else the next image of this dsmooth (made once, kept on disk)."""
    original_dir = store.original_dir(pair.image)
    original = [_read(original_dir / f"{n}.mha") for n in ("Image", "Torso", "Lung")]
    if pair.dsmooth == 0:
        return original
    names = store.files(pair)
    files = [names.moving, names.moving_torso, store.next_dir(pair) / "NextLung.mha"]
    if all(f.exists() for f in files):
        return [_read(f) for f in files]
    made = make_next_image(pair, store, original, default)
    # masks first, image last: its presence marks a complete set
    write_image(made[1], files[1], compress=False)
    write_image(made[2], files[2], compress=False)
    write_image(made[0], files[0], compress=False)
    return made


def make_next_image(pair: PairId, store: PairStore, original, default: float) -> list[sitk.Image]:
    """[image, torso, lung] of the next image of ``pair`` (dsmooth > 0), made from the original's."""
    exp = store.settings.deform_exps[pair.image.deform_exp]
    rngs = {k: _rng(pair.image, pair.dsmooth, k) for k in ("NextDVF", "NextSponge", "NextNoise")}
    made = next_image(*original, exp, rngs, default)
    return [made["image"], made["torso"], made["lung"]]


@dataclasses.dataclass
class MadePair:
    """One synthetic pair in memory, before any file: what :func:`generate_pair` writes."""

    pair: PairId
    method: str
    number: int
    image: sitk.Image  # the base (moving) image: original or next image
    torso: sitk.Image
    lung: sitk.Image
    field: sitk.Image  # the DVF, VectorFloat32 on the fixed grid
    deformed: sitk.Image  # the fixed image, in the base image's pixel type
    deformed_torso: sitk.Image
    deformed_lung: sitk.Image
    jac: np.ndarray


def make_pair(pair: PairId, store: PairStore, base=None) -> MadePair:
    """One synthetic pair in memory from its base ``[image, torso, lung]`` (None: read from the
    store as the offline job does). The one code path of both the files and the in-memory reader."""
    exp = store.settings.deform_exps[pair.image.deform_exp]
    default = store.layout(pair.image.data).default_pixel_value
    if base is None:
        with step("next image" if pair.dsmooth else "read original"):
            base = _base_image(pair, store, default)
    image, torso, lung = base
    g = Geometry.of(image)
    torso_arr = sitk.GetArrayViewFromImage(torso) > 0
    lung_arr = sitk.GetArrayViewFromImage(lung) > 0
    method, number = store.method_of(pair)
    available = {"image": image, "torso": torso_arr, "lung": lung_arr if exp.UseLungMask else None}
    inputs = {name: value for name, value in available.items() if name in inputs_of(method)}
    with ThreadPoolExecutor(max_workers=1) as pool:  # B-spline coefficients while the DVF is drawn
        # the zero method's warp is a copy: no coefficients (83 MB and a prefilter at 20.8 M voxels)
        coefficients = None if method == "zero" else pool.submit(bspline_coefficients, image)
        dvf = synthetic_dvf(method, g, exp, number, _rng(pair.image, pair.dsmooth, method), **inputs)
        field = dvf_to_image(dvf, g)  # one displacement image for every warp below
        dvf = sitk.GetArrayViewFromImage(field)  # read-only view: the 250 MB array is freed (peak RSS, issue 14)
        with step("warp image (cubic)"):
            deformed = warp(image, field, "bspline", default,
                            coefficients=coefficients.result() if coefficients else None)
    with step("warp masks (nearest)"):
        deformed_torso, deformed_lung = warp_masks(torso, lung, field)
    with step("Jacobian"):
        jac = jacobian_determinant(dvf, g)
    with step("intensity chain"):
        rngs = {k: _rng(pair.image, pair.dsmooth, k) for k in ("Sponge", "Noise", "Occluded")}
        final = intensity_chain(sitk.GetArrayViewFromImage(deformed), jac,
                                sitk.GetArrayViewFromImage(deformed_torso) > 0,
                                sitk.GetArrayViewFromImage(deformed_lung) > 0, exp, rngs)
    fixed = image_from_array(_like_base(final, image), g)
    return MadePair(pair, method, number, image, torso, lung, field, fixed, deformed_torso, deformed_lung, jac)


def generate_pair(pair: PairId, store: PairStore) -> dict:
    """Make one synthetic pair (skipped when its done.json exists). Returns its statistics."""
    if store.is_done(pair):
        return {**store.done_stats(pair), "skipped": True}
    t0 = time.perf_counter()
    made = make_pair(pair, store)
    g = Geometry.of(made.image)
    files = store.files(pair)
    out = store.pair_dir(pair)
    with step("write files"):
        # uncompressed, as RegNet: zlib costs ~3 s per 13M-voxel DVF, 20x the write itself
        write_dvf(made.field, files.dvf, compress=False)
        write_image(made.deformed_torso, files.fixed_torso, compress=False)
        write_image(made.deformed_lung, out / "DeformedLung.mha", compress=False)
        write_image(image_from_array(made.jac, g), out / "Jac.mha", compress=False)
        write_image(made.deformed, files.fixed, compress=False)
    fixed_torso = sitk.GetArrayViewFromImage(made.deformed_torso) > 0  # u and J live on the fixed grid
    stats = {
        "data": pair.image.data, "case": pair.image.cn, "type_im": pair.image.type_im,
        "dsmooth": pair.dsmooth, "stage": pair.image.stage, "method": made.method, "deform_number": made.number,
        **field_statistics(sitk.GetArrayViewFromImage(made.field), made.jac, fixed_torso),
        "deformed_image": files.fixed.name,
        "made_from": made_from(pair, store),  # checked on every re-run (regnet.resume)
    }
    write_json_atomic(files.done, stats)  # last: marks the pair complete
    return {**stats, "seconds": time.perf_counter() - t0, "skipped": False}


def _like_base(array: np.ndarray, base: sitk.Image) -> np.ndarray:
    """The deformed image in the base image's pixel type (Int16 rounded and clipped, or float)."""
    if base.GetPixelID() == sitk.sitkInt16:  # rounded in place: the chain's own float copy
        return round_array(array, np.int16)
    return array.astype(np.float32)


def _with_threads(function, threads: int | None, *args):
    """Run a task with SimpleITK limited to ``threads`` (cores / jobs), so parallel jobs do not
    oversubscribe the machine. Results do not depend on the thread count (tested)."""
    keep_freed_memory()  # in the worker: arrays reuse freed pages instead of faulting in new ones
    set_kernel_threads(threads)
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return function(*args)


# ---------------------------------------------------------------- failures of one case
class GenerateFailed(RegNetError):
    """Some cases failed; the others were finished. ``results`` holds the statistics of the pairs made."""

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message)
        self.results = results


def _attempt(function, threads, task, store: PairStore):
    """Run one task; a failure becomes ``{"failed": ...}`` naming the case and file, so the other
    cases finish. A full disk stops the job: every later write would fail the same way."""
    try:
        return _with_threads(function, threads, task, store)
    except Exception as err:  # noqa: BLE001 - reported per case at the end, the job goes on
        message = str(err).strip() or type(err).__name__
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in message:
            raise RegNetError(f"The disk holding {store.root} is full ({_task_name(task, store)}); finished pairs are "
                              "kept: free some space and re-run to resume.") from None
        if not isinstance(err, RegNetError):
            message = f"{type(err).__name__}: {message.splitlines()[-1]}"
        if "fallback" in message:  # regnet masks' option; generate has none: say what works here
            message = re.sub(r"\s*[^.;]*fallback[^.]*\.?", "", message).strip() + (
                " For generate, give the layout lung and torso mask templates (masks are then read, not "
                "computed), or for non-CT data set modality = \"MR\" in the layout (Otsu body mask, no lung).")
        return {"failed": True, "task": task, "what": _task_name(task, store), "error": message}


def _task_name(task, store: PairStore) -> str:
    """"DATA case CN type T (FILE)" and, for a pair, its dsmooth and method."""
    image = task.image if isinstance(task, PairId) else task
    try:
        layout = store.layout(image.data)
        source = (f"phantom seed {image.cn}" if layout.source == "phantom"
                  else str(layout.path("image", _case(image.cn, layout), image.type_im)))
        type_name = layout.type_name(image.type_im)
    except Exception:  # noqa: BLE001 - the name must not fail where the task did
        source, type_name = "image not found", image.type_im
    name = f"{image.data} case {image.cn} type {type_name}"
    if isinstance(task, PairId):
        method, number = store.method_of(task)
        name += f" dsmooth {task.dsmooth} ({method} D{number})"
    return f"{name} [{source}]"


def _failure_summary(failures: list[dict], skipped: int, made: int) -> str:
    lines = [f"{len(failures)} task(s) failed; {made} pair(s) are done"
             + (f", {skipped} pair(s) of failed originals were not attempted" if skipped else "")
             + ". Fix the cases below and re-run to resume:"]
    lines += [f"  {f['what']}: {f['error']}" for f in failures]
    return "\n".join(lines)


# ---------------------------------------------------------------- checks before any work
def _check_cases(images, store: PairStore) -> None:
    for image in images:
        layout = store.layout(image.data)
        if layout.source == "phantom":
            try:
                int(image.cn)
            except ValueError:
                raise RegNetError(f"{image.data}: case {image.cn!r} is not a number; phantom cases are seeds "
                                  "(integers), e.g. TrainingCNList = [1, 2].") from None
        layout.type_name(image.type_im)  # out of range: named here, not in a worker


#: Warn when the stage grid has this many times the voxels of the original (2x per axis).
UPSAMPLING_WARNING = 8.0


def upsampling_warnings(images, store: PairStore) -> list[str]:
    """One line per image whose stage grid has many more voxels than the image itself: a tiny image
    (or a wrong spacing in its header) silently made into millions of interpolated voxels."""
    import SimpleITK as sitk

    from regnet.io import isotropic_geometry

    messages = []
    for image in images:
        layout = store.layout(image.data)
        if layout.source == "phantom":
            continue
        case = _case(image.cn, layout)
        try:
            path = layout.path("image", case, image.type_im)
            spec = layout.raw_spec(case)
            if spec is not None:
                size, spacing = tuple(spec.size), tuple(float(s) for s in spec.spacing)
            elif path.is_dir():
                continue  # a DICOM series: no cheap header read
            else:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                size, spacing = reader.GetSize()[:3], reader.GetSpacing()[:3]
        except (RegNetError, RuntimeError):
            continue  # reported by the task itself, with its case
        grid = isotropic_geometry(Geometry(tuple(size), tuple(spacing), (0.0,) * 3), float(image.stage))
        before, after = int(np.prod(size, dtype=np.int64)), int(np.prod(grid.size, dtype=np.int64))
        if after > UPSAMPLING_WARNING * before:
            extent = " x ".join(f"{(n - 1) * s:g}" for n, s in zip(size, spacing))
            messages.append(f"{path}: {'x'.join(map(str, size))} voxels ({extent} mm) are up-sampled "
                            f"{after / before:.0f}-fold to {'x'.join(map(str, grid.size))} = {after / 1e6:.2f} M "
                            f"voxels of {image.stage} mm at stage {image.stage}; is the spacing in its header right?")
    return messages


def _prepare_root(store: PairStore) -> None:
    root = store.root
    if root.exists() and not root.is_dir():
        raise RegNetError(f"OutputFolder {root} is a file, not a folder; choose a folder (--out).")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".regnet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RegNetError(f"OutputFolder {root} cannot be written ({err.strerror or err}); choose a folder you can "
                          "write to (--out).") from None


def _dask_client(scheduler: str | None):
    try:
        from dask.distributed import Client  # optional dependency (regnet[dask])
    except ImportError:
        raise RegNetError("backend='dask' needs dask[distributed]: pip install 'regnet[dask]'.") from None
    if not scheduler:
        return Client(processes=False)
    try:
        return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise RegNetError(f"Cannot reach the Dask scheduler at {scheduler!r} within {DASK_CONNECT_TIMEOUT} "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); is it running, and "
                          "is the address tcp://HOST:PORT?") from None


DASK_CONNECT_TIMEOUT = "20s"


# ---------------------------------------------------------------- the job
def run(settings, jobs: int = 1, backend: str = "loky", scheduler: str | None = None,
        which=("Training", "Validation"), progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Generate everything the settings ask for; returns one statistics dict per pair.

    Finished pairs are skipped only when their ``done.json`` records the same parameters as
    these settings; otherwise the job stops naming the keys that differ, or with ``overwrite``
    makes those pairs again. A failing case does not stop the others: :class:`GenerateFailed`
    at the end names each failed case and file."""
    # lazy: joblib and tqdm cost ~0.2 s of every `regnet` command's start-up (the CLI imports this module)
    import joblib
    from tqdm.auto import tqdm

    settings = settings if isinstance(settings, Settings) else load_settings(settings)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise RegNetError(f"jobs must be a positive number of parallel workers, got {jobs!r}.")
    if backend not in ("loky", "dask"):
        raise RegNetError(f"Unknown backend {backend!r}; choose loky or dask.")
    store = PairStore(settings)
    root = store.root
    images, pairs = tasks(settings, which)
    for data in sorted({image.data for image in images}):
        store.layout(data)  # once per run, here: bad layouts fail before any work; tasks get them loaded
    _check_cases(images, store)
    stale = stale_pairs(pairs, store)
    if stale and not overwrite:
        raise RegNetError(describe_stale(stale, store, sum(store.is_done(p) for p in pairs)))
    _prepare_root(store)
    for message in upsampling_warnings(images, store):
        warnings.warn(message, stacklevel=2)
    forget(stale, store)
    remove_stale_temporaries(root)
    settings.write_json(root / "settings.json")  # only now: the settings passed every check
    client = _dask_client(scheduler) if backend == "dask" else None
    results, failures, skipped = [], [], 0
    try:
        # on Dask the cluster's workers set the parallelism; --jobs is for one machine
        with joblib.parallel_config(backend=backend, n_jobs=-1 if backend == "dask" else jobs):
            parallel = joblib.Parallel(return_as="generator_unordered")
            threads = max(1, (os.cpu_count() or 1) // max(1, jobs)) if backend != "dask" else None
            for outcome in tqdm(parallel(joblib.delayed(_attempt)(prepare_image, threads, i, store)
                                         for i in images),
                                total=len(images), desc="originals + masks", disable=not progress, unit="image"):
                if isinstance(outcome, dict) and outcome.get("failed"):
                    failures.append(outcome)
            failed_images = {f["task"] for f in failures}
            todo = [p for p in pairs if p.image not in failed_images]
            skipped = len(pairs) - len(todo)
            for stats in tqdm(parallel(joblib.delayed(_attempt)(generate_pair, threads, p, store) for p in todo),
                              total=len(todo), desc="synthetic pairs", disable=not progress, unit="pair"):
                (failures if stats.get("failed") else results).append(stats)
    finally:
        if client is not None:
            client.close()
    results = sorted(results, key=lambda s: (s["data"], s["case"], s["type_im"], s["dsmooth"]))
    if failures:
        failures.sort(key=lambda f: f["what"])
        raise GenerateFailed(_failure_summary(failures, skipped, len(results)), results)
    return results


def add_arguments(p) -> None:
    p.add_argument("settings", type=Path, help="settings file (.json or .toml) in RegNet's vocabulary")
    p.add_argument("--jobs", type=int, default=None, help="parallel workers (default: settings Jobs)")
    p.add_argument("--backend", choices=["loky", "dask"], default="loky")
    p.add_argument("--scheduler", default=None, help="dask scheduler address, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--out", type=Path, default=None, help="output root (default: settings OutputFolder)")
    p.add_argument("--only", choices=["Training", "Validation"], default=None)
    p.add_argument("--overwrite", action="store_true",
                   help="make again the finished pairs whose recorded parameters differ from these settings")


def generate_command(args) -> int:
    settings = load_settings(args.settings)
    if args.out is not None:
        settings = dataclasses.replace(settings, OutputFolder=str(args.out))
    which = (args.only,) if args.only else ("Training", "Validation")
    if args.jobs is not None and args.jobs < 1:
        raise RegNetError(f"--jobs must be a positive number of parallel workers, got {args.jobs}.")
    t0 = time.perf_counter()
    try:
        results = run(settings, jobs=args.jobs if args.jobs is not None else settings.Jobs, backend=args.backend,
                      scheduler=args.scheduler, which=which, overwrite=args.overwrite)
    except GenerateFailed as failed:
        _print_results(failed.results, settings, t0)
        raise
    _print_results(results, settings, t0)
    return 0


def _print_results(results: list[dict], settings: Settings, t0: float) -> None:
    made = [r for r in results if not r["skipped"]]
    print(f"{len(results)} pairs under {settings.OutputFolder} ({len(made)} made, "
          f"{len(results) - len(made)} already there) in {time.perf_counter() - t0:.1f} s")
    for r in results:
        print(f"  {r['data']} case {r['case']} type {r['type_im']} dsmooth {r['dsmooth']:>3} {r['method']:<19}"
              f" max|u| {r['max_magnitude_mm']:6.2f} mm  J [{r['jacobian_min']:.2f}, {r['jacobian_max']:.2f}]"
              f"  folded {100 * r['folded_fraction_in_torso']:.3f}%")
