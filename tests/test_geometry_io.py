"""Physical-space I/O and resampling, checked against SimpleITK and analytic fields."""
import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.geometry import Geometry, require_same_geometry
from regnet.io import (
    check_image,
    dvf_to_array,
    dvf_to_image,
    image_from_array,
    map_metaimage,
    read_dvf,
    read_image,
    resample_isotropic,
    resample_like,
    write_dvf,
    write_image,
)
from tests.conftest import shared_file


def test_index_to_physical_matches_sitk_through_rotated_direction(rotated_image):
    g = Geometry.of(rotated_image)
    idx = np.array([[0, 0, 0], [3.5, 7.25, 1.0], [15, 13, 11]])
    expected = [rotated_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx]
    np.testing.assert_allclose(g.index_to_physical(idx), expected, atol=1e-9)
    np.testing.assert_allclose(g.physical_to_index(expected), idx, atol=1e-9)


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
def test_write_read_keeps_geometry_and_values(tmp_path, rotated_image, suffix):
    path = write_image(rotated_image, tmp_path / f"im{suffix}")
    back = read_image(path)
    assert Geometry.of(back).close_to(Geometry.of(rotated_image), tol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(rotated_image))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_big_endian_nifti_matches_a_hand_parsed_header():
    path = shared_file("fixtures", "nipy_anatomical.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    assert np.frombuffer(raw[:4], ">i4")[0] == 348  # big-endian header
    dims = np.frombuffer(raw[40:56], ">i2")
    offset = int(np.frombuffer(raw[108:112], ">f4")[0])
    nx, ny, nz = (int(d) for d in dims[1:4])
    hand = np.frombuffer(raw[offset:offset + 2 * nx * ny * nz], ">i2").reshape(nz, ny, nx)
    image = read_image(path)
    assert image.GetSize() == (nx, ny, nz)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hand)


def test_anisotropic_fixture_keeps_spacing_and_direction():
    image = read_image(shared_file("fixtures", "dipy_aniso_vox.nii.gz"))
    assert image.GetSpacing() == pytest.approx((4.0, 4.0, 5.0))
    assert not np.allclose(image.GetDirection(), np.eye(3).ravel())


def test_4d_is_rejected_with_a_way_out_and_volume_selects():
    path = shared_file("fixtures", "nibabel_example4d.nii.gz")
    with pytest.raises(RegNetError, match=r"4D .*volume=0\.\.1"):
        read_image(path)
    vol = read_image(path, volume=1)
    assert vol.GetSize() == (128, 96, 24)
    with pytest.raises(RegNetError, match="out of range"):
        read_image(path, volume=2)


def test_dicom_series_folder_and_multiframe_file():
    series = read_image(shared_file("fixtures", "ct_dicom_series_20slices"))
    assert series.GetSize() == (512, 512, 20)
    assert series.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    frames = read_image(shared_file("fixtures", "pydicom-data_emri_small.dcm"))
    assert frames.GetSize() == (64, 64, 10)


