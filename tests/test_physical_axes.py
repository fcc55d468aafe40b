"""Issue 15 item 4: the random B-spline field is defined along PHYSICAL axes.

The same physical image stored with its array axes permuted and flipped (and the direction
cosines saying so) must get the same physical field from the same seed, with anisotropic grid
spacings (x, y, z mm) applied along physical x, y, z."""
import numpy as np
import SimpleITK as sitk

from regnet.deform.bspline import grid_cells, random_bspline_field
from regnet.geometry import Geometry
from regnet.io import dvf_to_image

GRID_MM = (24.0, 40.0, 64.0)  # physical x, y, z: three different spacings


def _permuted_copy(g: Geometry):
    """The grid of ``g`` (identity direction) stored as index axes (x', y', z') = (-z, x, -y):
    same voxel centres, array axes permuted and two of them flipped."""
    nx, ny, nz = g.size
    sx, sy, sz = g.spacing
    direction = np.zeros((3, 3))
    direction[2, 0] = -1.0   # index x' runs along physical -z
    direction[0, 1] = 1.0    # index y' along physical +x
    direction[1, 2] = -1.0   # index z' along physical -y
    corner = g.index_to_physical([0, ny - 1, nz - 1])  # the voxel where x'=y'=z'=0 (x=0, y=max, z=max)
    return Geometry((nz, nx, ny), (sz, sx, sy), tuple(corner), tuple(direction.ravel()))


def _image(g: Geometry) -> sitk.Image:
    return g.apply_to(sitk.Image(list(g.size), sitk.sitkFloat32))


def test_bspline_field_is_the_same_physical_field_for_permuted_and_flipped_axes():
    g = Geometry((40, 30, 22), (2.0, 3.0, 4.0), (-40.0, 10.0, 5.0))
    h = _permuted_copy(g)
    # the copy holds the very same voxel centres
    ia = np.array([[3, 7, 11]])
    p = g.index_to_physical(ia)
    np.testing.assert_allclose(h.index_to_physical(np.round(h.physical_to_index(p))), p, atol=1e-9)
    assert grid_cells(g, GRID_MM) == (3, 2, 1)        # round(80/24), round(90/40), round(88/64)
    assert grid_cells(h, GRID_MM) == (1, 3, 2)        # the same cells, listed along the copy's index axes

    # smoothing sigmas per array axis: (z, y, x) for g, (z'=-y, y'=x, x'=-z) for the copy
    u = random_bspline_field(g, GRID_MM, 5.0, 0, (0.5, 0.7, 0.9), np.random.default_rng(7), "single")
    v = random_bspline_field(h, GRID_MM, 5.0, 0, (0.7, 0.9, 0.5), np.random.default_rng(7), "single")
    assert np.abs(u).max() > 1.0
    # SimpleITK resamples the copy's DVF (physical components) onto the first grid; voxel centres
    # coincide, so linear interpolation is exact up to float32 rounding.
    resampled = sitk.Resample(dvf_to_image(v, h), _image(g), sitk.Transform(), sitk.sitkLinear, np.nan,
                              sitk.sitkVectorFloat32)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(resampled), u, atol=1e-4)


def test_grid_spacing_applies_along_physical_axes_not_index_axes():
    """A fine grid along physical z only: the field of the permuted copy varies fastest along
    the index axis that runs along z (its x'), not along its own index z'."""
    g = Geometry((40, 30, 40), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    h = _permuted_copy(g)
    v = random_bspline_field(h, (400.0, 400.0, 10.0), 5.0, 0, 0.0, np.random.default_rng(1), "single")
    rough = [float(np.abs(np.diff(v[..., 0], axis=a)).mean()) for a in (2, 1, 0)]  # along x', y', z'
    assert rough[0] > 5 * max(rough[1], rough[2])
