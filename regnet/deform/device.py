"""Synthetic pairs on the accelerator: RegNet's DVF families and augmentations with ``keras.ops``.

The batched, backend-neutral twin of :mod:`regnet.deform.methods` and
:mod:`regnet.deform.augment` (TensorFlow on a CPU, JAX on a GPU): base images and masks stay on
the device, every call draws fresh fields. Shapes: volumes (B, z, y, x), DVFs (B, z, y, x, 3)
float32 in mm, components (x, y, z), pulling (``fixed = base(p + u(p))``).

Randomness: each sample has its own NumPy generator from the stable SHA-256 key
(:func:`regnet.seeding.rng_for`), the key the offline job uses for that pair and purpose.
Every scalar draw (coefficients, t0, s0, delta, sponge factor, noise mean...) is made on the
CPU from it, in the NumPy generator's order, so the B-spline coefficients are the job's own
and the fields differ from the NumPy ones only by the smoothing filter (FIR here, recursive
there). The one volume-sized draw, the noise, comes from ``keras.random.normal`` seeded by an
integer drawn from the same generator: deterministic, but not the NumPy noise.

Voxel-valued parameters (sigmas, block radius) are stage-1 voxels, i.e. mm: with ``stage``
given they are divided by it (as :mod:`regnet.deform.methods`); with ``stage=None`` by the
grid spacing of each axis.

Not on the device: Canny edges (made once per image on the CPU; the random dilation phases of
mixed frequency that grow them run here, :mod:`regnet.deform.device_dilation`, or on the CPU with
``dilation="cpu"``) and occlusion.
"""
from __future__ import annotations

from collections import defaultdict

import keras
import numpy as np
from keras import ops

from regnet import RegNetError
from regnet.deform.device_dilation import dilated_edge_masks
from regnet.deform.device_field import (
    as_float,
    bspline_prefilter,
    dense_field,
    gaussian_smooth,
    jacobian_determinant,
    normalize_max,
    warp,
)
from regnet.deform.device_grid import (
    draw_bspline_coefficients,
)
from regnet.deform.sponge_rule import sponge_factor_weight
from regnet.geometry import world_coordinate
from regnet.seeding import rng_for


# ---------------------------------------------------------------- helpers
def _voxel_mm(geometry, stage) -> np.ndarray:
    """Size of a voxel in stage-1 voxels (mm), per array axis (z, y, x)."""
    if stage is not None:
        return np.full(3, float(stage))
    return np.asarray(geometry.spacing, float)[::-1]


def _grid_sigma(sigma: float, geometry, stage) -> float:
    return sigma / float(np.mean(_voxel_mm(geometry, stage)))


def _bspline_fields(geometry, rngs, grid_spacing_mm, max_deform, border, sigma, mode):
    """One random B-spline field per generator, coefficients drawn on the CPU, evaluated here."""
    coeffs = np.stack([draw_bspline_coefficients(geometry, grid_spacing_mm, max_deform, border, sigma, rng, mode)
                       for rng in rngs])
    return dense_field(coeffs, geometry)


def _mask_to_zero(dvf, mask, sigma_zyx):
    """Zero the field outside ``mask`` (B, z, y, x), then smooth the edge away."""
    if mask is not None:
        dvf = dvf * ops.expand_dims(as_float(mask), -1)
    if np.all(np.asarray(sigma_zyx) <= 0):
        return dvf
    return gaussian_smooth(dvf, sigma_zyx)


def _mask_for(exp, torso, lung):
    return {"Torso": torso, "Lung": lung}.get(exp.MaskToZero)


def _per_sample(values):
    """(B,) floats as a tensor broadcastable against (B, z, y, x)."""
    return ops.reshape(ops.convert_to_tensor(np.asarray(values, np.float32)), (-1, 1, 1, 1))


# ---------------------------------------------------------------- methods (regnet_spec.md 1.4)
def zero(geometry, rngs, **_):
    return ops.zeros((len(rngs),) + tuple(geometry.shape) + (3,), "float32")


