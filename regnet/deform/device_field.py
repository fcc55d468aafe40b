"""DVF maths on the accelerator, written with ``keras.ops`` only (TensorFlow here, JAX on a GPU).

Batched counterparts of :mod:`regnet.deform.bspline` and :mod:`regnet.deform.field`, same
conventions: volumes (B, z, y, x), DVFs (B, z, y, x, 3) float32 in mm, components (x, y, z), on
the fixed grid, pulling: ``warped(p) = image(p + u(p))``.

Why the forms chosen:

- the dense B-spline field is three banded up-samplings (4 taps per axis, gathered), not
  matrix products: exact float32 on any device (no TF32 matmul rounding on a GPU) and 4
  multiply-adds per voxel and axis;
- Gaussian smoothing is a separable convolution on a volume padded by a gather (edge
  replicated, SciPy's ``mode="nearest"``; SimpleITK's recursive Gaussian extends the border
  value the same way);
- the cubic warp uses B-spline coefficients from a mirror-padded FIR prefilter (the exact
  recursive decomposition's impulse response, truncated at 1e-9) and 64 gathers per voxel,
  SimpleITK's ``BSplineInterpolateImageFunction`` (mirror boundary) to float32 round-off.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from regnet import RegNetError
from regnet.deform.device_grid import (
    basis_taps,
    cubic_prefilter_taps,
    gaussian_taps,
    index_per_mm,
    mirror_index,
    transform_domain,
)

#: array axis of index axis x, y, z in a (B, z, y, x[, c]) tensor
_ARRAY_AXIS = (3, 2, 1)


def as_float(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


# ---------------------------------------------------------------- B-spline coefficients -> dense field
def dense_field(coefficients, geometry):
    """Evaluate cubic B-spline coefficient grids at every voxel.

    ``coefficients`` (B, 3, nz+3, ny+3, nx+3), components (x, y, z), in mm; returns
    (B, z, y, x, 3) float32 -- :func:`regnet.deform.bspline.dense_field` for a batch.
    """
    c = ops.transpose(as_float(coefficients), (0, 2, 3, 4, 1))  # (B, kz, ky, kx, 3)
    origin, length = transform_domain(geometry.size)
    for index_axis in (2, 1, 0):  # z first: the arrays grow by one axis at a time
        axis = _ARRAY_AXIS[index_axis]
        n_voxels = int(geometry.size[index_axis])
        n_cells = int(c.shape[axis]) - 3
        first, weights = basis_taps(n_voxels, n_cells, origin[index_axis], length[index_axis])
        shape = [1, 1, 1, 1, 1]
        shape[axis] = n_voxels
        out = None
        for k in range(4):
            term = ops.take(c, first + k, axis=axis) * weights[:, k].reshape(shape)
            out = term if out is None else out + term
        c = out
    return c


# ---------------------------------------------------------------- separable filters
def _filter_matrix(n: int, taps: np.ndarray, boundary) -> np.ndarray:
    """(n, n) matrix of a 1D FIR filter with its boundary rule folded in: row i sums
    taps[k] * x[boundary(i + k - r)], so one product is the exact padded convolution."""
    r = len(taps) // 2
    rows = np.repeat(np.arange(n), len(taps))
    cols = boundary((np.arange(n)[:, None] + np.arange(-r, r + 1)[None, :]).ravel(), n)
    matrix = np.zeros((n, n), np.float64)
    np.add.at(matrix, (rows, cols), np.tile(np.asarray(taps, np.float64), n))
    return matrix.astype(np.float32)


def _clamp(index, n):
    return np.clip(index, 0, n - 1)


_EINSUM = {1: "bzyx,wz->bwyx", 2: "bzyx,wy->bzwx", 3: "bzyx,wx->bzyw"}


def _filter_along(x, axis: int, matrix: np.ndarray):
    """Apply an (n, n) filter matrix along ``axis`` (1, 2 or 3) of (N, z, y, x) volumes: a
    matrix product per axis is what accelerators (and BLAS on a CPU) do fastest, several times
    faster here than a one-channel convolution, and exact at the borders."""
    return ops.einsum(_EINSUM[axis], x, ops.convert_to_tensor(matrix))


def _fold_channels(x):
    """(B, z, y, x, C) -> (B*C, z, y, x) and the function that undoes it."""
    _, z, y, w, c = x.shape
    folded = ops.reshape(ops.transpose(x, (0, 4, 1, 2, 3)), (-1, z, y, w))
    return folded, lambda f: ops.transpose(ops.reshape(f, (-1, c, z, y, w)), (0, 2, 3, 4, 1))


def gaussian_smooth(x, sigma_zyx, truncate: float = 4.0):
    """Gaussian smoothing of (B, z, y, x) or (B, z, y, x, C) volumes with per-axis sigmas in
    voxels (a scalar for all three): SciPy's ``gaussian_filter(mode="nearest", truncate=4)``
    per volume and channel. A sigma of 0 leaves that axis alone."""
    x = as_float(x)
    channels = len(x.shape) == 5
    if channels:
        x, unfold = _fold_channels(x)
    sigmas = np.broadcast_to(np.asarray(sigma_zyx, float), (3,))
    for k, sigma in enumerate(sigmas):
        if sigma > 0:
            x = _filter_along(x, k + 1, _filter_matrix(int(x.shape[k + 1]), gaussian_taps(sigma, truncate), _clamp))
    return unfold(x) if channels else x


def bspline_prefilter(images, radius: int = 16):
    """Cubic B-spline interpolation coefficients of (B, z, y, x) images (mirror boundary),
    what ``sitk.BSplineDecomposition(image, 3)`` computes recursively."""
    x = as_float(images)
    taps = cubic_prefilter_taps(radius)
    for axis in (1, 2, 3):
        x = _filter_along(x, axis, _filter_matrix(int(x.shape[axis]), taps, mirror_index))
    return x


# ---------------------------------------------------------------- warps
def _sample_indices(dvf, geometry):
    """Continuous (x, y, z) indices of p + u(p) for every voxel, and the inside-buffer mask
    (ITK: -0.5 <= index < n - 0.5 on every axis)."""
    a = index_per_mm(geometry)
    z, y, x = tuple(geometry.shape)
    grids = (ops.reshape(ops.arange(x, dtype="float32"), (1, 1, 1, x)),
             ops.reshape(ops.arange(y, dtype="float32"), (1, 1, y, 1)),
             ops.reshape(ops.arange(z, dtype="float32"), (1, z, 1, 1)))
    dvf = as_float(dvf)
    q, inside = [], None
    for j, n in enumerate((x, y, z)):
        qj = grids[j]
        for k in range(3):
            if a[j, k] != 0:
                qj = qj + float(a[j, k]) * dvf[..., k]
        qj = qj + ops.zeros_like(dvf[..., 0])  # full shape even for a zero displacement
        q.append(qj)
        ok = ops.logical_and(qj >= -0.5, qj < n - 0.5)
        inside = ok if inside is None else ops.logical_and(inside, ok)
    return q, inside


def _cubic_weights(t):
    """Cubic B-spline weights of the taps floor-1 .. floor+2 (products, not powers: pow is slow on a CPU)."""
    s = 1 - t
    t2 = t * t
    t3 = t2 * t
    return s * s * s / 6, 0.5 * t3 - t2 + 2 / 3, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6


def _linear_weights(t):
    return 1 - t, t


#: interpolation -> (first tap offset from floor(q), weights(t), boundary rule of the indices)
_KERNELS = {"linear": (0, _linear_weights, _clamp), "cubic": (-1, _cubic_weights, mirror_index)}


def _stencil_warp(values, q, shape, interpolation: str):
    """Separable-kernel interpolation of (B, z, y, x) ``values`` at continuous indices q.

    Gathers are what a CPU does slowest (tens of ns each), so each voxel's (y, x) stencil is
    laid out as one row of a table (K*K values) and fetched in one row gather per z tap:
    4 gathers per voxel for cubic instead of 64, 2 for linear instead of 8."""
    offset, weights_of, boundary = _KERNELS[interpolation]
    z, y, x = shape
    floors, weights = [], []
    for qa, n in zip(q, (z, y, x)):
        f = ops.floor(qa)
        weights.append(weights_of(qa - f))
        floors.append(ops.clip(ops.cast(f, "int32"), -1, n - 1))  # outside points are masked later
    k = len(weights[0])
    taps = np.arange(k) + offset
    # table[b, z, p, s, j, i] = values[b, z, boundary(p - 1 + taps[j]), boundary(s - 1 + taps[i])]
    index_x = boundary(np.arange(x + 1)[:, None] - 1 + taps[None, :], x).astype(np.int32)
    index_y = boundary(np.arange(y + 1)[:, None] - 1 + taps[None, :], y).astype(np.int32)
    table = ops.take(values, index_x, axis=3)                       # (B, z, y, x+1, K)
    table = ops.stack([ops.take(table, index_y[:, j], axis=2) for j in range(k)], axis=-2)  # (B, z, y+1, x+1, K, K)
    table = ops.reshape(table, (-1, k * k))
    batch = ops.reshape(ops.arange(values.shape[0], dtype="int32"), (-1, 1, 1, 1))
    fz, fy, fx = floors
    row_in_plane = ops.reshape((fy + 1) * (x + 1) + (fx + 1), (-1,))
    plane_of = ops.reshape(batch * z, (-1, 1, 1, 1)) + ops.zeros_like(fz)
    wy = ops.reshape(ops.stack(weights[1], -1), (-1, k, 1))
    wx = ops.reshape(ops.stack(weights[2], -1), (-1, 1, k))
    out = 0.0
    for j in range(k):
        iz = ops.reshape(plane_of + _index_map(fz + int(taps[j]), z, boundary), (-1,))
        rows = ops.reshape(ops.take(table, iz * ((y + 1) * (x + 1)) + row_in_plane, axis=0), (-1, k, k))
        out = out + ops.reshape(weights[0][j], (-1,)) * ops.sum(ops.sum(rows * wx, axis=-1) * wy[..., 0], axis=-1)
    return ops.reshape(out, tuple(fz.shape))


def _index_map(i, n: int, boundary):
    """The boundary rule of the host tables, on device index tensors."""
    if boundary is _clamp:
        return ops.clip(i, 0, n - 1)
    if n == 1:
        return ops.zeros_like(i)
    period = 2 * n - 2
    m = ops.mod(i, period)
    return ops.where(m >= n, period - m, m)


def warp(images, dvf, geometry, interpolation: str = "linear", default: float = 0.0, coefficients=None):
    """``image(p + u(p))`` for (B, z, y, x) images on the DVF's grid (the synthetic-pair case).

    ``interpolation``: 'linear' (trilinear, neighbours clamped at the border as ITK),
    'cubic' (B-spline, as SimpleITK's sitkBSpline; pass ``coefficients`` from
    :func:`bspline_prefilter` to reuse them) or 'nearest' (ITK rounds half up). Points
    outside the image get ``default``.
    """
    shape = tuple(geometry.shape)
    images = as_float(images)
    if tuple(images.shape[1:]) != shape or tuple(dvf.shape[1:4]) != shape:
        raise RegNetError(f"warp: images {tuple(images.shape)} and DVF {tuple(dvf.shape)} must be on the "
                         f"grid {shape} (z, y, x)")
    (qx, qy, qz), inside = _sample_indices(dvf, geometry)
    z, y, x = shape
    if interpolation == "nearest":
        batch = ops.reshape(ops.arange(images.shape[0], dtype="int32"), (-1, 1, 1, 1))
        iz, iy, ix = (ops.clip(ops.cast(ops.floor(q + 0.5), "int32"), 0, n - 1) for q, n in ((qz, z), (qy, y), (qx, x)))
        index = ops.reshape(((batch * z + iz) * y + iy) * x + ix, (-1,))
        out = ops.reshape(ops.take(ops.reshape(images, (-1,)), index, axis=0), tuple(iz.shape))
    elif interpolation in _KERNELS:
        values = images
        if interpolation == "cubic":
            values = bspline_prefilter(images) if coefficients is None else as_float(coefficients)
        out = _stencil_warp(values, (qz, qy, qx), shape, interpolation)
    else:
        raise RegNetError(f"Unknown interpolation {interpolation!r}; choose 'linear', 'cubic' or 'nearest'.")
    return ops.where(inside, out, ops.cast(default, out.dtype))


# ---------------------------------------------------------------- Jacobian
def _central_difference(x, axis: int):
    """d x / d index along ``axis``: central inside, one-sided at the two ends (np.gradient)."""
    n = int(x.shape[axis])
    if n < 2:
        return ops.zeros_like(x)

    def sl(a, b):
        return x[tuple(slice(a, b) if k == axis else slice(None) for k in range(len(x.shape)))]

    first, last = sl(1, 2) - sl(0, 1), sl(n - 1, n) - sl(n - 2, n - 1)
    if n == 2:
        return ops.concatenate([first, last], axis=axis)
    return ops.concatenate([first, (sl(2, n) - sl(0, n - 2)) * 0.5, last], axis=axis)


def jacobian_determinant(dvf, geometry):
    """det(I + du/dp) per voxel, (B, z, y, x) float32, derivatives in physical units through
    spacing and direction (:func:`regnet.deform.field.jacobian_determinant` for a batch)."""
    dvf = as_float(dvf)
    a = index_per_mm(geometry)  # d index_j / d p_k
    grad = [[None] * 3 for _ in range(3)]
    for c in range(3):
        by_index = [_central_difference(dvf[..., c], _ARRAY_AXIS[j]) for j in range(3)]
        for k in range(3):
            g = None
            for j in range(3):
                if a[j, k] != 0:
                    term = by_index[j] * float(a[j, k])
                    g = term if g is None else g + term
            g = ops.zeros_like(dvf[..., c]) if g is None else g
            grad[c][k] = g + 1.0 if c == k else g
    (a_, b, c_), (d, e, f), (g_, h, i) = grad
    return a_ * (e * i - f * h) - b * (d * i - f * g_) + c_ * (d * h - e * g_)


def max_abs(x, axes=(1, 2, 3, 4)):
    """Per-sample max |x| over ``axes``, shape (B,)."""
    return ops.max(ops.abs(x), axis=axes)


def normalize_max(dvf, limit: float):
    """Scale each sample down so its max |u_k| is at most ``limit`` mm (RegNet's rule)."""
    if not limit > 0:
        return dvf
    peak = max_abs(dvf)
    scale = ops.where(peak > limit, limit / ops.maximum(peak, 1e-30), 1.0)
    return dvf * ops.reshape(scale, (-1, 1, 1, 1, 1))


def backend_name() -> str:
    return keras.backend.backend()
