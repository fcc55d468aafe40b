"""The built-in phantom and the open lung/torso masks."""
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from regnet import RegNetError
from regnet.geometry import Geometry
from regnet.io import read_image
from regnet.layouts import load_layout
from regnet.masks import compute_masks, dice, mask_volume_litres
from regnet.phantom import PhantomSpec, make_phantom
from tests.conftest import shared_file

SMALL = PhantomSpec(seed=3, spacing=3.0)


@pytest.fixture(scope="module")
def small():
    return make_phantom(SMALL)


def test_phantom_is_deterministic_and_seeds_differ(small):
    again = make_phantom(SMALL)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again["image"]),
                                  sitk.GetArrayViewFromImage(small["image"]))
    np.testing.assert_array_equal(again["landmarks"], small["landmarks"])
    size = small["image"].GetSize()
    one = make_phantom(PhantomSpec(seed=3, spacing=3.0, size=size, exhale=False))
    other = make_phantom(PhantomSpec(seed=4, spacing=3.0, size=size, exhale=False))
    assert dice(other["lung"], one["lung"]) < 0.97          # a different "patient"
    assert len(other["landmarks"]) != len(one["landmarks"]) or \
        not np.allclose(other["landmarks"], one["landmarks"])


def test_phantom_looks_like_chest_ct_in_hu(small):
    hu = sitk.GetArrayViewFromImage(small["image"])
    lung = sitk.GetArrayViewFromImage(small["lung"]).astype(bool)
    torso = sitk.GetArrayViewFromImage(small["torso"]).astype(bool)
    assert small["image"].GetPixelID() == sitk.sitkInt16
    assert -900 < np.median(hu[lung]) < -780                 # parenchyma
    assert 0.005 < np.mean(hu[lung] > -300) < 0.25           # vessels fill part of the lung
    assert np.median(hu[~torso & (hu < 0)]) < -950           # air outside
    assert (hu[torso] > 500).sum() > 100                     # bone (spine, ribs)
    assert mask_volume_litres(small["lung"]) > 1.0 and mask_volume_litres(small["lung"]) < 8.0
    assert lung[~torso].sum() == 0


def test_exhale_phase_is_consistent_with_its_dvf_and_landmarks(small):
    g = small["geometry"]
    p, q, u = small["landmarks"], small["exhale_landmarks"], small["exhale_dvf"]
    assert len(p) > 20
    lung = sitk.GetArrayViewFromImage(small["lung"])
    idx = np.round(g.physical_to_index(p)).astype(int)
    assert lung[idx[:, 2], idx[:, 1], idx[:, 0]].mean() > 0.9  # bifurcations lie in the lung
    # q + u(q) = p, with u interpolated independently by SciPy
    qi = g.physical_to_index(q)[:, ::-1].T
    uq = np.stack([ndimage.map_coordinates(u[..., k], qi, order=1) for k in range(3)], -1)
    np.testing.assert_allclose(q + uq, p, atol=0.05)
    assert u[..., 2].min() < -5 and abs(u[..., 2].max()) < 1.0  # diaphragm moves up: exhale pulls from below
    # the exhale image is the inhale image pulled through u (SimpleITK resampler as reference)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(g.apply_to(sitk.GetImageFromArray(u.astype(np.float64),
                                                                                           isVector=True)),
                                                          sitk.sitkVectorFloat64))
    ref = sitk.Resample(small["image"], small["image"], transform, sitk.sitkBSpline, -1000.0)
    diff = sitk.GetArrayViewFromImage(ref).astype(float) - sitk.GetArrayViewFromImage(small["exhale_image"])
    assert np.percentile(np.abs(diff), 99) <= 1.0


def test_masks_agree_with_the_phantoms_own(small):
    masks = compute_masks(small["image"])
    assert dice(masks["lung"], small["lung"]) > 0.95
    assert dice(masks["torso"], small["torso"]) > 0.95
    assert Geometry.of(masks["lung"]) == Geometry.of(small["image"])


@pytest.mark.parametrize("name, low, high", [
    ("popi_phase00_ct.nii.gz", 2.0, 8.0),                   # full thorax
    ("totalseg_aorta_ct_cropped_1p5mm.nii.gz", 1.5, 8.0),   # thorax cut by a tight field of view
    ("totalseg_example_ct_3mm.nii.gz", 0.02, 1.0),          # abdomen with lung bases only
])
def test_masks_on_real_ct_have_plausible_volumes(name, low, high):
    image = read_image(shared_file("ct", name))
    masks = compute_masks(image)
    assert low < mask_volume_litres(masks["lung"]) < high
    assert mask_volume_litres(masks["torso"]) > 1.5 * mask_volume_litres(masks["lung"])
    assert masks["lung"].GetDirection() == image.GetDirection()
    lung = sitk.GetArrayViewFromImage(masks["lung"]).astype(bool)
    assert np.median(sitk.GetArrayViewFromImage(image)[lung]) < -600


def test_mr_is_refused_or_gets_the_documented_fallback():
    image = read_image(shared_file("fixtures", "totalseg_example_mr_sm.nii.gz"))
    with pytest.raises(RegNetError, match="does not look like a CT"):
        compute_masks(image)
    masks = compute_masks(image, fallback="otsu")
    assert masks["method"] == "otsu"
    assert sitk.GetArrayViewFromImage(masks["torso"]).mean() > 0.1
    assert not sitk.GetArrayViewFromImage(masks["lung"]).any()


def test_phantom_layout_serves_cases_by_seed():
    layout = load_layout("Phantom")
    layout.phantom = {"spacing": 3.0, "size": [96, 80, 90]}
    image, exhale = layout.read_image(7, "T00"), layout.read_image(7, 1)
    assert image.GetSize() == (96, 80, 90) and exhale.GetSize() == (96, 80, 90)
    assert layout.read_mask("lung", 7).GetSize() == (96, 80, 90)
    assert len(layout.read_landmarks(7, "T00")) == len(layout.read_landmarks(7, "T50"))


def test_cli_phantom_and_masks(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "regnet", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    out = run("phantom", "--out", tmp_path / "ph", "--small", "--seed", "2", "--no-exhale")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ph" / "T00.mha").exists() and (tmp_path / "ph" / "T00_lung.mha").exists()
    out = run("masks", tmp_path / "ph" / "T00.mha", "--out", tmp_path / "m", "--png")
    assert out.returncode == 0, out.stderr
    assert "lung" in out.stdout and (tmp_path / "m" / "T00_masks.png").stat().st_size > 10_000
    computed = read_image(tmp_path / "m" / "T00_lung.mha")
    assert dice(computed, read_image(tmp_path / "ph" / "T00_lung.mha")) > 0.95
