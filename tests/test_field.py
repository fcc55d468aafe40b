"""DVF maths against analytic fields and SimpleITK."""
import numpy as np
import pytest
import SimpleITK as sitk

from regnet.deform.bspline import dense_field, grid_cells, random_coefficients
from regnet.deform.field import compose, invert, jacobian_determinant, magnitude, warp
from regnet.geometry import Geometry
from regnet.io import image_from_array


def physical_points(g: Geometry) -> np.ndarray:
    zyx = np.indices(g.shape, dtype=float)
    return g.index_to_physical(np.stack([zyx[2], zyx[1], zyx[0]], -1))


def test_constant_shift_moves_a_plane_the_right_way():
    g = Geometry((40, 12, 10), (2.0, 1.0, 1.0), (-30.0, 0.0, 0.0))
    array = np.zeros(g.shape, np.float32)
    array[:, :, 25] = 100.0                                  # plane at x = -30 + 2*25 = 20 mm
    u = np.zeros(g.shape + (3,), np.float32)
    u[..., 0] = 6.0                                          # +6 mm in x
    out = sitk.GetArrayFromImage(warp(image_from_array(array, g), u, "linear", reference=g))
    assert np.argmax(out[5, 5]) == 22                        # x = 14 mm: the plane moved by -6 mm


def test_warp_matches_simpleitk_displacement_field_transform(rotated_image):
    g = Geometry.of(rotated_image)
    rng = np.random.default_rng(2)
    u = dense_field(random_coefficients(g, (10, 10, 10), 2.0, 0, 0.0, rng), g)
    ours = sitk.GetArrayFromImage(warp(rotated_image, u, "bspline", reference=g))
    field = sitk.Cast(image_from_array(u.astype(np.float64), g), sitk.sitkVectorFloat64)
    ref = sitk.Resample(rotated_image, rotated_image, sitk.DisplacementFieldTransform(field), sitk.sitkBSpline, 0.0)
    np.testing.assert_allclose(ours, sitk.GetArrayFromImage(ref), atol=1e-4)


def test_jacobian_of_analytic_linear_fields_on_a_rotated_anisotropic_grid(rotated_image):
    g = Geometry.of(rotated_image)
    p = physical_points(g)
    u = np.zeros(g.shape + (3,))
    u[..., 0] = 0.3 * p[..., 0]                              # u_x = a x  =>  J = 1 + a
    np.testing.assert_allclose(jacobian_determinant(u, g), 1.3, atol=1e-4)
    a = np.array([[0.1, -0.2, 0.05], [0.3, 0.0, 0.1], [-0.1, 0.2, -0.15]])
    u = p @ a.T                                              # u = A p  =>  J = det(I + A)
    np.testing.assert_allclose(jacobian_determinant(u, g), np.linalg.det(np.eye(3) + a), atol=1e-4)


def test_jacobian_matches_simpleitk_on_a_random_smooth_field():
    g = Geometry((30, 26, 22), (1.5, 1.0, 2.0), (3.0, -4.0, 5.0))
    u = dense_field(random_coefficients(g, (15, 15, 15), 3.0, 0, 0.0, np.random.default_rng(5)), g)
    ref = sitk.DisplacementFieldJacobianDeterminant(image_from_array(u.astype(np.float64), g), True)
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(jacobian_determinant(u, g)[inner], sitk.GetArrayFromImage(ref)[inner], atol=1e-4)


def test_composition_of_analytic_fields():
    g = Geometry((24, 20, 18), (1.0, 1.0, 1.0), (-10.0, -10.0, -9.0))
    p = physical_points(g)
    a = np.array([[0.02, 0.01, 0.0], [0.0, -0.03, 0.01], [0.01, 0.0, 0.02]])
    u = (p @ a.T).astype(np.float32)                         # u(x) = A x
    v = np.broadcast_to(np.array([1.5, -2.0, 0.5], np.float32), g.shape + (3,)).copy()
    w = compose(u, v, g)                                     # v(x) + u(x + v(x)) = v + A (x + v)
    expected = v + (p + v) @ a.T
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(w[inner], expected[inner], atol=1e-4)
    np.testing.assert_allclose(magnitude(v)[0, 0, 0], np.linalg.norm([1.5, -2.0, 0.5]), rtol=1e-6)


