"""Data layouts: declarative files resolve to cases, images and landmarks."""
import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.geometry import Geometry
from regnet.landmarks import landmark_distances
from regnet.layouts import available_layouts, load_layout
from tests.conftest import shared_file

PUBLISHED_MEAN_MM = [3.89, 4.34, 6.94, 9.83, 7.48, 10.89, 11.03, 14.99, 7.92, 7.30]


def test_dirlab_4d_layout_reproduces_published_landmark_distances():
    root = shared_file("landmarks", "dirlab4dct")
    layout = load_layout("DIR-Lab_4D", root=root)
    assert layout.cases() == list(range(1, 11))
    means = []
    for cn in layout.cases():
        g = layout.geometry(cn)  # from the size/spacing table, no image needed
        t00 = layout.read_landmarks(cn, "T00", g)
        t50 = layout.read_landmarks(cn, 5, g)
        assert t00.shape == (300, 3)
        means.append(landmark_distances(t00, t50).mean())
    np.testing.assert_allclose(means, PUBLISHED_MEAN_MM, atol=0.01)


def test_dirlab_raw_image_flip_and_offset_match_landmark_convention(tmp_path):
    """A bright voxel written where a DIR-Lab landmark says must be found at that landmark's mm."""
    nx, ny, nz = 256, 256, 94
    stored = np.full((nz, ny, nx), 1024 - 1000, dtype="<i2")  # -1000 HU after the -1024 offset
    x1, y1, z1 = 100, 50, 20  # 1-based landmark indices, file order
    stored[z1 - 1, y1 - 1, x1 - 1] = 1024 + 500
    folder = tmp_path / "Case1Pack"
    (folder / "Images").mkdir(parents=True)
    (folder / "ExtremePhases").mkdir()
    stored.tofile(folder / "Images" / "case1_T00_s.img")
    (folder / "ExtremePhases" / "Case1_300_T00_xyz.txt").write_text(f"{x1}\t{y1}\t{z1}\r\n")
    layout = load_layout("DIR-Lab_4D", root=tmp_path)
    image = layout.read_image(1, "T00")
    assert image.GetSize() == (nx, ny, nz) and image.GetSpacing() == pytest.approx((0.97, 0.97, 2.5))
    array = sitk.GetArrayFromImage(image)
    assert array.min() == -1000 and array.max() == 500
    point = layout.read_landmarks(1, "T00", Geometry.of(image))[0]
    index = image.TransformPhysicalPointToIndex(point.tolist())
    assert image.GetPixel(index) == 500
    assert index[2] == nz - z1  # slices are flipped so z grows cranially


def test_folder_layout_discovers_cases_and_optional_masks(tmp_path):
    for name in ("b", "a10", "a2"):
        sitk.WriteImage(sitk.Image(4, 5, 6, sitk.sitkInt16), str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "masks").mkdir()
    sitk.WriteImage(sitk.Image(4, 5, 6, sitk.sitkUInt8), str(tmp_path / "masks" / "a2_lung.mha"))
    (tmp_path / "notes.txt").write_text("not an image")
    layout = load_layout("Folder", data_folder=tmp_path)
    assert layout.cases() == ["b", "a2", "a10"]
    assert layout.read_image("a2", 0).GetSize() == (4, 5, 6)
    assert layout.read_mask("lung", "a2") is not None
    assert layout.read_mask("lung", "b") is None
    with pytest.raises(RegNetError, match="not found"):
        layout.read_image("zzz", 0)


def test_copd_layout_uses_per_type_fields(tmp_path):
    layout = load_layout("DIR-Lab_COPD", root=tmp_path)
    (tmp_path / "copd3_300_eBH_xyz_r1.txt").write_text("1 1 1\n")
    assert layout.path("landmarks", 3, "eBHCT").name == "copd3_300_eBH_xyz_r1.txt"
    assert layout.geometry(4).spacing == pytest.approx((0.59, 0.59, 2.5))


def test_popi_layout_finds_the_real_file(tmp_path):
    source = shared_file("ct", "popi_phase00_ct.nii.gz")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / source.name).symlink_to(source)
    layout = load_layout("POPI", root=tmp_path)
    assert layout.cases() == ["1"]
    assert layout.path("image", "1", "00").resolve() == source.resolve()


def test_unknown_layout_and_type_errors():
    assert {"DIR-Lab_4D", "DIR-Lab_COPD", "POPI", "Folder", "Phantom"} <= set(available_layouts())
    with pytest.raises(RegNetError, match="did you mean 'DIR-Lab_4D'"):
        load_layout("DIR-Lab_4d")
    layout = load_layout("DIR-Lab_4D")
    with pytest.raises(RegNetError, match="out of range"):
        layout.type_name(10)


def test_layouts_ship_inside_the_package(tmp_path, monkeypatch):
    from pathlib import Path

    import regnet
    from regnet.layouts import layout_dirs

    assert Path(str(layout_dirs()[-1])).is_relative_to(Path(regnet.__file__).parent)
    (tmp_path / "Phantom.toml").write_text('types = ["A"]\nsource = "phantom"\ncases = [7]\n')
    monkeypatch.setenv("REGNET_LAYOUTS_PATH", str(tmp_path))
    assert load_layout("Phantom").types == ["A"]                 # the user's folder comes first
    assert load_layout("POPI").name == "POPI"                    # the shipped ones stay reachable


@pytest.mark.parametrize("text, message", [
    ('types = ["image"]\nimage = "{cn}.mha\n', r"My\.toml: not a valid TOML layout file \(.*line 2"),
    ('types = "image"\nimage = "{cn}.mha"\n', r"My\.toml: types must be a non-empty list of names, .* got 'image'"),
    ('types = ["image"]\nimage = "{cn}.mha"\ncases = 5\n', r"My\.toml: cases must be a list .* got 5"),
    ('types = ["image"]\nimage = "{cn}.mha"\ndefault_pixel_value = "air"\n',
     r"My\.toml: default_pixel_value must be a number .* got 'air'"),
    ('types = ["image"]\nimage = 3\n', r"My\.toml: image must be a string, got 3"),
])
def test_malformed_layout_files_name_file_and_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "My.toml").write_text(text)
    monkeypatch.setenv("REGNET_LAYOUTS_PATH", str(tmp_path))
    with pytest.raises(RegNetError, match=message):
        load_layout("My")