def translation(geometry, exp, number: int, rngs, **_):
    """A constant shift per sample: per axis 0 with probability ``Translation_ZeroProbability``, else U(-M, M)."""
    m = exp.MaxDeform * exp.Translation_MaxDeformRatio[number]
    shifts = np.stack([np.where(rng.random(3) < exp.Translation_ZeroProbability, 0.0, rng.uniform(-m, m, 3))
                       for rng in rngs]).astype(np.float32)
    return ops.zeros((len(rngs),) + tuple(geometry.shape) + (3,), "float32") + ops.reshape(shifts, (-1, 1, 1, 1, 3))


def single_frequency(geometry, exp, number: int, rngs, torso=None, lung=None, stage=None, **_):
    """Random B-spline field, masked to the torso (or lung) and smoothed, max |u_k| <= M."""
    m = exp.MaxDeform * exp.SingleFrequency_MaxDeformRatio[number]
    dvf = _bspline_fields(geometry, rngs, exp.SingleFrequency_BSplineGridSpacing[number], m,
                          exp.SingleFrequency_SetGridBorderToZero[number],
                          _grid_sigma(exp.SingleFrequency_GridSmoothingSigma, geometry, stage), "single")
    sigma = exp.SingleFrequency_BackgroundSmoothingSigma * m / 7.0 / _voxel_mm(geometry, stage)
    dvf = _mask_to_zero(dvf, _mask_for(exp, torso, lung), sigma)
    return normalize_max(dvf, m) if exp.DVFNormalization else dvf


def respiratory_motion(geometry, exp, number: int, rngs, torso=None, lung=None, stage=None, **_):
    """Diaphragm-driven motion after Hub et al. (2009), as :func:`regnet.deform.methods.respiratory_motion`:
    cranio-caudal decay above the lowest lung point, antero-posterior expansion about the lung's
    posterior extent minus delta, plus a single-frequency field with its z component x 0.3."""
    if lung is None:
        raise RegNetError("respiratory_motion needs a non-empty lung mask (UseLungMask); "
                          "use single/mixed frequency for images without lungs.")
    lung_f = as_float(lung)
    empty = np.flatnonzero(ops.convert_to_numpy(ops.max(lung_f, axis=(1, 2, 3))) == 0)
    if len(empty):
        raise RegNetError(f"respiratory_motion needs a non-empty lung mask; samples {empty.tolist()} of the "
                          "batch have none. Use single/mixed frequency for images without lungs.")
    draws = np.array([[rng.uniform(*exp.RespiratoryMotion_t0Range) * exp.RespiratoryMotion_t0,
                       rng.uniform(*exp.RespiratoryMotion_s0Range) * exp.RespiratoryMotion_s0,
                       rng.uniform(*exp.RespiratoryMotion_DeltaRange)] for rng in rngs])
    t0, s0, delta = (_per_sample(draws[:, k]) for k in range(3))
    wz = ops.expand_dims(ops.convert_to_tensor(world_coordinate(geometry, 2)), 0)
    wy = ops.expand_dims(ops.convert_to_tensor(world_coordinate(geometry, 1)), 0)
    inside = lung_f > 0
    big = np.float32(3e38)
    z_d = ops.min(ops.where(inside, wz, big), axis=(1, 2, 3), keepdims=True)
    z_top = ops.max(ops.where(inside, wz, -big), axis=(1, 2, 3), keepdims=True)
    e = ops.maximum((z_top - z_d) / 2.0, 1e-3)
    alpha = 1.3 / e
    rel = ops.clip(wz - z_d, 0.0, e)
    f = ops.where(wz < z_d + e, 1.0 - ops.log1p(rel * alpha) / ops.log1p(e * alpha), 0.0)
    c = ops.max(ops.where(inside, wy, -big), axis=(1, 2, 3), keepdims=True) - delta
    full = ops.zeros_like(lung_f)
    profile = ops.stack([full, full - (wy - c) * (s0 * f), full + t0 * f], axis=-1)

    sf = _bspline_fields(geometry, rngs, exp.RespiratoryMotion_BSplineGridSpacing[number],
                         exp.RespiratoryMotion_SingleFrequency_MaxDeformRatio * exp.MaxDeform,
                         exp.RespiratoryMotion_SetGridBorderToZero[number],
                         _grid_sigma(exp.RespiratoryMotion_GridSmoothingSigma, geometry, stage), "single")
    sf = normalize_max(sf, exp.MaxDeform) * np.array([1.0, 1.0, 0.3], np.float32)
    sigma = exp.RespiratoryMotion_BackgroundSmoothingSigma * exp.MaxDeform / 7.0 / _voxel_mm(geometry, stage)
    mask = _mask_for(exp, torso, lung)
    dvf = _mask_to_zero(profile + sf, torso if mask is None else mask, sigma)  # mandatory for RM
    limit = 1.2 * exp.MaxDeform * exp.RespiratoryMotion_MaxDeformRatio
    return normalize_max(dvf, limit) if exp.DVFNormalization else dvf


