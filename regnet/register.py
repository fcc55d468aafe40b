"""Register a new pair: affine pre-alignment, then RegNet stage by stage, one DVF out.

The pipeline (``regnet register FIXED MOVING --model M ...``):

1. read both images (any geometry) and their body masks (given, or :mod:`regnet.masks`);
2. affine pre-alignment ``A`` (:mod:`regnet.affine`; none, rigid or affine);
3. for each stage s (coarse to fine, e.g. 4, 2, 1): the fixed image on its s-mm isotropic grid
   with the generator's own down-sampling (:func:`regnet.io.resample_isotropic`, anti-aliased);
   the moving image anti-aliased the same way and warped by everything found so far,
   ``M(A(x + u(x)))``; both set to the model's ``pad_value`` outside their body masks, as in
   training; the model predicts a residual ``v`` over the whole volume (:mod:`regnet.tiling`);
   the fields are composed exactly, ``u <- v(x) + u(x + v(x))`` (the residual is applied first
   in the pull convention), and up-sampled on the physical grid for the next stage;
4. the affine is folded in on FIXED's own grid: ``dvf(x) = A(x + u(x)) - x``, so one
   ``DisplacementFieldTransform`` of ``dvf.mha`` does everything.

What the original did differently, on purpose (spec section 5): elastix for the affine step;
stage fields added instead of composed; patches overwritten instead of blended; a second,
different down-sampler at inference; direction cosines lost.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import types
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError, __version__
from regnet.geometry import Geometry
from regnet.timing import Clock

CLI_HELP = "register MOVING to FIXED: affine pre-alignment + multi-stage RegNet -> dvf.mha, warped_moving.mha"
REGISTER_SERIES_CLI_HELP = ("register every image of a series (or volume of a 4D file) to one reference, "
                            "models loaded once")
AFFINE_KINDS = ("none", "rigid", "affine")
STAGES = (1, 2, 4)
OUTPUT_FILES = ("dvf.mha", "warped_moving.mha", "affine.tfm", "overlay.png", "registration.json")


# ---------------------------------------------------------------- the model interface
@runtime_checkable
class StageModel(Protocol):
    """What :func:`register` needs from a trained network of one stage.

    * ``stage``: 1, 2 or 4 -- the network works on an isotropic grid of ``stage`` mm;
    * ``radius_in`` R, ``radius_out`` Ry: an input of side ``n + 2(R - Ry)`` gives an output of
      side ``n`` for ``n = size_base + k * unit`` (``size_base`` optional, default ``2 Ry + 1``);
      a full-image network has R == Ry (e.g. unet1: ``unit = size_base = 8``);
    * ``unit``: the resize unit (4 for crop4/decimation4, 8 for unet1);
    * ``pad_value``: the background the network saw in training (-2048);
    * ``predict(x)``: ``x`` float32 ``(B, Z, Y, X, 2)`` channels [moving, fixed] in HU (the model
      applies its own intensity handling) -> ``(B, z, y, x, 3)`` DVF in mm with components along the
      grid's index axes (x, y, z), as the patch reader trains them (``D^T u``; the physical
      components for an identity direction). :func:`register` turns them physical.

    Optional: ``bytes_per_voxel`` (memory per input voxel, for automatic tile sizes), ``name``.
    """

    stage: int
    radius_in: int
    radius_out: int
    unit: int
    pad_value: float

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class FunctionStageModel:
    """A :class:`StageModel` made of a plain function (stand-ins, adapters of other frameworks)."""

    stage: int
    radius_in: int
    radius_out: int
    function: Callable[[np.ndarray], np.ndarray]
    unit: int = 4
    pad_value: float = -2048.0
    size_base: int | None = None
    bytes_per_voxel: float | None = None
    name: str = "function"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.function(x)


def check_model(model, where: str = "model") -> None:
    """Raise a clear error when ``model`` does not follow :class:`StageModel`."""
    missing = [a for a in ("stage", "radius_in", "radius_out", "predict") if not hasattr(model, a)]
    if missing:
        raise RegNetError(f"{where} lacks {', '.join(missing)}: a stage model needs stage, radius_in, radius_out, "
                          "unit, pad_value and predict(x) (see regnet.register.StageModel).")
    if model.stage not in STAGES:
        raise RegNetError(f"{where} is for stage {model.stage!r}; RegNet stages are {STAGES}.")
    if not 0 <= model.radius_out <= model.radius_in:
        raise RegNetError(f"{where}: radius_in={model.radius_in}, radius_out={model.radius_out}; "
                          "need radius_in >= radius_out >= 0.")


@dataclass
class KerasStageModel:
    """A :class:`StageModel` around a RegNet Keras network (``regnet.networks``), dynamic input size.

    The sizes come from the network's own spec: margin ``R - Ry``, resize unit, and the smallest
    output its smallest valid input gives (``size_base``)."""

    network: object
    stage: int
    radius_in: int
    radius_out: int
    unit: int
    size_base: int
    pad_value: float = -2048.0
    name: str = "keras"
    path: str | None = None
    bytes_per_voxel: float | None = None

    @classmethod
    def from_network(cls, network, stage: int, path=None, pad_value: float = -2048.0) -> KerasStageModel:
        from regnet.networks import resize

        spec = network.network_spec
        if network.input_size is not None:  # a fixed-size model: the same weights with any valid size
            network = resize(network, None)
        margin = spec.R - spec.Ry
        # forward-pass memory per input voxel, measured for crop4 on TensorFlow CPU: ~400 B at width 1
        per_voxel = 512.0 * float(network.network_options.width) + 64.0
        return cls(network, int(stage), spec.R, spec.Ry, spec.resize_unit, spec.min_input - 2 * margin,
                   float(pad_value), spec.name, None if path is None else str(path), per_voxel)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.network.predict_on_batch(x), dtype=np.float32)


def load_stage_model(path) -> StageModel:
    """A trained ``.keras`` model with its ``settings.json`` beside it (written by ``regnet train``):
    the network from the file, its stage (and background value) from the settings."""
    from regnet.files import full_suffix

    path = Path(path)
    if not path.is_file():
        raise RegNetError(f"{path}: no such model file. Give the .keras file written by `regnet train` "
                          "(with its settings.json beside it), or --model none for the affine step alone.")
    if full_suffix(path).lower() != ".keras":
        raise RegNetError(f"{path}: a model must be a .keras file (Keras 3 native format).")
    settings_path = path.parent / "settings.json"
    if not settings_path.is_file():
        raise RegNetError(f"{path}: no settings.json beside the model; it says the stage and patch radii. "
                          "Keep the folder `regnet train` wrote together.")
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RegNetError(f"{settings_path}: not readable as JSON ({err}).") from None
    stage = settings.get("stage") if isinstance(settings, dict) else None
    if stage not in STAGES:
        raise RegNetError(f"{settings_path}: 'stage' is {stage!r}; expected one of {STAGES}.")
    try:
        from regnet.networks import load
    except ImportError as err:
        raise RegNetError(f"Loading {path.name} needs regnet.networks, which is missing here ({err}).") from None
    model = KerasStageModel.from_network(load(path), stage, path, settings.get("DefaultPixelValue", -2048.0))
    check_model(model, str(path))
    return model


def _load_models(models) -> list:
    if models is None or (isinstance(models, str) and models.lower() == "none"):
        return []
    if not isinstance(models, (list, tuple)):
        models = [models]
    if any(isinstance(m, str) and m.lower() == "none" for m in models):
        if len(models) > 1:
            raise RegNetError("--model none means the affine step alone; do not combine it with model files.")
        return []
    loaded = []
    for i, m in enumerate(models):
        m = load_stage_model(m) if isinstance(m, (str, Path)) else m
        name = getattr(m, "name", None)
        check_model(m, f"model {i + 1}" + (f" ({name})" if name else ""))
        loaded.append(m)
    return loaded


def select_stages(models: list, stages=None) -> list:
    """The models to run, coarse to fine; ``stages`` picks some of them by stage."""
    by_stage = {}
    for m in models:
        if m.stage in by_stage:
            raise RegNetError(f"Two models are for stage {m.stage}; give one model per stage.")
        by_stage[m.stage] = m
    if stages is None:
        return [by_stage[s] for s in sorted(by_stage, reverse=True)]
    stages = [int(s) for s in stages]
    if len(set(stages)) != len(stages) or stages != sorted(stages, reverse=True):
        raise RegNetError(f"--stages {' '.join(map(str, stages))}: list each stage once, coarse to fine (e.g. 4 2 1).")
    for s in stages:
        if s not in by_stage:
            have = ", ".join(str(k) for k in sorted(by_stage, reverse=True)) or "none"
            raise RegNetError(f"--stages asks for stage {s}, but no model is for stage {s} (the models are for "
                              f"stages {have}); give a stage-{s} model or drop it from --stages.")
    return [by_stage[s] for s in stages]


# ---------------------------------------------------------------- inputs
def _as_image(image, name: str) -> sitk.Image:
    from regnet.io import check_image, read_image

    if isinstance(image, sitk.Image):
        check_image(image, f"The {name} image")
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    raise RegNetError(f"The {name} image must be a SimpleITK image or a path, got {type(image).__name__}.")


def _as_mask(mask, image: sitk.Image, name: str) -> sitk.Image | None:
    """A 0/1 UInt8 mask on ``image``'s grid (nearest-neighbour in physical space if on another grid)."""
    from regnet.io import read_image

    if mask is None:
        return None
    if not isinstance(mask, sitk.Image):
        mask = read_image(mask)
    elif mask.GetDimension() != 3:
        raise RegNetError(f"The {name} mask is {mask.GetDimension()}D; it must be a 3D mask like the image.")
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if not Geometry.of(mask).close_to(Geometry.of(image)):
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise RegNetError(f"The {name} mask is empty (on the {name} image's grid); give a body mask that "
                          "overlaps the image, or leave it out to compute one.")
    return mask


