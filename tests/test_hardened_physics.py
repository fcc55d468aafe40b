"""Issue 15 items 5-7: weak mixed-frequency fields are reported, the phantom lung has texture,
the sponge's random factor leaves water-like tissue alone, dark lungs are still lungs."""
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import regnet.masks as masks_module
from regnet.deform.augment import sponge
from regnet.deform.bspline import random_bspline_field
from regnet.deform.field import jacobian_determinant
from regnet.deform.methods import canny_edges, synthetic_dvf
from regnet.geometry import Geometry
from regnet.io import dvf_to_image, read_image, resample_isotropic
from regnet.masks import compute_masks, dice, mask_volume_litres
from regnet.phantom import PhantomSpec, make_phantom
from regnet.seeding import rng_for
from regnet.settings import load_deform_exp
from tests.conftest import shared_file

EXP = load_deform_exp("3D_max7_D14_K")


@pytest.fixture(scope="module")
def phantom():
    ph = make_phantom(PhantomSpec(seed=1, spacing=2.0, exhale=False))
    return ph["image"], sitk.GetArrayViewFromImage(ph["torso"]) > 0, sitk.GetArrayViewFromImage(ph["lung"]) > 0


# ---------------------------------------------------------------- item 5
def test_phantom_lung_has_edges_up_to_the_pleura_as_real_lungs(phantom):
    """Canny (the experiment's thresholds) finds edges throughout the parenchyma, not only at
    the big vessel trees near the hilum: 90% of the lung lies within 6 mm of an edge (on main:
    the smooth parenchyma left most of the periphery without one)."""
    image, _, lung = phantom
    edges = canny_edges(image, EXP, lung) & lung
    distance_mm = ndimage.distance_transform_edt(~edges, sampling=2.0)
    assert np.mean(distance_mm[lung] <= 6.0) > 0.9


@pytest.mark.parametrize("number", [0, 3])
def test_mixed_frequency_on_the_phantom_reaches_a_realistic_range(phantom, number):
    """At least 40% of MaxDeform (7 mm) at stage 2 (real CT: 3-7 mm): the field is grown from
    the lung's edges, which the phantom now has."""
    image, torso, lung = phantom
    u = synthetic_dvf("mixed_frequency", Geometry.of(image), EXP, number, rng_for("mixed", number),
                      image=image, torso=torso, lung=lung)
    assert 0.4 * EXP.MaxDeform <= np.abs(u).max() <= EXP.MaxDeform + 1e-4


def test_a_field_below_a_tenth_of_its_limit_is_reported():
    """A lung without edges (uniform -850 HU) gives a mixed-frequency field of zero: warned."""
    g = Geometry((40, 40, 40), (2.0, 2.0, 2.0))
    hu = np.full(g.shape, 40.0, np.float32)
    lung = np.zeros(g.shape, bool)
    lung[8:32, 8:32, 8:32] = True
    hu[lung] = -850.0
    image = g.apply_to(sitk.GetImageFromArray(hu))
    with pytest.warns(RuntimeWarning, match=r"mixed_frequency \(deform number 0\) gave a field of max \|u\| 0.00 mm, "
                                            r"below a tenth of its limit 7.00 mm"):
        synthetic_dvf("mixed_frequency", g, EXP, 0, rng_for("weak"), image=image, torso=np.ones(g.shape, bool),
                      lung=lung)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal field: no warning
        synthetic_dvf("single_frequency", g, EXP, 0, rng_for("normal"), torso=None, lung=None)


# ---------------------------------------------------------------- item 6
class _Draw:
    """A generator whose uniform draw is a given sponge factor."""
    def __init__(self, value):
        self.value = value

    def uniform(self, *_):
        return self.value


@pytest.fixture(scope="module")
def popi_3mm():
    image = resample_isotropic(read_image(shared_file("ct", "popi_phase00_ct.nii.gz")), 3.0, default=-1024)
    return image, compute_masks(image)