def mixed_frequency(geometry, exp, number: int, rngs, edges=None, torso=None, lung=None, edge_masks=None,
                    stage=None, **_):
    """Edges grown by random dilation phases, filled with a B-spline field, smoothed with a
    random sigma per component, max |u_k| <= M.

    By default the dilation phases run here (:func:`device_edge_masks`) from ``edges`` (B, z, y, x),
    each image's Canny edges, in the lung (``exp.UseLungMask`` and a non-empty lung) or else the
    torso: the draws are one seed and the exhaustion coins, then the coefficients and sigmas, so
    the coefficients are not the NumPy job's (its dilation consumed other draws first). Given
    ``edge_masks`` (B, 3, z, y, x) from the CPU instead (:func:`cpu_edge_masks`, the NumPy job's
    own masks, drawn with the same generators before this call) the field is the NumPy job's up to
    the smoothing filter."""
    if edge_masks is None:
        if edges is None:
            raise RegNetError("mixed_frequency on the device needs edges=(B, z, y, x) (Canny edges per image, "
                              "regnet.deform.methods.canny_edges) or edge_masks=(B, 3, z, y, x) from the CPU "
                              "(regnet.deform.device.cpu_edge_masks).")
        edge_masks = device_edge_masks(edges, torso, lung, geometry, exp, number, rngs, stage)
    m = exp.MaxDeform * exp.MixedFrequency_MaxDeformRatio
    dvf = _bspline_fields(geometry, rngs, exp.MixedFrequency_BSplineGridSpacing[number], m,
                          exp.MixedFrequency_SetGridBorderToZero,
                          _grid_sigma(exp.MixedFrequency_GridSmoothingSigma, geometry, stage), "mixed")
    lo, hi = exp.MixedFrequency_SigmaRange
    voxel = _voxel_mm(geometry, stage)
    sigmas = [[rng.uniform(lo, hi) for _ in range(3)] for rng in rngs]  # stage-1 voxels, NumPy's order
    masks = as_float(edge_masks)
    out = []
    for b in range(len(rngs)):
        components = [gaussian_smooth(dvf[b:b + 1, ..., c] * masks[b:b + 1, c], sigmas[b][c] / voxel)
                      for c in range(3)]
        out.append(ops.stack(components, axis=-1))
    dvf = ops.concatenate(out, axis=0)
    return normalize_max(dvf, m) if exp.DVFNormalization else dvf


def device_edge_masks(edges, torso, lung, geometry, exp, number: int, rngs, stage=None):
    """Mixed frequency's dilated edge masks (B, 3, z, y, x) on the device
    (:func:`regnet.deform.device_dilation.dilated_edge_masks`): edges inside the lung dilated by one
    voxel where ``exp.UseLungMask`` and the sample's lung is not empty, else inside the torso; block
    radius ``MixedFrequency_BlockRadius`` stage-1 voxels per array axis (at least 1)."""
    edges = as_float(edges)
    if torso is None and lung is None:
        raise RegNetError("mixed_frequency needs a lung or torso mask to place its edges (torso=, lung=).")
    region = as_float(torso) if torso is not None else as_float(lung)
    if exp.UseLungMask and lung is not None:
        lung = as_float(lung)
        has_lung = ops.reshape(ops.max(lung, axis=(1, 2, 3)) > 0, (-1, 1, 1, 1))
        region = lung if torso is None else ops.where(has_lung, lung, region)
    radius = tuple(max(1, round(exp.MixedFrequency_BlockRadius / v)) for v in _voxel_mm(geometry, stage))
    return dilated_edge_masks(edges, region, exp.MixedFrequency_Np[number], radius, rngs)


