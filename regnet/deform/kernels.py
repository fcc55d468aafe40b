"""Compiled (Numba) kernels of the generator, each giving a library's numbers at a fraction of its CPU:
cubic B-spline prefilter and warp, nearest-neighbour mask warp (SimpleITK's ``WarpImageFilter``),
Jacobian determinant, recursive Gaussian (``SmoothingRecursiveGaussian``), dense B-spline field, and
Canny edges (``CannyEdgeDetection``). Each is tested against the library it replaces.

Why by hand: the cubic warp is the generator's largest step (two per pair with a next image),
and SimpleITK's ``WarpImageFilter`` / ``Resample`` spend most of their time in per-voxel virtual
calls and a 64-tap loop that recomputes the index weights; SciPy's ``map_coordinates`` needs a
(3, N) float64 coordinate array (500 MB at 20.8 M voxels) and is no faster. Here the four weights per
axis are computed once per voxel (separable), the 4x4x4 taps are summed in float32 (~1e-4 HU), and the
prefilter is the same recursive filter ITK uses, along contiguous rows. ITK's conventions are kept
exactly: mirror boundary of ``BSplineDecompositionImageFilter`` / ``BSplineInterpolateImageFunction``
(tap ``-k`` -> ``k``, ``N-1+k`` -> ``N-1-k``), a point is inside when its continuous index lies in
``[-0.5, N - 0.5)`` on every axis (``IsInsideBuffer``), nearest rounds half up. Tested against
SimpleITK's cubic ``WarpImageFilter`` (within 0.5 HU; in practice ~1e-3). The Jacobian kernel reads
the 6 neighbours of a voxel and writes its determinant: no (3, 3, z, y, x) gradient array (750 MB at
20.8 M voxels) and no temporaries. Every kernel works plane by plane (``prange``), so its result does
not depend on the thread count.

The kernels live in :mod:`regnet.deform._compiled`, imported on first use. Numba compiles them once
(about a minute of CPU on a fresh machine) and caches the machine code beside that module (or in
``NUMBA_CACHE_DIR`` / the user cache when the package folder is read-only); a fresh process then pays
~0.15 s to import Numba and ~0.05 s per kernel to load it.
"""
from __future__ import annotations

import math

import numpy as np

from regnet import RegNetError
from regnet.geometry import Geometry

__all__ = ["bspline_coefficients_array", "warp_cubic", "warp_nearest", "index_map", "jacobian_determinant",
           "gaussian_smooth", "bspline_dense", "canny_edges", "field_statistics", "set_threads"]

_POLE = math.sqrt(3.0) - 2.0     # the cubic B-spline's pole
_TOLERANCE = 1e-10               # ITK's BSplineDecompositionImageFilter tolerance (sets the horizon)


_threads: int | None = None


def set_threads(threads: int | None) -> None:
    """Threads of the compiled kernels in this process (the job gives cores / jobs, as to SimpleITK,
    so that parallel workers do not oversubscribe the machine); None: Numba's default (all cores)."""
    global _threads
    _threads = threads


def _kernels():
    """The compiled kernels, imported on first use (Numba loads them from its cache: importing this
    module, hence the CLI, stays cheap), with :func:`set_threads`'s count for the calling thread."""
    from regnet.deform import _compiled

    if _threads:
        import numba

        numba.set_num_threads(max(1, min(_threads, numba.config.NUMBA_NUM_THREADS)))
    return _compiled