def _body_mask(image: sitk.Image, name: str) -> tuple[sitk.Image, str]:
    from regnet.masks import compute_masks

    masks = compute_masks(image, fallback="otsu")
    if not sitk.GetArrayViewFromImage(masks["torso"]).any():
        raise RegNetError(f"No body found in the {name} image; give a mask with --{name}-mask.")
    return masks["torso"], masks["method"]


# ---------------------------------------------------------------- field maths on grids
def _resample_field(u: sitk.Image, geometry: Geometry) -> sitk.Image:
    """A vector field on another grid: linear in physical space, nearest value beyond its edge
    (an isotropic grid ends up to one voxel inside the original extent)."""
    if Geometry.of(u).close_to(geometry, tol=1e-6):
        return u
    f = sitk.ResampleImageFilter()
    f.SetSize(list(geometry.size))
    f.SetOutputOrigin(geometry.origin)
    f.SetOutputSpacing(geometry.spacing)
    f.SetOutputDirection(geometry.direction)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)
    f.SetOutputPixelType(sitk.sitkVectorFloat32)
    return f.Execute(u)


def compose_fields(u: sitk.Image, v: sitk.Image) -> sitk.Image:
    """``w(x) = v(x) + u(x + v(x))`` on v's grid: first v, then u (pull convention).

    The same maths as :func:`regnet.deform.field.compose`, but ``u`` is extended by its nearest
    value beyond its grid instead of by zero, so border voxels keep their displacement.
    """
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(v)
    f.SetTransform(sitk.DisplacementFieldTransform(sitk.Cast(v, sitk.sitkVectorFloat64)))
    f.SetInterpolator(sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)
    f.SetOutputPixelType(sitk.sitkVectorFloat32)
    u_at = f.Execute(u)
    w = sitk.GetArrayFromImage(u_at)
    w += sitk.GetArrayViewFromImage(v)
    out = sitk.GetImageFromArray(w, isVector=True)
    out.CopyInformation(v)
    return out


