"""Synthetic DVF methods and augmentations: limits, masks, directions, reproducibility."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from regnet.deform.augment import noise, sponge
from regnet.deform.field import jacobian_determinant
from regnet.deform.methods import inputs_of, synthetic_dvf
from regnet.geometry import Geometry
from regnet.io import read_image, resample_isotropic
from regnet.masks import compute_masks
from regnet.phantom import PhantomSpec, make_phantom
from regnet.seeding import rng_for
from regnet.settings import load_deform_exp
from tests.conftest import shared_file

STAGE = 2  # the phantom grid below is 2 mm isotropic, RegNet's stage-2 grid
EXP = load_deform_exp("3D_max15_D14_K")


def inputs(method, image, torso, lung):
    """The data a method takes, from what the job has (a method refuses any other keyword)."""
    return {k: v for k, v in {"image": image, "torso": torso, "lung": lung}.items() if k in inputs_of(method)}


def limit_of(method, number):
    m = EXP.MaxDeform
    return {"zero": 0.0, "single_frequency": m * EXP.SingleFrequency_MaxDeformRatio[number],
            "respiratory_motion": 1.2 * m, "mixed_frequency": m}[method]


@pytest.fixture(scope="module")
def phantom():
    ph = make_phantom(PhantomSpec(seed=11, spacing=2.0, scale=0.6, size=(130, 110, 90), exhale=False))
    return ph["image"], sitk.GetArrayViewFromImage(ph["torso"]) > 0, sitk.GetArrayViewFromImage(ph["lung"]) > 0


@pytest.fixture(scope="module")
def fields(phantom):
    image, torso, lung = phantom
    g = Geometry.of(image)
    out = {}
    for d in range(14):
        method, number = EXP.method_of(d)
        out[d] = synthetic_dvf(method, g, EXP, number, rng_for("test", d, method), **inputs(method, image, torso, lung))
    return out


def test_every_method_is_finite_and_within_its_max_deform(fields):
    for d, u in fields.items():
        method, number = EXP.method_of(d)
        assert u.dtype == np.float32 and np.isfinite(u).all(), d
        assert np.abs(u).max() <= limit_of(method, number) + 1e-4, (d, method)
        if method != "zero":
            assert np.abs(u).max() > 0.05 * limit_of(method, number), (d, method)


def test_torso_masked_methods_vanish_outside_the_torso(phantom, fields):
    """Mask-to-zero multiplies by the torso, then smooths the edge with sigma = 8/stage * M/7
    voxels: beyond 2.5 sigma outside the body only a Gaussian tail (< 1.5%) can remain."""
    _, torso, _ = phantom
    distance = ndimage.distance_transform_edt(~torso)
    for d in (0, 1, 4, 6, 8):
        method, number = EXP.method_of(d)
        m = limit_of(method, number) / (1.2 if method == "respiratory_motion" else 1.0)
        sigma = 8.0 / STAGE * m / 7.0
        far = distance > 2.5 * sigma
        assert far.sum() > 1000, d
        assert np.abs(fields[d][far]).max() < 0.015 * np.abs(fields[d][torso]).max(), d


def test_respiratory_motion_is_cranio_caudal_and_largest_at_the_diaphragm(phantom, fields):
    image, _, lung = phantom
    z_index = np.nonzero(lung.any(axis=(1, 2)))[0]
    low = lung.copy()
    low[z_index[0] + 8:] = False                            # the slab just above the diaphragm
    high = lung.copy()
    high[:z_index[-1] - 8] = False                          # the apex
    for d in range(4):
        u = fields[d]
        assert np.abs(u[..., 2][low]).mean() > 2 * np.abs(u[..., 2][high]).mean()
        assert np.abs(u[..., 2][low]).mean() > np.abs(u[..., 0][low]).mean()


def test_respiratory_direction_comes_from_the_geometry_not_the_array_order(phantom):
    """Flip the volume's z axis in the array and say so in the direction matrix: the same
    anatomy in the same place, so the physical field must be the same."""
    image, torso, lung = phantom
    exp = load_deform_exp("x", {"x": {"extends": "3D_max15_D14_K",
                                      "RespiratoryMotion_SingleFrequency_MaxDeformRatio": 1e-9}})
    g = Geometry.of(image)
    flipped = Geometry(g.size, g.spacing,
                       tuple(g.index_to_physical([0, 0, g.size[2] - 1])), (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))
    a = synthetic_dvf("respiratory_motion", g, exp, 0, rng_for("rm"), torso=torso, lung=lung)
    b = synthetic_dvf("respiratory_motion", flipped, exp, 0, rng_for("rm"), torso=torso[::-1].copy(),
                      lung=lung[::-1].copy())
    np.testing.assert_allclose(b[::-1], a, atol=1e-3 * np.abs(a).max())


def test_fields_are_reproducible_and_seed_dependent(phantom, fields):
    image, torso, lung = phantom
    g = Geometry.of(image)
    again = synthetic_dvf("mixed_frequency", g, EXP, 0, rng_for("test", 9, "mixed_frequency"),
                          image=image, torso=torso, lung=lung)
    np.testing.assert_array_equal(again, fields[9])
    assert not np.array_equal(fields[5], fields[6])


def test_sponge_follows_mass_conservation_on_an_analytic_field():
    g = Geometry((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    zyx = np.indices(g.shape, dtype=float)
    u = np.zeros(g.shape + (3,), np.float32)
    u[..., 0] = 0.2 * zyx[2]                                  # J = 1.2: voxels gather more tissue
    jac = jacobian_determinant(u, g)
    torso = np.ones(g.shape, bool)
    image = np.full(g.shape, -500.0, np.float32)
    factor = rng_for("sponge").uniform(*EXP.Sponge_ScaleRange)
    out = sponge(image, jac, torso, EXP, rng_for("sponge"))
    np.testing.assert_allclose(out, (-500 + 1000) * 1.2 * factor - 1000, atol=1e-2)  # denser: HU up


def test_noise_only_inside_the_torso_with_the_set_sigma():
    torso = np.zeros((40, 40, 40), bool)
    torso[5:35, 5:35, 5:35] = True
    out = noise(np.zeros(torso.shape, np.float32), torso, 10.0, 10.0, rng_for("noise"))
    assert np.all(out[~torso] == 0)
    assert out[torso].std() == pytest.approx(10.0, rel=0.02)
    assert abs(out[torso].mean() - round(out[torso].mean())) < 0.1  # an integer mean, as RegNet


def test_methods_on_real_ct_at_stage_2():
    image = resample_isotropic(read_image(shared_file("ct", "totalseg_aorta_ct_cropped_1p5mm.nii.gz")), 2.0)
    masks = compute_masks(image)
    torso = sitk.GetArrayViewFromImage(masks["torso"]) > 0
    lung = sitk.GetArrayViewFromImage(masks["lung"]) > 0
    g = Geometry.of(image)
    for d in (0, 4, 9):
        method, number = EXP.method_of(d)
        u = synthetic_dvf(method, g, EXP, number, rng_for("real", d), **inputs(method, image, torso, lung))
        assert np.isfinite(u).all() and 0 < np.abs(u).max() <= limit_of(method, number) + 1e-4


def test_separable_box_dilation_equals_scipy_binary_dilation():
    from regnet.deform.methods import _box_dilate

    mask = np.random.default_rng(0).random((30, 31, 32)) > 0.97
    np.testing.assert_array_equal(_box_dilate(mask), ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool)))
    for axis in range(3):
        element = np.zeros((9, 9, 9), bool)
        element[tuple(slice(0, 5) if k == axis else slice(None) for k in range(3))] = True  # RegNet's directional element
        np.testing.assert_array_equal(_box_dilate(mask, 9, axis=axis, length=5), ndimage.binary_dilation(mask, element))


def test_translation_is_a_constant_shift_within_max_deform():
    g = Geometry((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    shifts = []
    for k in range(200):
        u = synthetic_dvf("translation", g, EXP, 0, rng_for("translation", k))
        assert np.all(u == u[0, 0, 0])                        # the same vector everywhere
        shifts.append(u[0, 0, 0])
    shifts = np.asarray(shifts)
    assert np.abs(shifts).max() <= EXP.MaxDeform * EXP.Translation_MaxDeformRatio[0]
    assert 0.1 < (shifts == 0).mean() < 0.3                   # each axis is still with probability 0.2
