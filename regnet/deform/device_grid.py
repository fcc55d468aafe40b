"""Small NumPy tables for the device generator: grid geometry, B-spline taps, random coefficients.

Nothing here touches a full volume: these are per-axis index/weight tables and coefficient grids
of a few thousand numbers, made on the CPU and handed to :mod:`regnet.deform.device_field`.
No SimpleITK import, so the device path runs on a machine that has only NumPy, SciPy and Keras.

Geometries are :class:`regnet.geometry.Geometry` (SimpleITK-free at import). The coefficient draws
are :mod:`regnet.deform.bspline`'s own, so a stable-hash generator gives the NumPy job's coefficients.
"""
from __future__ import annotations

import numpy as np

from regnet.deform.bspline import basis_taps as bspline_taps
from regnet.deform.bspline import normalize_coefficients, random_coefficients, transform_domain

__all__ = ["basis_taps", "cubic_prefilter_taps", "draw_bspline_coefficients", "gaussian_taps", "index_per_mm",
           "mirror_index", "transform_domain"]


def index_per_mm(geometry) -> np.ndarray:
    """A[j, k] = d index_j / d p_k (index axes x, y, z): a displacement u (mm, x y z) moves the
    continuous index by ``A @ u``; also maps index derivatives to physical ones."""
    return np.diag(1.0 / np.asarray(geometry.spacing, float)) @ geometry.matrix.T


def basis_taps(n_voxels: int, n_cells: int, domain_origin: float, domain_length: float):
    """:func:`regnet.deform.bspline.basis_taps` as device tables (int32 indices, float32 weights)."""
    first, weights = bspline_taps(n_voxels, n_cells, domain_origin, domain_length)
    return first.astype(np.int32), weights.astype(np.float32)


def draw_bspline_coefficients(geometry, grid_spacing_mm, max_deform: float, border: int, sigma: float,
                              rng: np.random.Generator, mode: str = "single") -> np.ndarray:
    """Random, normalised coefficient grid (float32) of the section 1.3 generator."""
    coeffs = random_coefficients(geometry, grid_spacing_mm, max_deform, border, sigma, rng)
    return normalize_coefficients(coeffs, max_deform, mode).astype(np.float32)


# ---------------------------------------------------------------- 1D filter tables
def mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """ITK's mirror boundary (whole-sample symmetric, period 2n - 2) for any integer index."""
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's ``gaussian_filter`` kernel: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (w / w.sum()).astype(np.float32)


#: Pole of the cubic B-spline interpolation prefilter.
CUBIC_POLE = np.sqrt(3.0) - 2.0


def cubic_prefilter_taps(radius: int = 16) -> np.ndarray:
    """Impulse response of the inverse of [1, 4, 1] / 6 on the infinite line, sqrt(3) z^|k|
    (z = sqrt(3) - 2), truncated where |z|^k < 1e-9: with mirror-extended input this is the
    B-spline decomposition SimpleITK computes recursively."""
    k = np.arange(-radius, radius + 1)
    return (-6.0 * CUBIC_POLE / (1.0 - CUBIC_POLE ** 2) * CUBIC_POLE ** np.abs(k)).astype(np.float32)