def cpu_edge_masks(edges, regions, exp, number: int, rngs, stage: int) -> np.ndarray:
    """The random dilation phases of mixed frequency on the CPU (NumPy job's code, needs
    SimpleITK installed): ``edges`` and ``regions`` (lung, or torso without one) are per-sample
    (z, y, x) bool arrays; consumes each generator's first draws, as the NumPy method does."""
    from regnet.deform.methods import _box_dilate, dilated_edge_mask

    radius = max(1, round(exp.MixedFrequency_BlockRadius / stage))
    return np.stack([dilated_edge_mask(np.asarray(e, bool), _box_dilate(np.asarray(r, bool)),
                                       exp.MixedFrequency_Np[number], radius, rng)
                     for e, r, rng in zip(edges, regions, rngs)])


DEVICE_METHODS = {
    "zero": zero,
    "translation": translation,
    "single_frequency": single_frequency,
    "respiratory_motion": respiratory_motion,
    "mixed_frequency": mixed_frequency,
}


def synthetic_dvf(method: str, geometry, exp, number: int, rngs, **inputs):
    """Dispatch by method name, one generator per sample of the batch."""
    try:
        function = DEVICE_METHODS[method]
    except KeyError:
        raise RegNetError(f"Unknown deform method {method!r}; choose one of {sorted(DEVICE_METHODS)}.") from None
    return function(geometry=geometry, exp=exp, number=number, rngs=rngs, **inputs)


# ---------------------------------------------------------------- augmentations (regnet_spec.md 1.2, 1.5)
def sponge(images, jacobian, torso, exp, rngs):
    """Density follows the volume change: (HU + 1000) * clip(J) * (1 + (U(Sponge_ScaleRange) - 1) w(HU)) - 1000
    in the torso (:func:`regnet.deform.augment.sponge`, one factor per sample)."""
    factor = _per_sample([rng.uniform(*exp.Sponge_ScaleRange) for rng in rngs])
    j = ops.clip(as_float(jacobian), *exp.Sponge_JacobianClip)
    images = as_float(images)
    scale = 1.0 + (factor - 1.0) * sponge_factor_weight(images, ops.clip)
    return ops.where(as_float(torso) > 0, (images + 1000.0) * j * scale - 1000.0, images)


def noise(images, torso, sigma: float, average: float, rngs):
    """N(mean, sigma) in the torso, mean = int(U(-average, average)) per sample as RegNet. The
    volume of normals comes from ``keras.random.normal`` seeded by a draw of the sample's generator."""
    images = as_float(images)
    means = [float(int(rng.uniform(-average, average))) for rng in rngs]
    seeds = [int(rng.integers(2 ** 31 - 1)) for rng in rngs]
    shape = tuple(images.shape[1:])
    draws = ops.stack([keras.random.normal(shape, mean=mean, stddev=sigma, seed=seed)
                       for mean, seed in zip(means, seeds)])
    return ops.where(as_float(torso) > 0, images + draws, images)


def _warp_masks(torso, lung, dvf, geometry):
    """Both masks in one nearest-neighbour warp (packed as bits), (B, z, y, x) float 0/1."""
    packed = ops.cast(as_float(torso) > 0, "float32") + 2.0 * ops.cast(as_float(lung) > 0, "float32")
    moved = warp(packed, dvf, geometry, "nearest", 0.0)
    return ops.cast(ops.mod(moved, 2.0) > 0, "float32"), ops.cast(moved >= 2.0, "float32")


def _round_hu(images):
    return ops.clip(ops.round(images), -32768.0, 32767.0)


