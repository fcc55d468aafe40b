"""Small NumPy tables for the device generator: grid geometry, B-spline taps, random coefficients.

Nothing here touches a full volume: these are per-axis index/weight tables and coefficient grids
of a few thousand numbers, made on the CPU and handed to :mod:`regnet.deform.device_field`.
No SimpleITK import, so the device path runs on a machine that has only NumPy, SciPy and Keras.

Geometry is duck-typed: anything with ``size`` (x, y, z), ``spacing``, ``origin`` and a
9-tuple ``direction`` (:class:`regnet.geometry.Geometry` or :class:`Grid` below).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from regnet import RegNetError


@dataclass(frozen=True)
class Grid:
    """The geometry of a volume without SimpleITK (e.g. a .npy volume and its spacing)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(reversed(self.size))


def shape_of(geometry) -> tuple[int, int, int]:
    """(z, y, x) array shape of a grid."""
    return tuple(int(n) for n in reversed(geometry.size))


def direction_matrix(geometry) -> np.ndarray:
    return np.asarray(geometry.direction, dtype=float).reshape(3, 3)


def index_per_mm(geometry) -> np.ndarray:
    """A[j, k] = d index_j / d p_k (index axes x, y, z): a displacement u (mm, x y z) moves the
    continuous index by ``A @ u``; also maps index derivatives to physical ones."""
    return np.diag(1.0 / np.asarray(geometry.spacing, float)) @ direction_matrix(geometry).T


def world_coordinate(geometry, axis: int) -> np.ndarray:
    """Physical coordinate ``axis`` (0=x, 1=y, 2=z) of every voxel, broadcastable to (z, y, x)
    (only the index axes it depends on are materialised)."""
    d, s, o = direction_matrix(geometry), geometry.spacing, geometry.origin
    nx, ny, nz = (int(n) for n in geometry.size)
    shapes = ((1, 1, nx), (1, ny, 1), (nz, 1, 1))
    out = np.full((1, 1, 1), o[axis], np.float32)
    for k, (n, shape) in enumerate(zip((nx, ny, nz), shapes)):
        if d[axis, k] != 0:
            out = out + (np.float32(d[axis, k] * s[k]) * np.arange(n, dtype=np.float32)).reshape(shape)
    return out


# ---------------------------------------------------------------- B-spline grid (regnet_spec.md 1.3)
def transform_domain(size) -> tuple[np.ndarray, np.ndarray]:
    """Origin and length (index units, x y z) of the domain SimpleITK's ``BSplineTransformInitializer``
    sets on a spacing-1, origin-0 image: the voxel box [-0.5, N - 0.5] padded by 1/8 voxel per side
    (checked against SimpleITK in the tests)."""
    size = np.asarray([int(n) for n in size], float)
    return np.full(3, -0.625), size + 0.25


def grid_cells(geometry, grid_spacing_mm) -> tuple[int, int, int]:
    """Cells per axis (x, y, z): round(physical extent / grid spacing), at least 1."""
    extent = np.asarray(geometry.size, float) * np.asarray(geometry.spacing, float)
    return tuple(max(1, round(float(e) / g)) for e, g in zip(extent, grid_spacing_mm))


def basis_taps(n_voxels: int, n_cells: int, domain_origin: float, domain_length: float):
    """First coefficient index (n_voxels,) and its four cubic B-spline weights (n_voxels, 4) at
    every voxel centre: the banded form of ``bspline._basis_matrix`` (4 non-zeros per row)."""
    cell = domain_length / n_cells
    t = (np.arange(n_voxels) - domain_origin) / cell
    first = np.clip(np.floor(t).astype(int), 0, n_cells - 1)
    f = t - first
    weights = np.stack([(1 - f) ** 3 / 6, (3 * f ** 3 - 6 * f ** 2 + 4) / 6,
                        (-3 * f ** 3 + 3 * f ** 2 + 3 * f + 1) / 6, f ** 3 / 6], axis=1)
    return first.astype(np.int32), weights.astype(np.float32)


def _zero_border(array: np.ndarray, width: int) -> None:
    if width <= 0:
        return
    for axis in range(array.ndim):
        sl = [slice(None)] * array.ndim
        sl[axis] = slice(0, width)
        array[tuple(sl)] = 0
        sl[axis] = slice(-width, None)
        array[tuple(sl)] = 0


def random_coefficients(geometry, grid_spacing_mm, max_deform: float, border: int, sigma: float,
                        rng: np.random.Generator) -> np.ndarray:
    """Coefficients (3, nz+3, ny+3, nx+3), components (x, y, z): U(-4M, 4M), border zeroed,
    Gaussian-smoothed with ``sigma`` (coefficient units), border zeroed again. The same draws,
    in the same order, as :func:`regnet.deform.bspline.random_coefficients` (tested equal), so
    a stable-hash generator gives the NumPy job's coefficients."""
    nx, ny, nz = grid_cells(geometry, grid_spacing_mm)
    if border > 0 and min(nx, ny, nz) + 3 <= 2 * (border + 1):
        warnings.warn(f"B-spline grid of {nx}x{ny}x{nz} cells (spacing {list(grid_spacing_mm)} mm on a "
                      f"{tuple(geometry.size)} grid) is too small for border {border}: the field is zero. "
                      "Use a larger field of view or a smaller grid spacing.", stacklevel=2)
    coeffs = rng.uniform(-4 * max_deform, 4 * max_deform, size=(3, nz + 3, ny + 3, nx + 3))
    for c in range(3):
        if border > 0:
            _zero_border(coeffs[c], border + 1)
        if sigma > 0:
            coeffs[c] = ndimage.gaussian_filter(coeffs[c], sigma)
        _zero_border(coeffs[c], border)
    return coeffs


def normalize_coefficients(coeffs: np.ndarray, max_deform: float, mode: str) -> np.ndarray:
    """RegNet's ``normalize_dvf`` on the grid: 'single' caps max|c| at 1.7M; 'mixed' scales into [M, 2M]."""
    peak = float(np.abs(coeffs).max())
    if peak == 0:
        return coeffs
    if mode == "single":
        return coeffs * (1.7 * max_deform / peak) if peak > 1.7 * max_deform else coeffs
    if mode == "mixed":
        if peak > 2 * max_deform:
            return coeffs * (2 * max_deform / peak)
        if peak < max_deform:
            return coeffs * (max_deform / peak)
        return coeffs
    raise RegNetError(f"Unknown coefficient normalisation {mode!r}; choose 'single' or 'mixed'.")


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