def fold_affine(u: sitk.Image | None, affine: sitk.Transform | None, geometry: Geometry,
                chunk_voxels: int = 1 << 22) -> np.ndarray:
    """``dvf(x) = A(x + u(x)) - x`` on ``geometry`` as a (z, y, x, 3) float32 array.

    ``u`` must already be on ``geometry``; either may be None. Computed in float64 slabs along z
    so a 512x512x300 grid needs no full-size float64 copy.
    """
    shape = geometry.shape
    if affine is None:
        if u is None:
            return np.zeros(shape + (3,), np.float32)
        return sitk.GetArrayFromImage(u).astype(np.float32, copy=False)
    from regnet.affine import as_matrix

    centre = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2.0)
    m, b = as_matrix(affine, centre)
    step = geometry.matrix * np.asarray(geometry.spacing)[None, :]        # column k: mm per index k
    mi = m - np.eye(3)
    origin_term = mi @ np.asarray(geometry.origin) + b
    d_x, d_y, d_z = (mi @ step[:, k] for k in range(3))
    u_arr = None if u is None else sitk.GetArrayViewFromImage(u)
    out = np.empty(shape + (3,), np.float32)
    nz, ny, nx = shape
    rows = max(1, chunk_voxels // (ny * nx))
    xy = origin_term + np.arange(ny)[:, None, None] * d_y + np.arange(nx)[None, :, None] * d_x  # (ny, nx, 3)
    for z0 in range(0, nz, rows):
        z1 = min(nz, z0 + rows)
        slab = xy[None] + np.arange(z0, z1)[:, None, None, None] * d_z
        if u_arr is not None:
            slab += u_arr[z0:z1].astype(np.float64) @ m.T
        out[z0:z1] = slab
    return out


# ---------------------------------------------------------------- the result
@dataclass
class Result:
    """What a registration produced; :meth:`write` puts it in a folder, atomically."""

    dvf: sitk.Image
    warped: sitk.Image
    affine: sitk.Transform | None
    fixed: sitk.Image
    moving: sitk.Image
    seconds: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def write(self, out, overlay: bool = True) -> Path:
        """dvf.mha, warped_moving.mha, affine.tfm, overlay.png, then registration.json, into ``out``.

        Everything is written into a hidden folder beside ``out`` first; a failure leaves ``out``
        as it was. Into an existing folder the files are moved one by one (atomic renames) with
        registration.json last, so its presence means a complete, matching set.
        """
        from regnet.affine import write_transform
        from regnet.files import write_json_atomic
        from regnet.io import write_dvf, write_image

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise RegNetError(f"--out {out} is a file; give a folder.")
        t0 = time.perf_counter()
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_dvf(self.dvf, tmp / "dvf.mha")
            write_image(self.warped, tmp / "warped_moving.mha")
            if self.affine is not None:
                write_transform(self.affine, tmp / "affine.tfm")
            if overlay:
                overlay_png(self.fixed, self.moving, self.warped, tmp / "overlay.png")
            self.seconds["write"] = round(time.perf_counter() - t0, 3)
            record = {**self.info, "seconds": self.seconds,
                      "outputs": sorted(p.name for p in tmp.iterdir()) + ["registration.json"]}
            write_json_atomic(tmp / "registration.json", record)
            if not out.exists():
                os.replace(tmp, out)
            else:
                (out / "registration.json").unlink(missing_ok=True)  # the old set is incomplete from here on
                for name in OUTPUT_FILES:
                    if name != "registration.json" and not (tmp / name).exists():
                        (out / name).unlink(missing_ok=True)  # e.g. an old affine.tfm of another run
                for name in OUTPUT_FILES:
                    if (tmp / name).exists():
                        os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def overlay_png(fixed: sitk.Image, moving: sitk.Image, warped: sitk.Image, path) -> Path:
    """Fixed, moving (before registration, on the fixed grid) and warped moving, in three
    orthogonal views through the fixed image's centre (like dipy's ``overlay_slices``)."""
    from regnet.figures import orthogonal_views, pyplot, save_png

    plt = pyplot()

    before = sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, float(_background(moving)),
                           sitk.sitkFloat32)
    rows = [("fixed", fixed), ("moving", before), ("warped moving", warped)]
    values = sitk.GetArrayViewFromImage(fixed)
    lo, hi = (-1000.0, 400.0) if float(values.min()) < -500 else tuple(np.percentile(values, [1, 99]))
    fig, axes = plt.subplots(3, 3, figsize=(12, 12))
    for r, (name, image) in enumerate(rows):
        for c, (view, cut, aspect, origin) in enumerate(orthogonal_views(sitk.Cast(image, sitk.sitkFloat32))):
            ax = axes[r, c]
            ax.imshow(cut, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin, interpolation="nearest")
            ax.set_title(f"{name}: {view}", fontsize=10)
            ax.set_axis_off()
    fig.tight_layout()
    return save_png(fig, path, dpi=80)