def next_image(images, torso, lung, geometry, exp, rngs: list[dict], stage=None, default: float = -2048.0,
               round_hu: bool = True) -> dict:
    """Anatomy augmentation (:func:`regnet.deform.augment.next_image` for a batch): a fresh
    single-frequency field up to ``NextIm_MaxDeform`` (no mask-to-zero), cubic warp, masks
    warped, sponge and light noise. ``rngs[b]`` has generators 'NextDVF', 'NextSponge', 'NextNoise'."""
    m = exp.NextIm_MaxDeform
    dvf = _bspline_fields(geometry, [r["NextDVF"] for r in rngs], exp.SingleFrequency_BSplineGridSpacing[0], m,
                          exp.SingleFrequency_SetGridBorderToZero[0],
                          _grid_sigma(exp.SingleFrequency_GridSmoothingSigma, geometry, stage), "single")
    dvf = normalize_max(dvf, m)
    warped = warp(images, dvf, geometry, "cubic", default)
    next_torso, next_lung = _warp_masks(torso, lung, dvf, geometry)
    out = sponge(warped, jacobian_determinant(dvf, geometry), next_torso, exp, [r["NextSponge"] for r in rngs])
    out = noise(out, next_torso, exp.NextIm_SigmaN, exp.Im_NoiseAverage, [r["NextNoise"] for r in rngs])
    return {"image": _round_hu(out) if round_hu else out, "torso": next_torso, "lung": next_lung, "dvf": dvf}


def intensity_chain(clean, jacobian, torso, exp, rngs: list[dict]):
    """``exp.DeformedImExt`` in order on the deformed images; ``rngs[b]`` has 'Sponge', 'Noise'."""
    image = as_float(clean)
    for step in exp.DeformedImExt[1:]:
        if step == "Sponge":
            image = sponge(image, jacobian, torso, exp, [r["Sponge"] for r in rngs])
        elif step == "Noise":
            image = noise(image, torso, exp.Im_NoiseSigma, exp.Im_NoiseAverage, [r["Noise"] for r in rngs])
        else:
            raise RegNetError(f"The device generator has no {step!r} augmentation; remove it from DeformedImExt "
                              "or generate these pairs with the CPU job (regnet generate).")
    return image


# ---------------------------------------------------------------- whole pairs
def _select(x, index):
    return ops.take(x, np.asarray(index, np.int32), axis=0)


def _reorder(parts: list, order: list[int]):
    """Concatenate per-group results and put the samples back in batch order."""
    inverse = np.argsort(np.concatenate(order)).astype(np.int32)
    return ops.take(ops.concatenate(parts, axis=0), inverse, axis=0)


