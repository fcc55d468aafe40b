"""Affine pre-alignment: a real CT moved by a known transform is recovered (SimpleITK framework)."""
import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.affine import affine_register, as_matrix, read_transform, write_transform
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def ct():
    """The 3 mm trunk CT (direction diag(-1,-1,1)) and its computed torso mask."""
    from regnet.io import read_image
    from regnet.masks import compute_masks

    image = sitk.Cast(read_image(shared_file("ct", "totalseg_example_ct_3mm.nii.gz")), sitk.sitkInt16)
    return image, compute_masks(image)["torso"]


def centre(image):
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def surface_points(mask, step=15):
    idx = np.argwhere(sitk.GetArrayFromImage(sitk.BinaryContour(mask)))[::step, ::-1]
    return np.array([mask.TransformIndexToPhysicalPoint([int(i) for i in p]) for p in idx])


def error_mm(found, truth, points):
    a = np.array([found.TransformPoint(tuple(p)) for p in points])
    b = np.array([truth.TransformPoint(tuple(p)) for p in points])
    return np.linalg.norm(a - b, axis=1)


def moved(image, transform, default=-1024.0):
    """moving(p) = image(G(p)) on the same grid, so the registration must find G^-1."""
    return sitk.Resample(image, image, transform, sitk.sitkBSpline, default, image.GetPixelID())


def test_known_affine_is_recovered_with_masks(ct):
    image, torso = ct
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*np.deg2rad([4.0, -3.0, 5.0]))
    g = sitk.AffineTransform(3)
    g.SetMatrix((np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.04, 0.97, 1.02])).ravel().tolist())
    g.SetCenter(centre(image).tolist())
    g.SetTranslation((6.0, -4.0, 5.0))
    moving = moved(image, g)
    moving_mask = sitk.Resample(torso, image, g, sitk.sitkNearestNeighbor, 0)
    found = affine_register(image, moving, torso, moving_mask, "affine")
    assert isinstance(found, sitk.AffineTransform)
    points = surface_points(torso)
    before = error_mm(sitk.Transform(), g.GetInverse(), points)
    err = error_mm(found, g.GetInverse(), points)
    assert before.mean() > 10.0                      # the task is not trivial
    assert err.max() < 1.0, f"max {err.max():.2f} mm, mean {err.mean():.2f} mm at {len(points)} surface points"


def test_rigid_with_another_modality_and_no_masks(ct):
    """The moving image's intensities are remapped non-monotonically (air bright, fat dark, bone
    mid-grey): mutual information still aligns it."""
    image, torso = ct
    g = sitk.Euler3DTransform()
    g.SetCenter(centre(image).tolist())
    g.SetRotation(*np.deg2rad([-3.0, 2.0, 4.0]))
    g.SetTranslation((-5.0, 7.0, 3.0))
    moving = sitk.Cast(moved(image, g), sitk.sitkFloat32)
    remapped = 800.0 * sitk.Cos((moving + 1024.0) / 600.0)
    found = affine_register(image, remapped, None, None, "rigid")
    assert isinstance(found, sitk.Euler3DTransform)
    err = error_mm(found, g.GetInverse(), surface_points(torso))
    assert err.max() < 1.0, f"max {err.max():.2f} mm"


def test_as_matrix_and_transform_files(tmp_path):
    t = sitk.AffineTransform(3)
    m = np.array([[1.02, 0.05, -0.01], [-0.04, 0.98, 0.02], [0.01, 0.03, 1.01]])
    t.SetMatrix(m.ravel().tolist())
    t.SetCenter((10.0, -20.0, 5.0))
    t.SetTranslation((3.0, 1.0, -2.0))
    mat, b = as_matrix(t, (0.0, 0.0, 0.0))
    np.testing.assert_allclose(mat, m, atol=1e-9)
    c = np.array([10.0, -20.0, 5.0])
    np.testing.assert_allclose(b, c + np.array([3.0, 1.0, -2.0]) - m @ c, atol=1e-9)   # ITK: M(p - c) + c + t
    write_transform(t, tmp_path / "affine.tfm")
    back = read_transform(tmp_path / "affine.tfm")
    np.testing.assert_allclose(back.TransformPoint((1.0, 2.0, 3.0)), t.TransformPoint((1.0, 2.0, 3.0)), atol=1e-9)
    domain = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    domain.SetSpacing((40.0, 40.0, 40.0))
    bspline = sitk.BSplineTransformInitializer(domain, [3, 3, 3])
    bspline.SetParameters(np.random.default_rng(0).normal(0, 5, bspline.GetNumberOfParameters()).tolist())
    with pytest.raises(RegNetError, match="BSplineTransform is not affine"):
        as_matrix(bspline, (140.0, 140.0, 140.0))
    with pytest.raises(RegNetError, match="nothere.tfm: no such transform file"):
        read_transform(tmp_path / "nothere.tfm")


def test_bad_affine_requests():
    image = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    with pytest.raises(RegNetError, match="Unknown affine kind 'similarity'"):
        affine_register(image, image, kind="similarity")
    with pytest.raises(RegNetError, match="The moving mask is empty"):
        affine_register(image, image, image == 0, sitk.Image([20, 20, 20], sitk.sitkUInt8))
    with pytest.raises(RegNetError, match="fixed image must be a 3D scalar image"):
        affine_register(sitk.Image([20, 20], sitk.sitkFloat32), image)