def bspline_coefficients_array(array: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients (float32, mirror boundary) of a (z, y, x) array: what ITK's
    ``BSplineDecompositionImageFilter`` gives (same recursion, initialisation and horizon)."""
    _compiled = _kernels()
    c = np.array(array, dtype=np.float32, order="C", copy=True)
    horizon = int(math.ceil(math.log(_TOLERANCE) / math.log(abs(_POLE))))
    for axis in range(c.ndim):
        n = c.shape[axis]
        if n < 2:
            continue  # ITK copies an axis of one voxel unchanged
        before = int(np.prod(c.shape[:axis]))
        after = int(np.prod(c.shape[axis + 1:]))
        _compiled.filter_middle(c.reshape(before, n, after), _POLE, horizon)
    return c


def index_map(moving: Geometry, fixed: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, b, M) with moving continuous index (x, y, z) = A i + b + M u for fixed index i and
    displacement u (physical x, y, z, mm): p = o_f + D_f S_f i, index = S_m^-1 D_m^-1 (p + u - o_m)."""
    to_index = np.diag(1.0 / np.asarray(moving.spacing)) @ np.linalg.inv(moving.matrix)
    a = to_index @ _index_to_offset(fixed)
    b = to_index @ (np.asarray(fixed.origin) - np.asarray(moving.origin))
    return np.ascontiguousarray(a), np.ascontiguousarray(b), np.ascontiguousarray(to_index)


def _index_to_offset(g: Geometry) -> np.ndarray:
    """D S: index (x, y, z) -> physical offset from the origin."""
    return g.matrix @ np.diag(np.asarray(g.spacing, float))


def _field_array(field) -> tuple[np.ndarray, Geometry]:
    if not isinstance(field, tuple):  # a SimpleITK image (imported here only: the device path has none)
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(field), Geometry.of(field)
    array, geometry = field
    return np.asarray(array), geometry


def _float32_field(u: np.ndarray) -> np.ndarray:
    return u if (u.dtype == np.float32 and u.flags.c_contiguous) else np.ascontiguousarray(u, dtype=np.float32)


def warp_cubic(coefficients: np.ndarray, moving: Geometry, field, default: float = 0.0) -> np.ndarray:
    """``image(x + u(x))`` (float32, the field's grid) from the image's cubic B-spline
    ``coefficients`` (:func:`bspline_coefficients_array`) on grid ``moving``. ``field`` is a DVF
    image or ``(array (z, y, x, 3), Geometry)``."""
    _compiled = _kernels()
    u, fixed = _field_array(field)
    a, b, m = index_map(moving, fixed)
    out = np.empty(u.shape[:3], np.float32)
    _compiled.warp_cubic(np.ascontiguousarray(coefficients, dtype=np.float32), _float32_field(u), a, b, m,
                float(default), out)
    return out


def warp_nearest(labels: np.ndarray, moving: Geometry, field) -> np.ndarray:
    """Nearest-neighbour ``labels(x + u(x))`` (same dtype, 0 outside) on the field's grid."""
    _compiled = _kernels()
    u, fixed = _field_array(field)
    a, b, m = index_map(moving, fixed)
    out = np.empty(u.shape[:3], labels.dtype)
    _compiled.warp_nearest(np.ascontiguousarray(labels), _float32_field(u), a, b, m, out)
    return out


def jacobian_determinant(u: np.ndarray, geometry: Geometry) -> np.ndarray:
    """det(I + du/dp) (float32, (z, y, x)) of a (z, y, x, 3) DVF in mm, derivatives in physical units:
    index differences (central, one-sided at the ends, as ``np.gradient``) through spacing and direction."""
    _compiled = _kernels()
    index_per_mm = np.ascontiguousarray(np.diag(1.0 / np.asarray(geometry.spacing)) @ geometry.matrix.T)
    out = np.empty(u.shape[:3], np.float32)
    _compiled.jacobian(_float32_field(np.asarray(u)), index_per_mm, out)
    return out


def _gaussian_coefficients(sigma: float):
    """Zero-order coefficients of Deriche's recursive Gaussian with Farnebäck & Westin's constants,
    normalised as ITK's ``RecursiveGaussianImageFilter`` (unit DC gain, symmetric anti-causal part,
    boundary terms for a constant extension): (N0..N3), (M1..M4), (D1..D4), (BN1..4), (BM1..4)."""
    a1, b1, w1, l1 = 1.3530, 1.8151, 0.6681, -1.3932
    a2, b2, w2, l2 = -0.3531, 0.0902, 2.0787, -1.3732
    c1, c2 = math.cos(w1 / sigma), math.cos(w2 / sigma)
    s1, s2 = math.sin(w1 / sigma), math.sin(w2 / sigma)
    e1, e2 = math.exp(l1 / sigma), math.exp(l2 / sigma)
    d = np.array([-2 * (e2 * c2 + e1 * c1),
                  4 * c2 * c1 * e1 * e2 + e1 * e1 + e2 * e2,
                  -2 * c1 * e1 * e2 * e2 - 2 * c2 * e2 * e1 * e1,
                  e1 * e1 * e2 * e2])
    n = np.array([a1 + a2,
                  e2 * (b2 * s2 - (a2 + 2 * a1) * c2) + e1 * (b1 * s1 - (a1 + 2 * a2) * c1),
                  2 * e1 * e2 * ((a1 + a2) * c2 * c1 - b1 * c2 * s1 - b2 * c1 * s2) + a2 * e1 * e1 + a1 * e2 * e2,
                  e2 * e1 * e1 * (b2 * s2 - a2 * c2) + e1 * e2 * e2 * (b1 * s1 - a1 * c1)])
    sd = 1.0 + d.sum()
    n /= 2 * n.sum() / sd - n[0]                  # unit gain: causal + anti-causal sum to 1
    m = np.array([n[1] - d[0] * n[0], n[2] - d[1] * n[0], n[3] - d[2] * n[0], -d[3] * n[0]])
    return n, m, d, d * n.sum() / sd, d * m.sum() / sd


def gaussian_smooth(array: np.ndarray, sigma_voxels, copy: bool = True) -> np.ndarray:
    """Recursive Gaussian smoothing (float32, new array) of a (z, y, x) array or a (z, y, x, C) vector
    array, ``sigma_voxels`` per array axis (z, y, x): SimpleITK's ``SmoothingRecursiveGaussian`` (same
    recursion, coefficients, border and axis order x, y, z; float64 within a line) at a fraction of its
    cost. Axes with sigma 0 are left as they are. ``copy=False`` smooths a float32 C-contiguous
    ``array`` in place (no second 250 MB field at 20.8 M voxels)."""
    _compiled = _kernels()
    sigma = np.broadcast_to(np.asarray(sigma_voxels, float), (3,))
    out = np.array(array, dtype=np.float32, order="C", copy=copy)
    for axis in (2, 1, 0):  # ITK: x first, then y, then z
        if sigma[axis] <= 0:
            continue
        n = out.shape[axis]
        if n < 4:
            raise RegNetError(f"Recursive Gaussian smoothing needs at least 4 voxels along every smoothed axis; "
                              f"axis {'zyx'[axis]} has {n} (array shape {out.shape}).")
        before = int(np.prod(out.shape[:axis]))
        after = int(np.prod(out.shape[axis + 1:]))
        # lines along the axis as (A, L, N, B): x lines of a (z, y, x) array are L = z*y rows of B = 1
        shape = (1, before, n, after) if after <= 3 else (before, 1, n, after)
        _compiled.recursive_gaussian(out.reshape(shape), *_gaussian_coefficients(float(sigma[axis])))
    return out


def bspline_dense(coeffs: np.ndarray, taps) -> np.ndarray:
    """Dense cubic B-spline field (z, y, x, C) float32 from coefficients (C, kz, ky, kx) and, per axis
    (x, y, z), the first tap index (n,) and four weights (n, 4) of every voxel: one pass, no
    float64 (z, y, x) temporaries."""
    _compiled = _kernels()
    (fx, wx), (fy, wy), (fz, wz) = taps
    out = np.empty((len(fz), len(fy), len(fx), coeffs.shape[0]), np.float32)
    _compiled.bspline_dense(np.ascontiguousarray(coeffs, dtype=np.float64),
                            *(np.ascontiguousarray(a, dtype=np.int64 if a.ndim == 1 else np.float64)
                              for pair in taps for a in pair), out)
    return out


def canny_edges(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """3D Canny edges (bool) of a (z, y, x) array, as SimpleITK's ``CannyEdgeDetection`` with zero
    variance (its default): second derivative along the gradient, its zero crossings where it does
    not increase along the gradient weighted by the gradient magnitude, then hysteresis: the
    26-connected components of strength > ``lower`` that hold a voxel > ``upper`` (ITK follows the
    same 26-neighbourhood from every seed). Same float32 arithmetic as ITK; a third of its CPU."""
    from scipy import ndimage

    _compiled = _kernels()
    g = np.ascontiguousarray(image, dtype=np.float32)
    d2 = np.empty_like(g)
    _compiled.canny_second_derivative(g, d2)
    strength = np.empty_like(g)
    _compiled.canny_edge_strength(g, d2, strength)
    del d2
    weak = strength > np.float32(lower)
    seeds = strength > np.float32(upper)
    labels, n = ndimage.label(weak, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[seeds])] = True
    keep[0] = False
    return keep[labels] | seeds


def field_statistics(u: np.ndarray, jac: np.ndarray, torso: np.ndarray) -> dict:
    """A pair's done.json figures in one pass over the field and its Jacobian (no |u| array): max |u_k|,
    max |u|, mean |u| in the torso, Jacobian range, folded fraction (J <= 0) in the torso."""
    _compiled = _kernels()
    planes = np.empty((jac.shape[0], 7))
    _compiled.field_statistics(_float32_field(u), np.ascontiguousarray(jac, dtype=np.float32),
                               np.ascontiguousarray(torso, dtype=bool), planes)
    count = planes[:, 3].sum()
    return {"max_abs_component_mm": float(planes[:, 0].max()), "max_magnitude_mm": float(planes[:, 1].max()),
            "mean_magnitude_in_torso_mm": float(planes[:, 2].sum() / count) if count else 0.0,
            "jacobian_min": float(planes[:, 4].min()), "jacobian_max": float(planes[:, 5].max()),
            "folded_fraction_in_torso": float(planes[:, 6].sum() / count) if count else 0.0}
