"""Corrupt image files fail loudly (issue 15 item 2): truncated NIfTI/MetaImage, a missing .raw, a DICOM
series with a missing slice. Every file is a small synthetic image written by SimpleITK, then damaged."""
import gzip
import re

import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.cli import main
from regnet.io import read_image


@pytest.fixture
def image():
    array = (np.random.default_rng(0).normal(size=(20, 16, 12)) * 100).astype(np.int16)
    out = sitk.GetImageFromArray(array)
    out.SetSpacing((1.0, 1.0, 2.0))
    return out


def cut(path, fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_truncated_nifti_is_an_error_not_zero_slices(tmp_path, image, name):
    path = tmp_path / name
    sitk.WriteImage(image, str(path), True)
    assert read_image(path).GetSize() == (12, 16, 20)  # complete: reads
    cut(path)
    with pytest.raises(RegNetError, match=re.escape(name) + r": truncated: .*copy it again"):
        read_image(path)
    assert main(["info", str(path)]) == 1


def test_nifti_gz_with_a_corrupt_checksum_is_an_error(tmp_path, image):
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(image, str(path), True)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the gzip CRC32 of the data
    path.write_bytes(bytes(data))
    with pytest.raises(RegNetError, match=r"a\.nii\.gz: corrupt gzip data \(CRC check failed"):
        read_image(path)


def test_nifti_gz_holding_a_truncated_nii_is_an_error(tmp_path, image):
    """A complete gzip stream around a cut .nii: the header's promise still decides."""
    sitk.WriteImage(image, str(tmp_path / "a.nii"))
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "b.nii.gz").write_bytes(gzip.compress(raw[:352 + 12 * 16 * 10 * 2]))
    expected = 352 + 12 * 16 * 20 * 2  # vox_offset 352 + 3840 voxels x 2 bytes, by hand
    with pytest.raises(RegNetError, match=rf"b\.nii\.gz: truncated: the NIfTI header promises {expected} bytes "
                                          r"\(12x16x20 voxels of 16 bits\), the file holds 4192 \(52%\)"):
        read_image(tmp_path / "b.nii.gz")


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_mha_says_truncated(tmp_path, image, compress):
    path = tmp_path / "a.mha"
    sitk.WriteImage(image, str(path), compress)
    cut(path, 0.8)
    what = "compressed bytes" if compress else r"bytes \(12x16x20 x 1 x 2\)"
    with pytest.raises(RegNetError, match=rf"a\.mha: truncated: the header promises \d+ {what} of voxel data"):
        read_image(path)


def test_mhd_without_its_raw_names_the_raw(tmp_path, image):
    sitk.WriteImage(image, str(tmp_path / "b.mhd"))
    (tmp_path / "b.raw").unlink()
    with pytest.raises(RegNetError, match=r"b\.mhd: its voxel data file .*b\.raw \(ElementDataFile = b\.raw\) is "
                                          r"missing"):
        read_image(tmp_path / "b.mhd")
    sitk.WriteImage(image, str(tmp_path / "c.mhd"))
    cut(tmp_path / "c.raw", 0.5)
    with pytest.raises(RegNetError, match=r"c\.raw: truncated: the header of c\.mhd promises 7680 bytes"):
        read_image(tmp_path / "c.mhd")


def write_series(folder, z_positions, size=(8, 6)):
    """One CT slice file per z position (mm), as a scanner would: position, orientation, series UID."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our series UID: one series, not one per file
    for i, z in enumerate(z_positions):
        slice_ = sitk.GetImageFromArray(np.full(size[::-1], 10 * i, dtype=np.int16))
        slice_.SetSpacing((0.7, 0.7))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0020|0013", str(i + 1)), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", f"-10\\-20\\{z}"), ("0028|0030", "0.7\\0.7"),
                           ("0018|0050", "2")):
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0008|0018", f"1.2.3.4.{i + 1}")
        writer.SetFileName(str(folder / f"slice{i:02d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_with_a_missing_slice_names_folder_and_gap(tmp_path):
    z = [2.0 * k for k in range(20)]
    write_series(tmp_path / "full", z)
    full = read_image(tmp_path / "full")
    assert full.GetSize() == (8, 6, 20) and full.GetSpacing()[2] == pytest.approx(2.0)
    write_series(tmp_path / "gap", z[:10] + z[11:])  # 19 slices; ITK alone: uniform 2.111 mm
    with pytest.raises(RegNetError, match=r"gap: DICOM slices are 2 mm apart, but there is a 4 mm gap between "
                                          r"slice09\.dcm \(18 mm\) and slice10\.dcm \(22 mm\): 1 slice\(s\) missing"):
        read_image(tmp_path / "gap")
    assert main(["info", str(tmp_path / "gap")]) == 1
