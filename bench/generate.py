"""Benchmark: CPU seconds, wall seconds and peak memory of the generation job for one pair, per method.

    python bench/generate.py                                   # issue 14's grid: POPI 00, 1 mm, 328x256x248
    python bench/generate.py --image ct.mha --torso t.mha --lung l.mha --size 160 160 120
    python bench/generate.py --dsmooth 0 --profile 25          # cProfile of the child, top 25 functions
    python bench/generate.py --before /tmp/before               # also each pair with another checkout's code
    python bench/generate.py --repeat 3                         # medians of 3 rounds (yardstick + pairs)

The input image is resampled once (cubic, SimpleITK) onto a 1 mm grid of ``--size`` voxels at
``--origin`` (default: issue 14's 328x256x248 at (-167, -77, -164.5) mm; without ``--origin`` the grid
is centred on the image) and written, with its torso and lung masks (given, or from
:mod:`regnet.masks`), as a ``Folder`` data set. Each dsmooth then runs in a FRESH Python process
that calls ``regnet.generate.run`` for that one pair: imports, the once-per-image step
(``prepare_image``), the next image where the method needs one (cold: a fresh output folder), the
pair and its files. Its CPU time (user + sys, ``getrusage(RUSAGE_CHILDREN)``), wall time and peak resident memory are
reported, also in **yardsticks**: the CPU seconds of one single-threaded SimpleITK cubic B-spline
``Resample`` of the same image, timed in this run (issue 14's unit; linear and SciPy's
``map_coordinates(order=3)`` are printed beside it for reference). The machine's load average is
printed too: CPU seconds are the fair measure on a shared machine, wall seconds are not.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ct" / "popi_phase00_ct.nii.gz"
SIZE = (328, 256, 248)
ORIGIN = (-167.0, -77.0, -164.5)
#: issue 14's targets in yardsticks (a sixth of the original RegNet's CPU), per dsmooth of 3D_max7_D14_K
TARGETS = {0: ("respiratory", 34.4, 7.7, 1.3), 4: ("single frequency + next image", 51.8, 11.6, 1.9),
           9: ("mixed frequency + next image", 72.9, 16.4, 2.7), 13: ("zero + next image", 37.1, 8.3, 1.4)}

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
cpu0 = os.times()
import regnet.generate
from regnet.timing import recording
args = json.loads(sys.argv[1])
imports = time.perf_counter() - t0
def run():
    with recording() as steps:
        regnet.generate.run(args["settings"], jobs=1, progress=False)
    return dict(steps)
if args["profile"]:
    import cProfile, pstats, io
    os.cpu_count = lambda: 1  # one thread everywhere (the job sizes SimpleITK by it): profile time ~ CPU time
    prof = cProfile.Profile()
    steps = prof.runcall(run)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args["profile"])
    s2 = io.StringIO()
    pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(args["profile"])
    print(s.getvalue()[-12000:], s2.getvalue()[-8000:], file=sys.stderr)
else:
    steps = run()
print("RESULT " + json.dumps({"imports_s": imports, "steps": steps,
                             "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def prepare(image_path: Path, torso_path, lung_path, folder: Path, size, origin) -> sitk.Image:
    """The image on the 1 mm grid (cubic, Int16 rounded) and its masks, as a Folder data set."""
    from regnet.geometry import Geometry
    from regnet.io import read_image, resample_to_geometry, write_image
    from regnet.masks import compute_masks

    image = read_image(image_path)
    g = Geometry.of(image)
    if origin is None:  # centred on the image
        centre = g.index_to_physical((np.asarray(g.size) - 1) / 2.0)
        origin = centre - g.matrix @ ((np.asarray(size) - 1) / 2.0)
    target = Geometry(tuple(size), (1.0, 1.0, 1.0), tuple(float(o) for o in origin), g.direction)
    on_grid = resample_to_geometry(sitk.Cast(image, sitk.sitkFloat32), target, "bspline", -1024)
    on_grid = sitk.Cast(sitk.Round(on_grid), sitk.sitkInt16)
    if torso_path and lung_path:
        masks = {"torso": read_image(torso_path), "lung": read_image(lung_path)}
        masks = {k: resample_to_geometry(v, target, "nearest", 0) for k, v in masks.items()}
    else:
        masks = {k: v for k, v in compute_masks(on_grid).items() if k in ("torso", "lung")}
    (folder / "data" / "masks").mkdir(parents=True)
    write_image(on_grid, folder / "data" / "case.mha", compress=False)
    for name, mask in masks.items():
        write_image(sitk.Cast(mask > 0, sitk.sitkUInt8), folder / "data" / "masks" / f"case_{name}.mha")
    return on_grid


def yardsticks(image: sitk.Image) -> dict:
    """CPU seconds of one single-threaded resample of the image onto its own grid: cubic B-spline
    (the unit), linear, and SciPy's spline_filter + map_coordinates(order=3) for reference."""
    from scipy import ndimage

    out = {}
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        for name, kind in (("sitk_bspline", sitk.sitkBSpline), ("sitk_linear", sitk.sitkLinear)):
            c0 = time.process_time()
            sitk.Resample(image, image, sitk.Transform(), kind, -1024.0, sitk.sitkFloat32)
            out[name] = time.process_time() - c0
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    c0 = time.process_time()
    coords = np.indices(array.shape, dtype=np.float32)  # the identity, as the SimpleITK resample
    ndimage.map_coordinates(ndimage.spline_filter(array, 3, output=np.float32), coords, order=3,
                            prefilter=False, output=np.float32)
    out["scipy_cubic"] = time.process_time() - c0
    return out