def _background(image: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(image).min())


# ---------------------------------------------------------------- the pipeline
def _resolve_affine(affine) -> tuple[str, sitk.Transform | None]:
    if affine is None:
        return "none", None
    if isinstance(affine, sitk.Transform):
        return "given", affine
    if isinstance(affine, str) and affine in AFFINE_KINDS:
        return affine, None
    if isinstance(affine, (str, Path)) and Path(affine).suffix.lower() in (".tfm", ".txt", ".h5"):
        from regnet.affine import read_transform

        return "given", read_transform(affine)
    raise RegNetError(f"--affine {affine!r}: choose one of {', '.join(AFFINE_KINDS)}, or give a transform file (.tfm).")


def register(fixed, moving, models=None, fixed_mask=None, moving_mask=None, affine="affine", stages=None,
             max_patch: int | None = None, progress: bool = True, blend: str = "cosine") -> Result:
    """Register ``moving`` to ``fixed`` (SimpleITK images or paths).

    ``models``: stage models (:class:`StageModel`) or ``.keras`` paths, any order; None or
    ``"none"`` for the affine step alone. ``affine``: ``"none"``, ``"rigid"``, ``"affine"``, an
    ``sitk.Transform`` or a transform file (fixed -> moving points). ``stages``: which of the
    models' stages to run (default all, coarse to fine). ``max_patch``: largest network input side
    in voxels (default: from the memory available). Masks: body (torso) masks on any grid;
    computed with :mod:`regnet.masks` when needed and not given.
    """
    from regnet.affine import affine_register
    from regnet.deform.field import from_grid_axes, warp
    from regnet.io import (
        dvf_to_image,
        isotropic_geometry,
        resample_to_geometry,
        smooth_for_downsampling,
    )
    from regnet.tiling import tiled_predict

    clock = Clock()
    with clock("read"):
        fixed_image, moving_image = _as_image(fixed, "fixed"), _as_image(moving, "moving")
        fixed_mask = _as_mask(fixed_mask, fixed_image, "fixed")
        moving_mask = _as_mask(moving_mask, moving_image, "moving")
    affine_kind, transform = _resolve_affine(affine)
    models = select_stages(_load_models(models), stages)
    mask_methods = {"fixed": "given" if fixed_mask is not None else None,
                    "moving": "given" if moving_mask is not None else None}
    if affine_kind in ("rigid", "affine") or models:
        with clock("masks"):
            if fixed_mask is None:
                fixed_mask, mask_methods["fixed"] = _body_mask(fixed_image, "fixed")
            if moving_mask is None:
                moving_mask, mask_methods["moving"] = _body_mask(moving_image, "moving")
    if affine_kind in ("rigid", "affine"):
        with clock("affine"):
            transform = affine_register(fixed_image, moving_image, fixed_mask, moving_mask, affine_kind)

    fixed_geometry = Geometry.of(fixed_image)
    u = None          # the deformable field so far, on the last stage's grid
    stage_info = []
    for model in models:
        s = model.stage
        pad = float(getattr(model, "pad_value", -2048.0))
        name = f"stage{s}"
        with clock(f"{name}.resample"):
            grid = isotropic_geometry(fixed_geometry, float(s))
            fixed_s = resample_to_geometry(fixed_image, grid, "bspline", pad)
            fixed_mask_s = resample_to_geometry(fixed_mask, grid, "nearest")
            u_s = None if u is None else _resample_field(u, grid)
            so_far = None if (u_s is None and transform is None) else fold_affine(u_s, transform, grid)
            moving_smooth = smooth_for_downsampling(moving_image, grid.spacing)
            if so_far is None:
                moving_s = resample_to_geometry(moving_smooth, grid, "bspline", pad, antialias=False)
                moving_mask_s = resample_to_geometry(moving_mask, grid, "nearest")
            else:
                moving_s = warp(moving_smooth, so_far, "bspline", pad, reference=grid)
                moving_mask_s = warp(moving_mask, so_far, "nearest", 0, reference=grid)
            f_arr = sitk.GetArrayFromImage(fixed_s).astype(np.float32)
            m_arr = sitk.GetArrayFromImage(moving_s).astype(np.float32)
            f_arr[sitk.GetArrayViewFromImage(fixed_mask_s) == 0] = pad
            m_arr[sitk.GetArrayViewFromImage(moving_mask_s) == 0] = pad
            del so_far, moving_smooth
        with clock(f"{name}.predict"):
            v, plan = tiled_predict(m_arr, f_arr, model, max_patch=max_patch, blend=blend, progress=progress)
            v = from_grid_axes(v, grid)  # the network's index-axis components -> physical (x, y, z)
        with clock(f"{name}.compose"):
            v_image = dvf_to_image(v, grid)
            u = v_image if u_s is None else compose_fields(u_s, v_image)
        stage_info.append({"stage": s, "grid_size": list(grid.size), "spacing_mm": float(s), **plan.describe(),
                           "max_residual_mm": float(np.sqrt((v.astype(np.float64) ** 2).sum(-1)).max())})

    with clock("compose"):
        u_fixed = None if u is None else _resample_field(u, fixed_geometry)
        dvf = dvf_to_image(fold_affine(u_fixed, transform, fixed_geometry), fixed_geometry)
        del u_fixed
    with clock("warp"):
        background = _background(moving_image)
        warped = warp(moving_image, dvf, "bspline", background)

    seconds = {}  # pipeline order; one total per stage before its parts; totals are the keys without a dot
    for key, value in clock.seconds.items():
        stage = key.split(".")[0]
        if "." in key and stage not in seconds:
            seconds[stage] = round(sum(v for k, v in clock.seconds.items() if k.startswith(stage + ".")), 3)
        seconds[key] = value
    info = {
        "regnet_version": __version__,
        "fixed": _describe_input(fixed, fixed_image),
        "moving": _describe_input(moving, moving_image),
        "settings": {"affine": affine_kind, "stages": [m.stage for m in models], "max_patch": max_patch,
                     "blend": blend, "masks": mask_methods, "warped_background": background},
        "models": [_describe_model(m) for m in models],
        "stages": stage_info,
        "versions": _versions(),
    }
    return Result(dvf, warped, transform, fixed_image, moving_image, seconds, info)