def test_dense_bspline_matches_simpleitk_bspline_transform():
    g = Geometry((37, 29, 23), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    grid = (9.0, 7.0, 11.0)
    coeffs = random_coefficients(g, grid, 4.0, 1, 0.8, np.random.default_rng(9))
    tx = sitk.BSplineTransformInitializer(sitk.Image(list(g.size), sitk.sitkUInt8), list(grid_cells(g, grid)), 3)
    tx.SetParameters(np.concatenate([coeffs[c].ravel() for c in range(3)]).tolist())
    ref = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, list(g.size), (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(dense_field(coeffs, g), sitk.GetArrayFromImage(ref), atol=1e-5)
    assert np.abs(coeffs[:, :1]).max() == 0 and np.abs(coeffs[:, :, :, -1:]).max() == 0   # border zeroed


def test_packed_mask_warp_equals_two_simpleitk_nearest_warps(rotated_image):
    from regnet.deform.field import warp_masks

    g = Geometry.of(rotated_image)
    array = sitk.GetArrayFromImage(rotated_image)
    torso = image_from_array((array > -0.5).astype(np.uint8), g)
    lung = image_from_array((array > 0.7).astype(np.uint8), g)
    u = dense_field(random_coefficients(g, (8, 8, 8), 3.0, 0, 0.0, np.random.default_rng(4)), g)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image_from_array(u.astype(np.float64), g),
                                                          sitk.sitkVectorFloat64))
    moved = warp_masks(torso, lung, u, g)
    for ours, mask in zip(moved, (torso, lung)):
        ref = sitk.Resample(mask, mask, transform, sitk.sitkNearestNeighbor, 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))


def test_a_grid_too_small_for_its_border_warns_that_the_field_is_zero():
    g = Geometry((100, 100, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.warns(UserWarning, match="field is zero"):
        coeffs = random_coefficients(g, (50.0, 50.0, 50.0), 5.0, 1, 0.8, np.random.default_rng(0))
    assert not coeffs.any()


def test_warp_from_precomputed_coefficients_equals_plain_cubic_warp(rotated_image):
    from regnet.deform.field import bspline_coefficients

    g = Geometry.of(rotated_image)
    u = dense_field(random_coefficients(g, (10, 10, 10), 2.0, 0, 0.0, np.random.default_rng(3)), g)
    plain = sitk.GetArrayFromImage(warp(rotated_image, u, "bspline", -5.0, reference=g))
    fast = sitk.GetArrayFromImage(warp(rotated_image, u, "bspline", -5.0, reference=g,
                                       coefficients=bspline_coefficients(rotated_image)))
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_inverse_of_a_translation_is_its_negative_and_composes_to_zero_with_a_smooth_field():
    reference = Geometry(size=(40, 36, 32), spacing=(2.0, 2.0, 2.5), origin=(0, 0, 0), direction=np.eye(3).ravel())
    shift = np.zeros((32, 36, 40, 3), np.float32)
    shift[...] = (1.3, 0.0, -2.0)
    inner = (slice(5, -5),) * 3
    np.testing.assert_allclose(invert(shift, reference)[inner], -shift[inner], atol=1e-5)
    z, y, x = np.indices((32, 36, 40), dtype=float)
    u = np.stack([2 * np.sin(x / 6), 1.5 * np.cos(y / 7), 3 * np.sin(z / 5 + x / 9)], -1).astype(np.float32)
    v = invert(u, reference)
    # v(x) + u(x + v(x)) = 0: mapping through v then u brings every point home
    assert np.abs(compose(u, v, reference)[(slice(4, -4),) * 3]).max() < 1e-3
    assert np.abs(v).max() > 2.5  # not trivially zero