def test_sponge_leaves_soft_tissue_to_the_jacobian_on_real_ct(popi_3mm):
    """On POPI, against SimpleITK's plain warp: in water-like tissue (-30..100 HU) the sponge
    changes HU by 1000 (J - 1) only, whatever the random factor (on main the factor alone moved
    it by about +/-100 HU); in the parenchyma the factor acts in full."""
    image, masks = popi_3mm
    g = Geometry.of(image)
    torso = sitk.GetArrayViewFromImage(masks["torso"]) > 0
    lung = sitk.GetArrayViewFromImage(masks["lung"]) > 0
    u = random_bspline_field(g, (50, 50, 50), 7.0, 0, (0.5,) * 3, np.random.default_rng(3), "single")
    transform = sitk.DisplacementFieldTransform(sitk.Cast(dvf_to_image(u, g), sitk.sitkVectorFloat64))
    plain = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), image, transform,
                                                 sitk.sitkLinear, -1024.0))
    jac = jacobian_determinant(u, g)
    j = np.clip(jac, *EXP.Sponge_JacobianClip)
    soft = torso & (plain >= -30) & (plain <= 100)
    parenchyma = torso & lung & (plain < -600)
    assert soft.sum() > 10_000 and parenchyma.sum() > 10_000
    for factor in (0.9, 1.1):
        out = sponge(plain, jac, torso, EXP, _Draw(factor))
        shift = out[soft] - plain[soft]
        np.testing.assert_allclose(shift, 1000.0 * (j[soft] - 1.0) * (1 + plain[soft] / 1000.0), atol=0.05)
        assert abs(shift.mean()) < 15.0                                   # main: about +/-95 HU
        np.testing.assert_allclose(out[parenchyma], (plain[parenchyma] + 1000) * j[parenchyma] * factor - 1000,
                                   atol=0.05)


# ---------------------------------------------------------------- item 7
def test_dark_lungs_are_still_lungs(popi_3mm):
    """POPI with every voxel in [-1000, -400] HU lowered by 130 HU (lung median about -950 HU,
    a third below -980 HU, as in emphysema): main found 0.00 L of lung."""
    image, masks = popi_3mm
    hu = sitk.GetArrayFromImage(image)
    dark = np.where((hu >= -1000) & (hu <= -400), hu - 130, hu).astype(hu.dtype)
    dark_image = sitk.GetImageFromArray(dark)
    dark_image.CopyInformation(image)
    lung = sitk.GetArrayViewFromImage(masks["lung"]) > 0
    assert np.mean(dark[lung] < -980) > 0.2  # a third at full resolution, a quarter at 3 mm
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "little lung" warning here
        dark_masks = compute_masks(dark_image)
    assert mask_volume_litres(dark_masks["lung"]) > 0.9 * mask_volume_litres(masks["lung"])
    assert dice(dark_masks["lung"], masks["lung"]) > 0.95


def test_a_chest_ct_with_little_lung_is_reported(popi_3mm, monkeypatch):
    image, _ = popi_3mm
    monkeypatch.setattr(masks_module, "_lung_like_components", lambda air, image: air * 0)
    with pytest.warns(RuntimeWarning, match=r"Lung mask of only 0.00 L although the body holds [0-9.]+ L of air"):
        compute_masks(image)


# ---------------------------------------------------------------- item 9 (masks, phantom)
def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "regnet", *map(str, args)], capture_output=True, text=True)


def test_masks_do_not_overwrite_without_being_asked(tmp_path):
    ph = make_phantom(PhantomSpec(seed=2, spacing=4.0, exhale=False))
    source = tmp_path / "T00.mha"
    sitk.WriteImage(ph["image"], str(source))
    (tmp_path / "m").mkdir()
    lung_file = tmp_path / "m" / "T00_lung.mha"
    lung_file.write_bytes(b"mine")
    out = _cli("masks", source, "--out", tmp_path / "m")
    assert out.returncode != 0
    assert f"Mask file(s) already exist: {lung_file}; pass --overwrite" in out.stderr
    assert lung_file.read_bytes() == b"mine" and not (tmp_path / "m" / "T00_torso.mha").exists()
    out = _cli("masks", source, "--out", tmp_path / "m", "--overwrite")
    assert out.returncode == 0, out.stderr
    assert dice(read_image(lung_file), ph["lung"]) > 0.9


@pytest.mark.parametrize("spacing", ["0", "-1.5", "nan"])
def test_phantom_spacing_must_be_positive(tmp_path, spacing):
    out = _cli("phantom", "--out", tmp_path / "ph", f"--spacing={spacing}", "--no-exhale")
    assert out.returncode != 0
    assert "phantom --spacing must be a positive number of mm, got" in out.stderr
    assert not (tmp_path / "ph").exists()