def _describe_input(given, image: sitk.Image) -> dict:
    g = Geometry.of(image)
    return {"path": str(given) if isinstance(given, (str, Path)) else None, "size": list(g.size),
            "spacing": list(g.spacing), "origin": list(g.origin), "direction": list(g.direction),
            "pixel_type": image.GetPixelIDTypeAsString()}


def _describe_model(model) -> dict:
    return {"name": getattr(model, "name", type(model).__name__), "path": getattr(model, "path", None) and
            str(model.path), "stage": model.stage, "radius_in": model.radius_in, "radius_out": model.radius_out,
            "unit": getattr(model, "unit", 1), "pad_value": getattr(model, "pad_value", -2048.0)}


def _versions() -> dict:
    import scipy

    versions = {"regnet": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "scipy": scipy.__version__, "SimpleITK": sitk.Version_VersionString()}
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        versions["keras"] = getattr(keras, "__version__", "?")
        with suppress(Exception):  # a version report must not fail a registration
            versions["keras_backend"] = keras.backend.backend()
    return versions


# ---------------------------------------------------------------- series
def _series_images(images: list, volume_count: Callable[[Path], int]) -> list[tuple[str, object]]:
    """(name, image or path) for each image; one 4D file gives one entry per volume."""
    from regnet.files import full_suffix
    from regnet.io import read_image

    paths = [Path(p) for p in images]
    if len(paths) == 1:
        n = volume_count(paths[0])
        if n < 2:
            raise RegNetError(f"{paths[0]}: a series needs several images, or one 4D file with several volumes.")
        return [(f"volume{k:02d}", read_image(paths[0], volume=k)) for k in range(n)]
    names = []
    for p in paths:
        stem = p.name[: len(p.name) - len(full_suffix(p))] if full_suffix(p) else p.name
        names.append(stem)
    if len(set(names)) != len(names):
        names = [f"{k:02d}_{n}" for k, n in enumerate(names)]
    return list(zip(names, paths))


