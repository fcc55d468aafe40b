"""Compiled kernels (regnet/deform/kernels.py) against SimpleITK and NumPy, the independent implementations."""
import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform import kernels
from regnet.deform.field import warp, warp_masks
from regnet.geometry import Geometry
from regnet.io import dvf_to_image, read_image, resample_to_geometry
from tests.conftest import shared_file


def sitk_cubic_warp(image: sitk.Image, field: sitk.Image, default: float) -> np.ndarray:
    """SimpleITK's cubic WarpImageFilter in double precision (the reference)."""
    warper = sitk.WarpImageFilter()
    warper.SetInterpolator(sitk.sitkBSpline)
    warper.SetOutputParameteresFromImage(field)
    warper.SetEdgePaddingValue(float(default))
    return sitk.GetArrayFromImage(warper.Execute(sitk.Cast(image, sitk.sitkFloat64),
                                                 sitk.Cast(field, sitk.sitkVectorFloat64)))


def random_field(geometry: Geometry, amplitude: float, seed: int) -> sitk.Image:
    u = np.random.default_rng(seed).uniform(-amplitude, amplitude, geometry.shape + (3,)).astype(np.float32)
    return dvf_to_image(u, geometry)


def test_prefilter_equals_simpleitk_bspline_decomposition(rotated_image):
    array = sitk.GetArrayFromImage(rotated_image) * 500
    ours = kernels.bspline_coefficients_array(array)
    image = sitk.GetImageFromArray(array.astype(np.float64))
    reference = sitk.GetArrayFromImage(sitk.BSplineDecomposition(image, 3))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-3)  # HU-scale values, float32 storage


def test_prefilter_of_a_long_axis_uses_itks_truncated_horizon():
    """Axes longer than ITK's horizon (18 samples) take the truncated causal initialisation."""
    array = np.random.default_rng(3).normal(0, 400, (3, 40, 25)).astype(np.float32)
    reference = sitk.GetArrayFromImage(sitk.BSplineDecomposition(sitk.GetImageFromArray(array.astype(np.float64)), 3))
    np.testing.assert_allclose(kernels.bspline_coefficients_array(array), reference, atol=2e-3)


def test_cubic_warp_equals_simpleitk_on_a_rotated_anisotropic_grid(rotated_image):
    """Random field of +-3 mm: many points leave the image (default value) or fall in the mirror band."""
    image = rotated_image * 400.0
    g = Geometry.of(image)
    field = random_field(g, 3.0, seed=1)
    reference = sitk_cubic_warp(image, field, -1000)
    ours = sitk.GetArrayFromImage(warp(image, field, "bspline", -1000))
    outside = reference == -1000
    assert 0 < outside.sum() < outside.size  # both branches tested
    np.testing.assert_array_equal(ours == -1000, outside)
    assert np.abs(ours - reference).max() < 0.5  # the bar; in practice ~1e-3
    assert np.abs(ours - reference).max() < 0.01


def test_cubic_warp_of_an_image_on_another_grid():
    """Moving image on its own (coarser, shifted) grid: the warp goes through physical space."""
    rng = np.random.default_rng(5)
    moving = sitk.GetImageFromArray(rng.normal(0, 300, (14, 16, 18)).astype(np.float32))
    moving.SetSpacing((1.5, 1.2, 2.0))
    moving.SetOrigin((-3.0, 1.0, 2.0))
    fixed = Geometry((20, 18, 16), (1.0, 1.0, 1.5), (-1.0, 2.5, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    field = random_field(fixed, 1.5, seed=6)
    reference = sitk_cubic_warp(moving, field, -2048)
    ours = sitk.GetArrayFromImage(warp(moving, field, "bspline", -2048))
    assert np.abs(ours - reference).max() < 0.01


def test_integer_image_is_rounded_not_truncated(rotated_image):
    image = sitk.Cast(sitk.Round(rotated_image * 300.0), sitk.sitkInt16)
    field = random_field(Geometry.of(image), 1.0, seed=2)
    ours = warp(image, field, "bspline", -1024)
    assert ours.GetPixelID() == sitk.sitkInt16
    expected = np.round(sitk_cubic_warp(image, field, -1024))
    different = np.abs(sitk.GetArrayViewFromImage(ours) - expected)
    assert different.max() <= 1 and (different > 0).mean() < 1e-3  # only ties at .5 +- 1e-3 may differ


def test_nearest_mask_warp_equals_two_simpleitk_nearest_warps(rotated_image):
    g = Geometry.of(rotated_image)
    rng = np.random.default_rng(7)
    torso = sitk.GetImageFromArray((rng.random(g.shape) > 0.3).astype(np.uint8))
    lung = sitk.GetImageFromArray((rng.random(g.shape) > 0.6).astype(np.uint8))
    for mask in (torso, lung):
        mask.CopyInformation(rotated_image)
    field = random_field(g, 2.0, seed=8)
    ours = warp_masks(torso, lung, field)
    for mine, mask in zip(ours, (torso, lung)):
        reference = sitk.Warp(mask, field, sitk.sitkNearestNeighbor, outputSize=g.size, outputOrigin=g.origin,
                              outputSpacing=g.spacing, outputDirection=g.direction)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mine), sitk.GetArrayViewFromImage(reference))
        assert mine.GetPixelID() == sitk.sitkUInt8 and Geometry.of(mine).close_to(g)


