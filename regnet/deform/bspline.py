"""Random cubic B-spline coefficient grids and their dense DVFs (regnet_spec.md section 1.3).

RegNet evaluated the field through SimpleITK's ``BSplineTransform`` and
``TransformToDisplacementField`` (about 39 s for 256x256x200 voxels). A tensor-product cubic
B-spline is separable, so the dense field is three small matrix products per component
(``W_z C W_y^T W_x^T``), the same numbers to ~1e-12 (tested against SimpleITK) in well under
a second. That speed-up is why this is written by hand.

Grid rule (as RegNet): the transform domain is the image's index box (as SimpleITK's
initializer sets it) per axis, split into ``n = round(N * spacing / grid_mm)`` cells, with
``n + 3`` coefficients.

Physical axes: grid spacings are given per PHYSICAL axis (x, y, z mm) and the coefficients are
drawn on a grid whose axes are the physical ones, then laid onto the index axes through the
direction cosines (a permutation and flips). The domain is centred on the voxels, so a flipped
index axis is exactly the coefficient array reversed: the same physical image stored with its
array axes permuted or flipped gets the same physical field from the same seed. An oblique
direction uses the physical axis each index axis runs closest to.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from regnet import RegNetError
from regnet.deform.kernels import bspline_dense
from regnet.geometry import Geometry


def basis_taps(n_voxels: int, n_cells: int, domain_origin: float, domain_length: float):
    """First coefficient index (n_voxels,) and its four cubic B-spline weights (n_voxels, 4), float64,
    at every voxel centre (4 non-zeros per row of the basis matrix)."""
    cell = domain_length / n_cells
    t = (np.arange(n_voxels) - domain_origin) / cell   # position in cells from the domain start
    first = np.clip(np.floor(t).astype(int), 0, n_cells - 1)
    f = t - first
    weights = np.stack([(1 - f) ** 3 / 6, (3 * f ** 3 - 6 * f ** 2 + 4) / 6,
                        (-3 * f ** 3 + 3 * f ** 2 + 3 * f + 1) / 6, f ** 3 / 6], axis=1)
    return first, weights


def _basis_matrix(n_voxels: int, n_cells: int, domain_origin: float, domain_length: float) -> np.ndarray:
    """(n_voxels, n_cells + 3) weights of the cubic B-spline coefficients at each voxel centre."""
    first, weights = basis_taps(n_voxels, n_cells, domain_origin, domain_length)
    matrix = np.zeros((n_voxels, n_cells + 3))
    rows = np.arange(n_voxels)
    for k in range(4):
        matrix[rows, first + k] = weights[:, k]
    return matrix


def transform_domain(size) -> tuple[np.ndarray, np.ndarray]:
    """Origin and length (index units, x y z) of the B-spline domain RegNet used: what SimpleITK's
    ``BSplineTransformInitializer`` sets on a spacing-1, origin-0 image, the voxel box
    [-0.5, N - 0.5] padded by 1/8 voxel per side (closed form, tested against SimpleITK, so the
    device path needs no SimpleITK)."""
    size = np.asarray([int(n) for n in size], float)
    return np.full(3, -0.625), size + 0.25


def physical_axes(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """For each index axis (x, y, z): the physical axis it runs along (closest, 0=x 1=y 2=z) and
    its sign (+1 or -1). A permutation; if an oblique direction makes two index axes share one
    physical axis, the index axes are used as they are."""
    m = geometry.matrix
    world = np.argmax(np.abs(m), axis=0)
    if len(set(world.tolist())) != 3:
        return np.arange(3), np.ones(3)
    return world, np.sign(m[world, np.arange(3)])


def grid_cells(geometry: Geometry, grid_spacing_mm) -> tuple[int, int, int]:
    """Cells per index axis (x, y, z): round(physical extent / grid spacing of the physical axis
    that index axis runs along), at least 1. ``grid_spacing_mm`` is (x, y, z) physical."""
    world, _ = physical_axes(geometry)
    extent = np.asarray(geometry.size) * np.asarray(geometry.spacing)
    grid = np.broadcast_to(np.asarray(grid_spacing_mm, float), (3,))
    return tuple(max(1, int(round(e / grid[w]))) for e, w in zip(extent, world))


def random_coefficients(geometry: Geometry, grid_spacing_mm, max_deform: float, border: int,
                        sigma, rng: np.random.Generator) -> np.ndarray:
    """Coefficients (3, nz+3, ny+3, nx+3) on the index axes, components (x, y, z): U(-4M, 4M),
    border zeroed, Gaussian-smoothed with ``sigma`` (coefficient units; one value or one per
    array axis z, y, x), border zeroed again. Drawn and smoothed on the physical axes, then
    permuted and flipped onto the index axes (module docstring)."""
    nx, ny, nz = grid_cells(geometry, grid_spacing_mm)
    world, sign = physical_axes(geometry)
    cells = np.empty(3, int)
    cells[world] = (nx, ny, nz)                      # cells per physical axis (x, y, z)
    sigma_index = np.broadcast_to(np.asarray(sigma, float), (3,))[::-1]   # per index axis x, y, z
    sigma_physical = np.empty(3)
    sigma_physical[world] = sigma_index
    physical = _draw(cells, max_deform, border, tuple(sigma_physical[::-1]), rng)
    # physical array axes (Z, Y, X) -> index array axes (z, y, x): index axis k is physical axis world[k]
    coeffs = np.transpose(physical, (0,) + tuple(1 + (2 - int(world[2 - a])) for a in range(3)))
    flips = tuple(1 + (2 - k) for k in range(3) if sign[k] < 0)
    return np.ascontiguousarray(np.flip(coeffs, flips) if flips else coeffs)


def _draw(cells, max_deform: float, border: int, sigma, rng: np.random.Generator) -> np.ndarray:
    """The random grid on the physical axes: (3, NZ+3, NY+3, NX+3) for ``cells`` = (NX, NY, NZ)."""
    nx, ny, nz = (int(n) for n in cells)
    if border > 0 and min(nx, ny, nz) + 3 <= 2 * (border + 1):
        warnings.warn(f"B-spline grid of {nx}x{ny}x{nz} cells (along x, y, z) is too small for border "
                      f"{border}: the field is zero. Use a larger field of view or a smaller grid spacing.",
                      stacklevel=3)
    coeffs = rng.uniform(-4 * max_deform, 4 * max_deform, size=(3, nz + 3, ny + 3, nx + 3))
    for c in range(3):
        if border > 0:
            _zero_border(coeffs[c], border + 1)
        if np.max(sigma) > 0:
            coeffs[c] = ndimage.gaussian_filter(coeffs[c], sigma)
        _zero_border(coeffs[c], border)
    return coeffs


def _zero_border(array: np.ndarray, width: int) -> None:
    if width <= 0:
        return
    for axis in range(array.ndim):
        sl = [slice(None)] * array.ndim
        sl[axis] = slice(0, width)
        array[tuple(sl)] = 0
        sl[axis] = slice(-width, None)
        array[tuple(sl)] = 0


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


def dense_field(coeffs: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Evaluate the B-spline at every voxel: (z, y, x, 3) float32, values in mm."""
    nx, ny, nz = (s - 3 for s in coeffs.shape[:0:-1])
    origin, length = transform_domain(geometry.size)
    # compiled: the 4 non-zero taps per row of each basis matrix, one axis at a time, float64 sums
    # (the einsum of the three basis matrices gave the same float32 values; ~1/10 of its CPU and memory)
    return bspline_dense(coeffs, [basis_taps(geometry.size[k], n, origin[k], length[k])
                                  for k, n in enumerate((nx, ny, nz))])


def random_bspline_field(geometry: Geometry, grid_spacing_mm, max_deform: float, border: int,
                         sigma, rng: np.random.Generator, mode: str = "single") -> np.ndarray:
    """The §1.3 generator end to end: random grid -> normalised -> dense DVF (mm)."""
    coeffs = random_coefficients(geometry, grid_spacing_mm, max_deform, border, sigma, rng)
    return dense_field(normalize_coefficients(coeffs, max_deform, mode), geometry)
