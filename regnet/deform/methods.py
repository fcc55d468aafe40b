"""Synthetic DVF families of RegNet (regnet_spec.md section 1.4), without its marked bugs.

Every method takes the grid (``Geometry``), the resolved :class:`~regnet.settings.DeformExp`,
the deform number ``D`` and a seeded generator, plus only the inputs it uses (masks as boolean
(z, y, x) arrays, the image), and returns a (z, y, x, 3) float32 DVF in mm, components (x, y, z).

Lengths the spec gives in voxels (sigmas, the block radius) are voxels of the 1 mm stage-1 grid,
i.e. mm; they become voxels of the actual grid through its spacing (:func:`voxels`). RegNet
divided them by ``stage``, which is the same on its ``stage``-mm isotropic grids.
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from regnet import RegNetError
from regnet.deform.bspline import random_bspline_field
from regnet.deform.kernels import canny_edges as kernel_canny
from regnet.deform.kernels import gaussian_smooth
from regnet.geometry import Geometry, world_coordinate
from regnet.settings import METHODS, DeformExp
from regnet.timing import step


def voxels(length_mm: float, geometry: Geometry) -> tuple[float, float, float]:
    """A length in mm as voxels along each array axis (z, y, x) of the grid."""
    sx, sy, sz = geometry.spacing
    return (length_mm / sz, length_mm / sy, length_mm / sx)


def smooth(component: np.ndarray, sigma_voxels) -> np.ndarray:
    """Gaussian smoothing with SimpleITK's recursive (IIR) filter, compiled
    (:func:`regnet.deform.kernels.gaussian_smooth`: same numbers, a third of the CPU): its cost
    does not grow with sigma, unlike a truncated-kernel convolution. ``sigma_voxels`` is one
    value or one per array axis (z, y, x)."""
    sigma = np.broadcast_to(np.asarray(sigma_voxels, float), (3,))
    if sigma.max() <= 0:
        return component
    return gaussian_smooth(component, sigma)


def max_abs(dvf: np.ndarray) -> float:
    """max |u_k| over all components, without a |u| array (250 MB of fresh pages at 20.8 M voxels)."""
    return max(float(dvf.max()), -float(dvf.min())) if dvf.size else 0.0


def normalize_max(dvf: np.ndarray, limit: float) -> np.ndarray:
    """Scale down so that max |u_k| over all components is at most ``limit`` mm (RegNet's rule)."""
    peak = max_abs(dvf)
    if peak > limit > 0:
        dvf *= limit / peak
    return dvf


def _mask_to_zero(dvf: np.ndarray, mask: np.ndarray | None, sigma_voxels) -> np.ndarray:
    """Zero the field outside ``mask``, then smooth the edge away (each component, one pass of
    the recursive Gaussian over the vector array, in place). ``sigma_voxels`` per array axis (z, y, x)."""
    if mask is not None:
        dvf *= mask[..., None]
    sigma = np.broadcast_to(np.asarray(sigma_voxels, float), (3,))
    if sigma.max() <= 0:
        return dvf
    return gaussian_smooth(dvf, sigma, copy=False)


def _mask_for(exp: DeformExp, torso, lung):
    return {"Torso": torso, "Lung": lung}.get(exp.MaskToZero)


# ---------------------------------------------------------------- methods
def zero(geometry: Geometry) -> np.ndarray:
    return np.zeros(geometry.shape + (3,), np.float32)


def translation(geometry: Geometry, exp: DeformExp, number: int, rng) -> np.ndarray:
    """A constant shift: per axis 0 with probability ``Translation_ZeroProbability``, else U(-M, M)."""
    m = exp.MaxDeform * exp.Translation_MaxDeformRatio[number]
    shift = np.where(rng.random(3) < exp.Translation_ZeroProbability, 0.0, rng.uniform(-m, m, 3))
    return np.broadcast_to(shift.astype(np.float32), geometry.shape + (3,)).copy()


def single_frequency(geometry: Geometry, exp: DeformExp, number: int, rng, torso=None,
                     lung=None) -> np.ndarray:
    m = exp.MaxDeform * exp.SingleFrequency_MaxDeformRatio[number]
    with step("B-spline field"):
        dvf = random_bspline_field(geometry, exp.SingleFrequency_BSplineGridSpacing[number], m,
                                   exp.SingleFrequency_SetGridBorderToZero[number],
                                   voxels(exp.SingleFrequency_GridSmoothingSigma, geometry), rng, "single")
    sigma = voxels(exp.SingleFrequency_BackgroundSmoothingSigma * m / 7.0, geometry)
    with step("mask to zero + smoothing"):
        dvf = _mask_to_zero(dvf, _mask_for(exp, torso, lung), sigma)
    return normalize_max(dvf, m) if exp.DVFNormalization else dvf


def respiratory_motion(geometry: Geometry, exp: DeformExp, number: int, rng, torso=None,
                       lung=None) -> np.ndarray:
    """Diaphragm-driven motion after Hub et al. (2009), in physical coordinates.

    Cranio-caudal is world z and antero-posterior world y (LPS), taken through the direction
    cosines, so any orientation works. The diaphragm level is the lowest lung point; the
    cranio-caudal displacement ``t0 f(z)`` decays logarithmically above it; the transversal
    expansion acts on y about ``c`` = the lung's posterior extent minus delta (in mm at every
    stage: RegNet mixed voxels and mm at stages 2 and 4). u_z > 0 pulls from above, as RegNet.
    """
    if lung is None or not lung.any():
        raise RegNetError("respiratory_motion needs a non-empty lung mask (UseLungMask); "
                          "use single/mixed frequency for images without lungs.")
    with step("respiratory profile"):
        u_z, u_y = _respiratory_profile(geometry, exp, rng, lung)
    with step("B-spline field"):
        dvf = random_bspline_field(geometry, exp.RespiratoryMotion_BSplineGridSpacing[number],
                                   exp.RespiratoryMotion_SingleFrequency_MaxDeformRatio * exp.MaxDeform,
                                   exp.RespiratoryMotion_SetGridBorderToZero[number],
                                   voxels(exp.RespiratoryMotion_GridSmoothingSigma, geometry), rng, "single")
    dvf = normalize_max(dvf, exp.MaxDeform)
    dvf[..., 2] *= 0.3
    dvf[..., 2] += u_z  # the profile added in place: no second 250 MB field at 20.8 M voxels
    dvf[..., 1] += u_y
    sigma = voxels(exp.RespiratoryMotion_BackgroundSmoothingSigma * exp.MaxDeform / 7.0, geometry)
    with step("mask to zero + smoothing"):
        mask = _mask_for(exp, torso, lung)
        dvf = _mask_to_zero(dvf, torso if mask is None else mask, sigma)  # mandatory for RM
    limit = 1.2 * exp.MaxDeform * exp.RespiratoryMotion_MaxDeformRatio
    return normalize_max(dvf, limit) if exp.DVFNormalization else dvf


def _respiratory_profile(geometry: Geometry, exp: DeformExp, rng, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cranio-caudal decay and antero-posterior expansion (draws: t0, s0, delta, in RegNet's order):
    the components u_z and u_y (u_x = 0) as float32 arrays broadcastable to the grid ((Z, 1, 1) and
    (Z, Y, 1) for an axial volume)."""
    t0 = rng.uniform(*exp.RespiratoryMotion_t0Range) * exp.RespiratoryMotion_t0
    s0 = rng.uniform(*exp.RespiratoryMotion_s0Range) * exp.RespiratoryMotion_s0
    delta = rng.uniform(*exp.RespiratoryMotion_DeltaRange)
    wz, wy = world_coordinate(geometry, 2), world_coordinate(geometry, 1)
    z_lung = np.broadcast_to(wz, geometry.shape)[lung]
    z_d, z_top = float(z_lung.min()), float(z_lung.max())
    e = max((z_top - z_d) / 2.0, 1e-3)
    alpha = 1.3 / e
    rel = np.clip(wz - z_d, 0.0, e)
    f = np.where(wz < z_d + e, 1.0 - np.log1p(rel * alpha) / np.log1p(e * alpha), 0.0).astype(np.float32)
    c = float(np.broadcast_to(wy, geometry.shape)[lung].max()) - delta
    return (t0 * f).astype(np.float32), (-(wy - c) * (s0 * f)).astype(np.float32)


def canny_edges(image: sitk.Image, exp: DeformExp, region: np.ndarray | None = None) -> np.ndarray:
    """Canny edges (thresholds from the experiment) of the image in HU, as a bool array.

    With ``region``, only its bounding box (plus a margin) is filtered: edges are used inside
    the region only, and the lungs fill a fraction of a chest CT's volume."""
    shape = sitk.GetArrayViewFromImage(image).shape
    box = (slice(None),) * 3
    if region is not None and region.any():
        found = ndimage.find_objects(region.astype(np.uint8))[0]
        box = tuple(slice(max(0, s.start - 4), min(n, s.stop + 4)) for s, n in zip(found, shape))
    out = np.zeros(shape, bool)
    # SimpleITK's CannyEdgeDetection, compiled: the same edges (tested) for a fifth of its CPU
    out[box] = kernel_canny(sitk.GetArrayViewFromImage(image)[box], exp.CannyLowerThreshold, exp.CannyUpperThreshold)
    return out


def _box_dilate(mask: np.ndarray, size: int = 3, axis: int | None = None, length: int = 5) -> np.ndarray:
    """Binary dilation by a box, as separable running maxima (exactly ``binary_dilation`` with
    that element, tested, several times faster). With ``axis``, the element is RegNet's
    directional one: a ``size``-cube whose first ``length`` slices along ``axis`` are set."""
    out = mask.view(np.uint8)
    for k in range(3):
        if k == axis:
            out = ndimage.maximum_filter1d(out, length, axis=k, origin=length // 2 - size // 2, mode="constant")
        else:
            out = ndimage.maximum_filter1d(out, size, axis=k, mode="constant")
    return out.astype(bool)


def dilated_edge_mask(edges: np.ndarray, near_region: np.ndarray, np_iterations: int, block_radius,
                      rng) -> np.ndarray:
    """RegNet's random dilation phases on the edges inside ``near_region`` (the lung dilated by
    one voxel): (3, z, y, x) bool, one channel per DVF component: one full dilation, then
    zero-motion holes punched at random edge points, then growth in random blocks of
    ``block_radius`` voxels (one value, or one per array axis z, y, x) (18-connected, then
    directional 9^3 elements).

    Each channel keeps its own "available" set. RegNet reduced only channel 2's, through a
    leaked loop variable, so in practice two channels were never exhausted; here every channel
    is exhausted the same way, in the growth phases only (exhausting during the hole phase as
    well leaves too few points to grow from, and the field vanishes). Work is confined to the
    region's bounding box."""
    available0 = edges & near_region
    out = np.zeros((3,) + edges.shape, bool)
    if not available0.any():
        return out
    radius = [int(r) for r in np.broadcast_to(block_radius, (3,))]
    box = tuple(slice(max(0, s.start - r - 2), min(n, s.stop + r + 2))
                for s, n, r in zip(ndimage.find_objects(available0.astype(np.uint8))[0], edges.shape, radius))
    available = np.repeat(available0[box][None], 3, axis=0)
    dilated = available.copy()
    # Candidates are re-listed only now and then; a drawn point that is no longer available is
    # drawn again (rejection sampling: still uniform over the available points, and far cheaper
    # than listing every point of the volume at each iteration).
    points = [np.flatnonzero(available[c]) for c in range(3)]
    counts = [len(p) for p in points]
    b1, b2 = round(10 * np_iterations / 12), round(11 * np_iterations / 12)
    conn18 = ndimage.generate_binary_structure(3, 2)
    shape = available.shape[1:]
    flat = available.reshape(3, -1)

    def draw(c):
        for _ in range(64):
            index = points[c][rng.integers(len(points[c]))]
            if flat[c, index]:
                return index
        points[c] = np.flatnonzero(flat[c])  # mostly exhausted: list again
        return points[c][rng.integers(len(points[c]))]

    def exhaust(c, block):
        counts[c] -= int(available[c][block].sum())
        available[c][block] = False

    for it in range(np_iterations):
        if any(n <= 4 for n in counts):
            break
        for c in range(3):
            centre = np.unravel_index(draw(c), shape)
            block = tuple(slice(max(0, k - r), min(n, k + r + 1)) for k, n, r in zip(centre, shape, radius))
            if it == 0:  # one full 3x3x3 dilation of the whole channel
                dilated[c] = _box_dilate(dilated[c])
            elif it < b1:
                dilated[c][block] = False                      # a zero-motion hole
            elif it < b2:
                dilated[c][block] = ndimage.binary_dilation(dilated[c][block], conn18)
                if it % 2 == 0:
                    exhaust(c, block)
            else:
                dilated[c][block] = _box_dilate(dilated[c][block], 9, axis=it % 3, length=5)
                if rng.random() < 0.7:
                    exhaust(c, block)
    out[(slice(None),) + box] = dilated
    return out


def mixed_frequency(geometry: Geometry, exp: DeformExp, number: int, rng, image=None,
                    torso=None, lung=None, edges=None) -> np.ndarray:
    """Edges of the image (in the lung, or the torso without one) grown by random dilation
    phases, filled with a B-spline field, smoothed with a random sigma per component."""
    m = exp.MaxDeform * exp.MixedFrequency_MaxDeformRatio
    region = lung if (exp.UseLungMask and lung is not None and lung.any()) else torso
    if region is None or not region.any():
        raise RegNetError("mixed_frequency needs a lung or torso mask to place its edges.")
    near_region = _box_dilate(region)  # RegNet: Canny edges within the lung dilated by 1
    if edges is None:
        if image is None:
            raise RegNetError("mixed_frequency needs the image (for Canny edges) or precomputed edges.")
        with step("Canny edges"):
            edges = canny_edges(image, exp, near_region)
    with step("dilation phases"):
        radius = tuple(max(1, round(r)) for r in voxels(exp.MixedFrequency_BlockRadius, geometry))
        mask = dilated_edge_mask(edges, near_region, exp.MixedFrequency_Np[number], radius, rng)
    with step("B-spline field"):
        dvf = random_bspline_field(geometry, exp.MixedFrequency_BSplineGridSpacing[number], m,
                                   exp.MixedFrequency_SetGridBorderToZero,
                                   voxels(exp.MixedFrequency_GridSmoothingSigma, geometry), rng, "mixed")
    lo, hi = exp.MixedFrequency_SigmaRange
    with step("mask + smoothing"):
        for c in range(3):
            dvf[..., c] = smooth(dvf[..., c] * mask[c], voxels(rng.uniform(lo, hi), geometry))
    return normalize_max(dvf, m) if exp.DVFNormalization else dvf


#: The function of each method name of :data:`regnet.settings.METHODS` (one list of names).
FUNCTIONS = {name: globals()[name] for name in METHODS}
_COMMON = ("geometry", "exp", "number", "rng")


def inputs_of(method: str) -> tuple[str, ...]:
    """The data a method takes besides the common arguments, e.g. ('torso', 'lung')."""
    return tuple(p for p in inspect.signature(_function(method)).parameters if p not in _COMMON)


def _function(method: str):
    try:
        return FUNCTIONS[method]
    except KeyError:
        raise RegNetError(f"Unknown deform method {method!r}; choose one of {sorted(FUNCTIONS)}.") from None


def synthetic_dvf(method: str, geometry: Geometry, exp: DeformExp, number: int, rng, **inputs) -> np.ndarray:
    """Dispatch by method name (``exp.method_of(dsmooth)`` gives ``method, number``). ``inputs``
    are the method's own (:func:`inputs_of`); any other keyword is an error, not ignored."""
    function = _function(method)
    accepted = inputs_of(method)
    unexpected = sorted(set(inputs) - set(accepted))
    if unexpected:
        raise RegNetError(f"Deform method {method!r} got unexpected keyword(s) {', '.join(map(repr, unexpected))}; "
                          f"it takes {', '.join(map(repr, accepted)) or 'no inputs'} besides the grid, "
                          "experiment, deform number and generator.")
    common = {"geometry": geometry, "exp": exp, "number": number, "rng": rng}
    parameters = inspect.signature(function).parameters
    dvf = function(**{k: v for k, v in common.items() if k in parameters}, **inputs)
    warn_if_weak(dvf, method, exp, number)
    return dvf


def field_limit(method: str, exp: DeformExp, number: int) -> float | None:
    """The largest |u_k| (mm) a method aims at (its normalisation limit); None where no floor makes
    sense (zero; translation, whose axes are zero by design with ``Translation_ZeroProbability``)."""
    m = exp.MaxDeform
    return {"single_frequency": lambda: m * exp.SingleFrequency_MaxDeformRatio[number],
            "mixed_frequency": lambda: m * exp.MixedFrequency_MaxDeformRatio,
            "respiratory_motion": lambda: 1.2 * m * exp.RespiratoryMotion_MaxDeformRatio}.get(method, lambda: None)()


#: A field whose max |u_k| is below this fraction of its limit is reported: training on it
#: teaches nothing about the magnitudes the settings ask for (issue 15 item 5).
WEAK_FIELD_FRACTION = 0.1


def warn_if_weak(dvf: np.ndarray, method: str, exp: DeformExp, number: int) -> None:
    limit = field_limit(method, exp, number)
    peak = max_abs(dvf)
    if limit and peak < WEAK_FIELD_FRACTION * limit:
        warnings.warn(f"{method} (deform number {number}) gave a field of max |u| {peak:.2f} mm, below a tenth of "
                      f"its limit {limit:.2f} mm (MaxDeform {exp.MaxDeform:g}): check the masks (an empty or tiny "
                      "lung/torso) and, for mixed_frequency, that the image has edges Canny finds "
                      f"(CannyLowerThreshold {exp.CannyLowerThreshold:g}).", RuntimeWarning, stacklevel=2)