def run_child(folder: Path, dsmooth: int, profile: int, repo: Path = REPO) -> dict:
    """One pair through ``regnet.generate.run`` (of the checkout ``repo``) in a fresh process: CPU
    (user+sys), wall, peak RSS."""
    settings = {"DataExpDict": [{"data": "Folder", "deform_exp": "3D_max7_D14_K", "TrainingCNList": ["case"],
                                 "TrainingDSmoothList": [dsmooth], "ValidationCNList": []}],
                "DataFolder": str(folder / "data"), "OutputFolder": str(folder / f"out{dsmooth}"), "stage": 1}
    shutil.rmtree(folder / f"out{dsmooth}", ignore_errors=True)  # cold: nothing made before
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(repo))
    if profile:
        env["NUMBA_NUM_THREADS"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({"settings": settings, "profile": profile})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(repo), text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and anything it waited for
    if proc.returncode:
        raise SystemExit(f"dsmooth {dsmooth}: the job failed:\n{stderr[-4000:]}")
    result = json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")))
    if profile:
        print(stderr)
    return {**result, "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime}


def _cpu(run: dict) -> float:
    return run["user_s"] + run["sys_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=SHARED)
    parser.add_argument("--torso", type=Path, default=None, help="torso mask (default: regnet.masks)")
    parser.add_argument("--lung", type=Path, default=None, help="lung mask (default: regnet.masks)")
    parser.add_argument("--size", type=int, nargs=3, default=SIZE, help="grid size x y z at 1 mm")
    parser.add_argument("--origin", type=float, nargs=3, default=None,
                        help=f"grid origin (mm); default {ORIGIN} with the default size, else centred")
    parser.add_argument("--dsmooth", type=int, nargs="*", default=[0, 4, 9, 13],
                        help="3D_max7_D14_K dsmooth numbers (0 respiratory, 4 SF, 9 MF, 13 zero)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the prepared grid here and reuse it on the next run (default: a temporary folder)")
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout (e.g. `git worktree add /tmp/before main`): each pair is also made "
                             "with its code, right before this one's, for a same-session before/after")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (yardstick, every pair); the tables give medians (run-to-run noise ~20%%)")
    parser.add_argument("--profile", type=int, default=0,
                        help="cProfile the child on one thread (times ~ CPU s): print the top N functions")
    args = parser.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: pass --image with a chest CT in HU")
    origin = args.origin if args.origin is not None else (ORIGIN if tuple(args.size) == SIZE else None)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        if (folder / "data" / "case.mha").exists():
            image = sitk.ReadImage(str(folder / "data" / "case.mha"))
        else:
            image = prepare(args.image, args.torso, args.lung, folder, args.size, origin)
        voxels = int(np.prod(image.GetSize()))
        print(f"{args.image.name} -> 1 mm grid {image.GetSize()} ({voxels / 1e6:.1f} M voxels) at origin "
              f"{tuple(round(o, 2) for o in image.GetOrigin())}, with masks, in {time.perf_counter() - t0:.1f} s")
        units, runs, befores = [], {d: [] for d in args.dsmooth}, {d: [] for d in args.dsmooth}
        for k in range(args.repeat):  # rounds: the yardstick, then every pair (before, after): drift hits all alike
            ys = yardsticks(image)
            units.append(ys["sitk_bspline"])
            print(f"\nround {k + 1}/{args.repeat}: yardstick, single-threaded SimpleITK cubic B-spline Resample "
                  f"{units[-1]:.2f} CPU s (linear {ys['sitk_linear']:.2f} s; SciPy spline_filter + "
                  f"map_coordinates(order=3) {ys['scipy_cubic']:.2f} s)")
            for d in args.dsmooth:
                if args.before is not None:
                    b = run_child(folder, d, 0, args.before.resolve())
                    befores[d].append(b)
                    print(f"dsmooth {d:>2} BEFORE ({args.before}): {_cpu(b):6.1f} CPU s (user {b['user_s']:.1f} + "
                          f"sys {b['sys_s']:.1f}) = {_cpu(b) / units[-1]:4.2f} yardsticks, wall {b['wall_s']:.1f} s, "
                          f"peak RSS {b['peak_rss_gib']:.2f} GiB")
                r = run_child(folder, d, args.profile)
                runs[d].append(r)
                name = TARGETS.get(d, (f"dsmooth {d}",))[0]
                print(f"dsmooth {d:>2} {name}: {_cpu(r):6.1f} CPU s (user {r['user_s']:.1f} + sys {r['sys_s']:.1f}) = "
                      f"{_cpu(r) / units[-1]:4.2f} yardsticks, wall {r['wall_s']:.1f} s, peak RSS "
                      f"{r['peak_rss_gib']:.2f} GiB, imports {r['imports_s']:.1f} s wall")
                for step, seconds in sorted(r["steps"].items(), key=lambda kv: -kv[1]):
                    print(f"    {step:<28} {seconds:6.2f} s wall")
        unit = float(np.median(units))
        if args.repeat > 1:
            print(f"\nmedians of {args.repeat} rounds; yardstick {unit:.2f} CPU s "
                  f"(range {min(units):.2f}-{max(units):.2f})")
        rows, before = [], {}
        for d in args.dsmooth:
            cpu = float(np.median([_cpu(r) for r in runs[d]]))
            wall = float(np.median([r["wall_s"] for r in runs[d]]))
            peak = max(r["peak_rss_gib"] for r in runs[d])
            name, orig, orig_y, target = TARGETS.get(d, (f"dsmooth {d}", float("nan"), float("nan"), float("nan")))
            rows.append((d, name, orig, orig_y, cpu, cpu / unit, target, wall, peak))
            if befores[d]:
                before[d] = (float(np.median([_cpu(b) for b in befores[d]])),
                             max(b["peak_rss_gib"] for b in befores[d]))
        print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("\n| dsmooth | method | original RegNet CPU s (yardsticks) | this project CPU s | yardsticks "
              "| target | wall s | peak RSS GiB |\n|---|---|---|---|---|---|---|---|")
        for d, name, orig, orig_y, cpu, ys_, target, wall, peak in rows:
            verdict = "ok" if ys_ <= target and peak <= 2.0 else "OVER"
            print(f"| {d} | {name} | {orig} ({orig_y}) | {cpu:.1f} | {ys_:.2f} | <= {target} {verdict} "
                  f"| {wall:.1f} | {peak:.2f} |")
        if before:
            print("\n| dsmooth | method | before CPU s (yardsticks, peak GiB) | after CPU s (yardsticks, peak GiB) "
                  "| speed-up |\n|---|---|---|---|---|")
            for d, name, _, _, cpu, ys_, _, _, peak in rows:
                b_cpu, b_peak = before[d]
                print(f"| {d} | {name} | {b_cpu:.1f} ({b_cpu / unit:.2f}, {b_peak:.2f}) | {cpu:.1f} ({ys_:.2f}, "
                      f"{peak:.2f}) | {b_cpu / cpu:.1f}x |")


if __name__ == "__main__":
    main()
