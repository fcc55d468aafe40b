"""The job's once-per-image step: an image already on the stage grid is kept as it is; integer
results of a real resampling are rounded (not truncated toward zero as ITK's integer Resample does)."""
import numpy as np
import SimpleITK as sitk

from regnet.generate import on_stage_grid, prepare_image
from regnet.geometry import Geometry
from regnet.settings import load_settings
from regnet.store import ImageId, PairStore

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def ct_like(size, spacing, seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = np.round(rng.normal(-300, 400, size[::-1])).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.3, 11.7, -5.25))
    image.SetDirection(DIRECTION)
    return image


def test_an_image_on_the_stage_grid_comes_out_bitwise_unchanged():
    image = ct_like((17, 15, 12), (1.0, 1.0, 1.0))
    out = on_stage_grid(image, 1.0, "bspline", -2048, sitk.sitkInt16)
    assert out.GetPixelID() == sitk.sitkInt16
    assert Geometry.of(out) == Geometry.of(image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(image))


def test_integer_resampling_rounds_instead_of_truncating():
    image = ct_like((13, 11, 9), (1.0, 1.0, 2.0), seed=1)  # 2 mm slices -> 1 mm: a real resampling
    out = on_stage_grid(image, 1.0, "bspline", -2048, sitk.sitkInt16)
    g = Geometry.of(out)
    assert g.size == (13, 11, 17) and g.spacing == (1.0, 1.0, 1.0)
    as_float = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), list(g.size), sitk.Transform(), sitk.sitkBSpline,
                             g.origin, g.spacing, g.direction, -2048.0, sitk.sitkFloat32)
    exact = sitk.GetArrayFromImage(as_float)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), np.round(exact).astype(np.int16))
    # the old route (ITK's Int16 Resample) truncates: the test can tell the two apart
    truncated = sitk.GetArrayFromImage(sitk.Resample(image, list(g.size), sitk.Transform(), sitk.sitkBSpline,
                                                     g.origin, g.spacing, g.direction, -2048.0, sitk.sitkInt16))
    assert (truncated != sitk.GetArrayViewFromImage(out)).mean() > 0.2


def test_prepare_image_keeps_an_on_grid_ct_and_its_masks_bitwise(tmp_path):
    image = ct_like((20, 18, 14), (1.0, 1.0, 1.0), seed=2)
    lung = sitk.Cast(image < -300, sitk.sitkUInt8)
    torso = sitk.Cast(image > -900, sitk.sitkUInt8)
    (tmp_path / "data" / "masks").mkdir(parents=True)
    sitk.WriteImage(image, str(tmp_path / "data" / "case.mha"))
    sitk.WriteImage(lung, str(tmp_path / "data" / "masks" / "case_lung.mha"))
    sitk.WriteImage(torso, str(tmp_path / "data" / "masks" / "case_torso.mha"))
    settings = load_settings({"DataExpDict": [{"data": "Folder", "deform_exp": "3D_max7_D14_K",
                                               "TrainingCNList": ["case"], "TrainingDSmoothList": [0]}],
                              "DataFolder": str(tmp_path / "data"), "OutputFolder": str(tmp_path / "out")})
    out = prepare_image(ImageId("3D_max7_D14_K", "Folder", "case", 0, 1), PairStore(settings))
    for name, original in (("Image", image), ("Lung", lung), ("Torso", torso)):
        written = sitk.ReadImage(str(out / f"{name}.mha"))
        assert Geometry.of(written) == Geometry.of(original), name
        assert written.GetPixelID() == original.GetPixelID(), name
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(original))