def test_jacobian_kernel_equals_numpy_gradient_on_a_rotated_anisotropic_grid(rotated_image):
    g = Geometry.of(rotated_image)
    u = np.random.default_rng(4).normal(0, 0.5, g.shape + (3,)).astype(np.float32)
    index_per_mm = np.diag(1.0 / np.asarray(g.spacing)) @ g.matrix.T
    by_index = np.stack([np.stack(np.gradient(u[..., c].astype(np.float64), axis=(2, 1, 0)), -1)
                         for c in range(3)], -2)                      # [..., c, j] = d u_c / d index_j
    grad = by_index @ index_per_mm + np.eye(3)
    np.testing.assert_allclose(kernels.jacobian_determinant(u, g), np.linalg.det(grad), atol=1e-5)


def test_cubic_warp_of_a_real_ct_crop_equals_simpleitk():
    ct = read_image(shared_file("ct", "popi_phase00_ct.nii.gz"))
    g = Geometry((48, 40, 32), (1.0, 1.0, 1.0), (-60.0, -20.0, -80.0), Geometry.of(ct).direction)
    image = resample_to_geometry(ct, g, "linear", -1024)
    u = np.zeros(g.shape + (3,), np.float32)
    zz, yy, xx = np.meshgrid(*(np.linspace(0, np.pi, n) for n in g.shape), indexing="ij")
    u[..., 0], u[..., 1], u[..., 2] = 6 * np.sin(zz) * np.cos(yy), -4 * np.sin(xx), 5 * np.cos(zz + xx)
    field = dvf_to_image(u, g)
    reference = sitk_cubic_warp(image, field, -2048)
    ours = sitk.GetArrayFromImage(warp(sitk.Cast(image, sitk.sitkFloat32), field, "bspline", -2048))
    assert np.abs(ours - reference).max() < 0.05  # HU


@pytest.mark.parametrize("shape", [(1, 6, 7), (3, 6, 7)])
def test_thin_images_do_not_read_outside_the_buffer(shape):
    """Axes of one or three voxels: ITK copies / mirrors; the kernel must stay inside the array.
    (Two voxels are left out: there ITK's own cubic warp returns NaN at some points, seen with
    SimpleITK 2.5, so it is no reference; the kernel mirrors and clamps.)"""
    array = np.random.default_rng(9).normal(0, 100, shape).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    field = random_field(Geometry.of(image), 0.4, seed=10)
    reference = sitk_cubic_warp(image, field, -1)
    ours = sitk.GetArrayFromImage(warp(image, field, "bspline", -1))
    assert np.abs(ours - reference).max() < 0.01


def test_two_voxel_axis_gives_finite_values_between_the_data():
    array = np.random.default_rng(9).normal(0, 100, (2, 6, 7)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    field = random_field(Geometry.of(image), 0.45, seed=11)
    ours = sitk.GetArrayFromImage(warp(image, field, "bspline", -1))
    assert np.isfinite(ours).all()


def test_recursive_gaussian_equals_simpleitk_scalar_and_vector():
    rng = np.random.default_rng(12)
    scalar = rng.normal(0, 5, (20, 26, 31)).astype(np.float32)
    scalar[5:15, 8:20, 10:25] += 30  # an edge, as a masked field has
    for sigma in ((2.0, 3.0, 1.5), (8.0, 8.0, 8.0), (0.7, 0.7, 0.7)):  # per array axis (z, y, x)
        reference = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(scalar), list(sigma[::-1]))
        np.testing.assert_allclose(kernels.gaussian_smooth(scalar, sigma), sitk.GetArrayFromImage(reference),
                                   atol=1e-5)
    vector = rng.normal(0, 5, (12, 14, 16, 3)).astype(np.float32)
    reference = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(vector, isVector=True), [4.0, 5.0, 6.0])
    np.testing.assert_allclose(kernels.gaussian_smooth(vector, (6.0, 5.0, 4.0)), sitk.GetArrayFromImage(reference),
                               atol=1e-5)


def test_recursive_gaussian_refuses_an_axis_shorter_than_four_voxels():
    with pytest.raises(RegNetError, match="at least 4 voxels along every smoothed axis; axis z has 3"):
        kernels.gaussian_smooth(np.zeros((3, 8, 8), np.float32), 1.0)