def _volume_count(path: Path) -> int:
    if not path.is_file():
        return 1
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 1
    return reader.GetSize()[3] if reader.GetDimension() == 4 else 1


def register_series(images: list, reference: int, models, out, progress: bool = True, **options) -> list[Path]:
    """Register every image (or every volume of one 4D file) to image ``reference``; the models are
    loaded once and the reference's mask computed once. Output: ``out/<name>/`` per moving image."""
    entries = _series_images(images, _volume_count)
    if not 0 <= reference < len(entries):
        raise RegNetError(f"--reference {reference} is out of range 0..{len(entries) - 1} "
                          f"({len(entries)} images in the series).")
    models = _load_models(models)
    ref_name, ref = entries[reference]
    fixed = _as_image(ref, "reference")
    fixed_mask = options.pop("fixed_mask", None)
    if fixed_mask is None and (models or options.get("affine", "affine") in ("rigid", "affine")):
        fixed_mask = _body_mask(fixed, "fixed")[0]
    written = []
    for k, (name, image) in enumerate(entries):
        if k == reference:
            continue
        result = register(fixed, image, models, fixed_mask=fixed_mask, progress=progress, **options)
        result.info["series"] = {"reference": ref_name, "moving": name}
        written.append(result.write(Path(out) / name))
        if progress:
            print(f"{name} -> {ref_name}: {sum(v for k_, v in result.seconds.items() if '.' not in k_):.1f} s, "
                  f"{written[-1]}", file=sys.stderr)
    return written