def generate_pairs(images, torso, lung, geometry, exp, keys: list[tuple], dsmooths: list[int], stage=None,
                   default: float = -2048.0, round_hu: bool = True, edges=None, next_images=None,
                   dilation: str = "device") -> dict:
    """Synthetic pairs for a batch of base images already on the device, as the offline job
    makes them: a next image for dsmooth > 0, the field of ``exp.method_of(dsmooth)``, the cubic
    warp, masks warped (nearest), the Jacobian and the intensity chain.

    ``keys[b]`` is the stable-hash key of sample b without its purpose -- the job's is
    ``(deform_exp, data, cn, type_im, dsmooth, stage)``; put a step number in it to draw fresh
    fields for every batch. ``edges`` (B, z, y, x) bool, Canny edges per original image (CPU,
    :func:`regnet.deform.methods.canny_edges`, once per image), is needed only for mixed
    frequency; a next image uses its original's edges warped with it. ``next_images`` (one
    bool per sample) overrides RegNet's rule "a next image for dsmooth > 0". ``dilation`` says
    where mixed frequency's random dilation phases run: ``"device"`` (here, no copy to the CPU) or
    ``"cpu"`` (the NumPy job's :func:`~regnet.deform.methods.dilated_edge_mask`, for comparison).

    Returns ``moving`` (base images), ``fixed`` (deformed, augmented), ``dvf`` (mm, x y z),
    ``fixed_torso``, ``fixed_lung``, ``moving_torso`` -- all (B, ...) tensors.
    """
    if dilation not in ("device", "cpu"):
        raise RegNetError(f"generate_pairs: dilation={dilation!r}; choose 'device' (the default) or 'cpu'.")
    if len(keys) != len(dsmooths) or len(keys) != int(images.shape[0]):
        raise RegNetError(f"generate_pairs: {int(images.shape[0])} images but {len(keys)} keys and "
                          f"{len(dsmooths)} dsmooths; give one key and one dsmooth per image.")
    images, torso = as_float(images), as_float(torso)
    lung = as_float(lung) if lung is not None else ops.zeros_like(torso)
    purposes = ("NextDVF", "NextSponge", "NextNoise", "Sponge", "Noise")
    rngs = [{p: rng_for(*key, p) for p in purposes} for key in keys]
    next_images = [d > 0 for d in dsmooths] if next_images is None else [bool(n) for n in next_images]
    nexts = [b for b, n in enumerate(next_images) if n]
    if nexts:
        made = next_image(_select(images, nexts), _select(torso, nexts), _select(lung, nexts), geometry, exp,
                          [rngs[b] for b in nexts], stage, default, round_hu)
        originals = [b for b, n in enumerate(next_images) if not n]
        order = [originals, nexts]

        def merge(original, new):
            return _reorder([_select(original, originals), new], order) if originals else new

        images, torso, lung = merge(images, made["image"]), merge(torso, made["torso"]), merge(lung, made["lung"])
        if edges is not None:  # edges of a next image: the original's, moved with it
            edges = as_float(edges)
            edges = merge(edges, warp(_select(edges, nexts), made["dvf"], geometry, "nearest", 0.0))
    groups = defaultdict(list)
    for b, d in enumerate(dsmooths):
        groups[exp.method_of(d)].append(b)
    parts, order = [], []
    for (method, number), index in sorted(groups.items()):
        method_rngs = [rng_for(*keys[b], method) for b in index]
        inputs = {"torso": _select(torso, index), "lung": _select(lung, index) if exp.UseLungMask else None,
                  "stage": stage}
        if method == "mixed_frequency" and edges is None:
            raise RegNetError("mixed_frequency on the device needs the Canny edges of each base image: pass "
                              "edges=(B, z, y, x) bool (regnet.deform.methods.canny_edges, once per image).")
        if method == "mixed_frequency" and dilation == "cpu":
            inputs["edge_masks"] = _edge_masks_for(edges, torso, lung, index, exp, number, method_rngs, geometry,
                                                   stage)
        elif method == "mixed_frequency":
            inputs["edges"] = _select(as_float(edges), index)
        parts.append(synthetic_dvf(method, geometry, exp, number, method_rngs, **inputs))
        order.append(index)
    dvf = _reorder(parts, order) if len(parts) > 1 else parts[0]
    coefficients = bspline_prefilter(images)
    deformed = warp(images, dvf, geometry, "cubic", default, coefficients=coefficients)
    fixed_torso, fixed_lung = _warp_masks(torso, lung, dvf, geometry)
    jac = jacobian_determinant(dvf, geometry)
    fixed = intensity_chain(deformed, jac, fixed_torso, exp, rngs)
    return {"moving": images, "fixed": _round_hu(fixed) if round_hu else fixed, "dvf": dvf,
            "fixed_torso": fixed_torso, "fixed_lung": fixed_lung, "moving_torso": torso}


def _edge_masks_for(edges, torso, lung, index, exp, number, rngs, geometry, stage):
    edges = ops.convert_to_numpy(_select(as_float(edges), index)) > 0
    lung_np, torso_np = ops.convert_to_numpy(_select(lung, index)) > 0, ops.convert_to_numpy(_select(torso, index)) > 0
    regions = [lg if (exp.UseLungMask and lg.any()) else tr for lg, tr in zip(lung_np, torso_np)]
    if not all(r.any() for r in regions):
        raise RegNetError("mixed_frequency needs a lung or torso mask to place its edges.")
    scale = stage if stage is not None else float(np.mean(geometry.spacing))
    return cpu_edge_masks(edges, regions, exp, number, rngs, scale)