def test_dense_bspline_field_equals_the_product_of_the_basis_matrices():
    """The compiled evaluation against the dense (N, n+3) basis matrices multiplied out (float64)."""
    from regnet.deform.bspline import _basis_matrix, dense_field, transform_domain

    g = Geometry((37, 29, 23), (1.0, 1.2, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    coeffs = np.random.default_rng(13).uniform(-20, 20, (3, 5 + 3, 6 + 3, 7 + 3))  # (3, nz+3, ny+3, nx+3)
    origin, length = transform_domain(g.size)
    wx, wy, wz = (_basis_matrix(g.size[k], n, origin[k], length[k]) for k, n in enumerate((7, 6, 5)))
    reference = np.einsum("zk,yj,xi,ckji->zyxc", wz, wy, wx, coeffs)
    ours = dense_field(coeffs, g)
    assert ours.dtype == np.float32 and ours.shape == g.shape + (3,)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-6)
    assert (ours == reference.astype(np.float32)).mean() > 0.99  # float32 rounding of the same sums


def sitk_canny(array: np.ndarray, lower: float, upper: float) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.CannyEdgeDetection(sitk.GetImageFromArray(array), lower, upper)) > 0


def test_canny_edges_equal_simpleitk_on_blobs_and_noise():
    rng = np.random.default_rng(14)
    zz, yy, xx = np.mgrid[:30, :34, :38]
    array = np.where((zz - 15) ** 2 + (yy - 17) ** 2 / 2 + (xx - 19) ** 2 / 3 < 80, 300.0, -700.0)
    array = (array + rng.normal(0, 40, array.shape)).astype(np.float32)
    ours = kernels.canny_edges(array, 50.0, 100.0)
    reference = sitk_canny(array, 50.0, 100.0)
    assert 100 < reference.sum() < reference.size / 2  # a real edge set, not empty or everything
    np.testing.assert_array_equal(ours, reference)
    # hysteresis matters: a high upper threshold keeps fewer edges, still the same as SimpleITK
    np.testing.assert_array_equal(kernels.canny_edges(array, 50.0, 3000.0), sitk_canny(array, 50.0, 3000.0))
    assert kernels.canny_edges(array, 50.0, 3000.0).sum() < ours.sum()


def test_canny_edges_equal_simpleitk_in_real_lung():
    ct = read_image(shared_file("ct", "popi_phase00_ct.nii.gz"))
    g = Geometry((64, 56, 40), (1.0, 1.0, 1.0), (-110.0, -30.0, -90.0), Geometry.of(ct).direction)
    array = sitk.GetArrayFromImage(resample_to_geometry(ct, g, "linear", -1024)).astype(np.float32)
    reference = sitk_canny(array, 50.0, 100.0)
    assert reference.sum() > 1000  # vessels and parenchyma
    np.testing.assert_array_equal(kernels.canny_edges(array, 50.0, 100.0), reference)


def test_a_zero_field_on_the_image_grid_gives_the_image_back_as_simpleitk_does(rotated_image):
    image = sitk.Cast(sitk.Round(rotated_image * 300.0), sitk.sitkInt16)
    g = Geometry.of(image)
    field = dvf_to_image(np.zeros(g.shape + (3,), np.float32), g)
    ours = warp(image, field, "bspline", -1024)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), np.round(sitk_cubic_warp(image, field, -1024)))
    assert ours.GetPixelID() == sitk.sitkInt16 and Geometry.of(ours) == g
    lung = sitk.Cast(image > 0, sitk.sitkUInt8)
    torso, moved_lung = warp_masks(image > -200, lung, field)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(moved_lung), sitk.GetArrayViewFromImage(lung))


def test_field_statistics_equal_numpy():
    rng = np.random.default_rng(11)
    u = rng.normal(scale=4.0, size=(9, 12, 14, 3)).astype(np.float32)
    jac = rng.uniform(-0.2, 1.8, size=u.shape[:3]).astype(np.float32)
    torso = rng.random(u.shape[:3]) < 0.5
    norm = np.sqrt((u.astype(np.float64) ** 2).sum(-1))
    stats = kernels.field_statistics(u, jac, torso)
    assert stats["max_abs_component_mm"] == np.abs(u).max()
    assert stats["max_magnitude_mm"] == pytest.approx(norm.max(), rel=1e-6)
    assert stats["mean_magnitude_in_torso_mm"] == pytest.approx(norm[torso].mean(), rel=1e-6)
    assert (stats["jacobian_min"], stats["jacobian_max"]) == (jac.min(), jac.max())
    assert stats["folded_fraction_in_torso"] == (jac[torso] <= 0).mean() > 0
    empty = kernels.field_statistics(u, jac, np.zeros_like(torso))
    assert empty["mean_magnitude_in_torso_mm"] == empty["folded_fraction_in_torso"] == 0.0