# ---------------------------------------------------------------- command line
def _common_arguments(p) -> None:
    p.add_argument("--model", nargs="+", required=True, metavar="M",
                   help=".keras model(s), one per stage (settings.json beside each); 'none' = affine only")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--affine", default="affine", metavar="{none,rigid,affine}|FILE.tfm",
                   help="affine pre-alignment (default affine), or a transform file fixed -> moving")
    p.add_argument("--stages", type=int, nargs="+", default=None, metavar="S",
                   help="stages to run, coarse to fine (default: every model's stage), e.g. 4 2 1")
    p.add_argument("--max-patch", type=int, default=None, metavar="N",
                   help="largest network input side in voxels (default: from the memory available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(p) -> None:
    p.add_argument("fixed", type=Path, help="fixed image (the DVF lives on its grid)")
    p.add_argument("moving", type=Path, help="moving image")
    _common_arguments(p)
    p.add_argument("--fixed-mask", type=Path, default=None, help="body mask of the fixed image (default: computed)")
    p.add_argument("--moving-mask", type=Path, default=None, help="body mask of the moving image (default: computed)")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.png")


def register_series_add_arguments(p) -> None:
    p.add_argument("images", type=Path, nargs="+", help="images of the series, or one 4D file")
    p.add_argument("--reference", type=int, required=True, metavar="K", help="index of the fixed image (from 0)")
    _common_arguments(p)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RegNetError(f"--out {out} is a file; give a folder.")


def register_command(args) -> int:
    _check_out(args.out)
    models = _load_models(args.model)
    result = register(args.fixed, args.moving, models, args.fixed_mask, args.moving_mask, args.affine, args.stages,
                      args.max_patch, progress=not args.quiet)
    out = result.write(args.out, overlay=not args.no_overlay)
    total = sum(v for k, v in result.seconds.items() if "." not in k)
    steps = ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items() if "." not in k)
    print(f"{out}: dvf.mha, warped_moving.mha ({total:.1f} s: {steps})")
    return 0


def register_series_command(args) -> int:
    _check_out(args.out)
    written = register_series(args.images, args.reference, args.model, args.out, progress=not args.quiet,
                              affine=args.affine, stages=args.stages, max_patch=args.max_patch)
    print(f"{len(written)} registrations under {args.out}")
    return 0


__all__ = [
    "FunctionStageModel",
    "Result",
    "StageModel",
    "check_model",
    "compose_fields",
    "fold_affine",
    "load_stage_model",
    "overlay_png",
    "register",
    "register_series",
    "select_stages",
]


class _CallableModule(types.ModuleType):
    """Makes ``regnet.register(fixed, moving, models, ...)`` work as issue 10 and the README spell
    it, while ``regnet.register`` stays this module (``regnet.register.register`` is the same call)."""

    def __call__(self, *args, **kwargs) -> Result:
        return register(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