def test_bad_inputs_give_specific_errors(tmp_path):
    with pytest.raises(RegNetError, match="no such file"):
        read_image(tmp_path / "missing.mha")
    (tmp_path / "junk.mha").write_text("not an image")
    with pytest.raises(RegNetError, match="cannot read"):
        read_image(tmp_path / "junk.mha")
    nan = np.zeros((4, 5, 6), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(RegNetError, match="1 NaN"):
        check_image(sitk.GetImageFromArray(nan))
    flat = sitk.GetImageFromArray(np.zeros((1, 5, 6), np.float32))
    with pytest.raises(RegNetError, match="2D"):
        check_image(flat)
    with pytest.raises(RegNetError, match="2D"):
        check_image(sitk.Image(5, 6, sitk.sitkFloat32))
    (tmp_path / "x.img").write_bytes(b"\0" * 10)
    with pytest.raises(RegNetError, match="headerless raw"):
        read_image(tmp_path / "x.img")


def test_mismatched_geometry_is_named(rotated_image):
    other = sitk.Image(rotated_image)
    other.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(RegNetError, match="origin"):
        require_same_geometry(rotated_image, other, "fixed and moving images")


def _ramp(geometry, coeffs=(0.7, -1.3, 2.1), const=5.0):
    """An image whose value is a linear function of the physical point: exact under linear interpolation."""
    zyx = np.indices(geometry.shape, dtype=float)
    idx = np.stack([zyx[2], zyx[1], zyx[0]], axis=-1)
    pts = geometry.index_to_physical(idx)
    return image_from_array((pts @ np.asarray(coeffs) + const).astype(np.float64), geometry)


def test_isotropic_resampling_samples_the_right_physical_points(rotated_image):
    g = Geometry.of(rotated_image)
    ramp = _ramp(g)
    iso = resample_isotropic(ramp, 1.0, "linear", antialias=False)
    gi = Geometry.of(iso)
    assert gi.spacing == (1.0, 1.0, 1.0) and gi.direction == g.direction and gi.origin == g.origin
    extent = (np.asarray(g.size) - 1) * np.asarray(g.spacing)
    assert np.all((np.asarray(gi.size) - 1) <= extent + 1e-6) and np.all(np.asarray(gi.size) > extent)
    np.testing.assert_allclose(sitk.GetArrayFromImage(iso), sitk.GetArrayFromImage(_ramp(gi)), atol=1e-9)
    back = resample_like(iso, ramp, "linear", antialias=False)
    inside = (slice(0, -3), slice(0, -2), slice(0, -2))  # voxels covered by the iso grid
    np.testing.assert_allclose(sitk.GetArrayFromImage(back)[inside], sitk.GetArrayFromImage(ramp)[inside],
                               atol=1e-9)


def test_downsampling_antialias_removes_nyquist_pattern():
    checker = (np.indices((32, 32, 32)).sum(0) % 2).astype(np.float32) * 100
    image = sitk.GetImageFromArray(checker)
    plain = sitk.GetArrayFromImage(resample_isotropic(image, 2.5, "linear", antialias=False))
    smooth = sitk.GetArrayFromImage(resample_isotropic(image, 2.5, "linear", antialias=True))
    assert plain.std() > 15          # aliasing: the fine pattern survives as a coarse one
    assert smooth.std() < 5          # smoothed to its mean
    assert smooth.mean() == pytest.approx(50, abs=2)


def test_dvf_round_trip_keeps_components_units_and_geometry(tmp_path, rotated_image):
    rng = np.random.default_rng(1)
    dvf = rng.normal(size=(*Geometry.of(rotated_image).shape, 3)).astype(np.float32)
    path = write_dvf(dvf, tmp_path / "dvf.mha", reference=rotated_image)
    back = read_dvf(path)
    assert back.GetPixelID() == sitk.sitkVectorFloat32
    assert Geometry.of(back).close_to(Geometry.of(rotated_image))
    np.testing.assert_array_equal(dvf_to_array(back), dvf)
    # component 0 is x: sitk's vector index 0 at voxel (x=2, y=3, z=4)
    assert back.GetPixel(2, 3, 4)[0] == pytest.approx(dvf[4, 3, 2, 0])
    with pytest.raises(RegNetError, match=r"\(z, y, x, 3\)"):
        dvf_to_image(dvf[..., :2], rotated_image)
    with pytest.raises(RegNetError, match="3 components"):
        read_image(write_image(rotated_image, tmp_path / "scalar.mha"), vector=True)


@pytest.mark.parametrize("pixel", [sitk.sitkInt16, sitk.sitkUInt8, sitk.sitkFloat32, sitk.sitkVectorFloat32])
def test_mapped_metaimage_equals_simpleitks_read(tmp_path, rotated_image, pixel):
    """The reader maps the job's .mha files: same voxels and grid as SimpleITK reads them."""
    array = sitk.GetArrayFromImage(rotated_image) * 100
    if pixel == sitk.sitkVectorFloat32:
        image = image_from_array(np.stack([array, -array, 2 * array], axis=-1).astype(np.float32), rotated_image)
    else:
        image = sitk.Cast(image_from_array(array.astype(np.float32), rotated_image), pixel)
    path = write_image(image, tmp_path / "a.mha", compress=False)
    mapped, geometry = map_metaimage(path, vector=pixel == sitk.sitkVectorFloat32)
    np.testing.assert_array_equal(mapped, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    assert mapped.dtype == sitk.GetArrayViewFromImage(image).dtype
    assert geometry == Geometry.of(image)


def test_only_uncompressed_one_file_metaimages_are_mapped(tmp_path, rotated_image):
    for name, compress in (("a.mha", True), ("a.nii.gz", False), ("a.mhd", False), ("a.nrrd", False)):
        assert map_metaimage(write_image(rotated_image, tmp_path / name, compress=compress)) is None, name
    assert map_metaimage(tmp_path / "missing.mha") is None


def test_a_mapped_file_is_checked_as_a_read_one(tmp_path, rotated_image):
    path = write_image(rotated_image, tmp_path / "a.mha", compress=False)
    with pytest.raises(RegNetError, match="a DVF needs 3 components per voxel, found 1"):
        map_metaimage(path, vector=True)
    nan = sitk.GetArrayFromImage(rotated_image)
    nan[2, 3, 4] = np.nan
    path = write_image(image_from_array(nan, rotated_image), tmp_path / "nan.mha", compress=False)
    with pytest.raises(RegNetError, match="nan.mha contains 1 NaN or infinite values"):
        map_metaimage(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RegNetError, match="nan.mha: truncated"):
        map_metaimage(path)


def test_rounding_to_an_integer_type_rounds_and_clips():
    """A plain cast truncates toward zero and wraps out-of-range values; these round and clip."""
    from regnet.io import round_array, round_image

    values = np.array([1.4, 1.6, -1.6, -0.4, 40000.0, -40000.0], np.float32)
    expected = [1, 2, -2, 0, 32767, -32768]
    assert round_array(values.copy(), np.int16).tolist() == expected
    image = sitk.GetImageFromArray(values.reshape(1, 2, 3))
    rounded = round_image(image, sitk.sitkInt16)
    assert rounded.GetPixelID() == sitk.sitkInt16
    assert sitk.GetArrayFromImage(rounded).ravel().tolist() == expected
