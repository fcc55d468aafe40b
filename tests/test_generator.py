"""Synthetic DVF methods and augmentations: limits, masks, directions, reproducibility."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from regnet import RegNetError
from regnet.deform.augment import noise, sponge
from regnet.deform.bspline import random_bspline_field
from regnet.deform.field import jacobian_determinant
from regnet.deform.methods import (
    _box_dilate,
    canny_edges,
    dilated_edge_mask,
    inputs_of,
    normalize_max,
    smooth,
    synthetic_dvf,
    voxels,
)
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
    image = np.full(g.shape, -800.0, np.float32)               # parenchyma: J and the random factor
    image[:, :, 10:] = 0.0                                     # water: J only (issue 15 item 6)
    factor = rng_for("sponge").uniform(*EXP.Sponge_ScaleRange)
    assert abs(factor - 1) > 0.01
    out = sponge(image, jac, torso, EXP, rng_for("sponge"))
    np.testing.assert_allclose(out[:, :, :10], (-800 + 1000) * 1.2 * factor - 1000, atol=1e-2)  # denser: HU up
    np.testing.assert_allclose(out[:, :, 10:], (0 + 1000) * 1.2 - 1000, atol=1e-2)


def test_noise_only_inside_the_torso_with_the_set_sigma():
    torso = np.zeros((40, 40, 40), bool)
    torso[5:35, 5:35, 5:35] = True
    out = noise(np.zeros(torso.shape, np.float32), torso, 10.0, 10.0, rng_for("noise"))
    assert np.all(out[~torso] == 0)
    assert out[torso].std() == pytest.approx(10.0, rel=0.02)
    assert abs(out[torso].mean() - round(out[torso].mean())) < 0.1  # an integer mean, as RegNet


def test_sponge_and_noise_slab_by_slab_equal_whole_volume_numpy(monkeypatch):
    """The in-place steps work a few planes at a time; the numbers are those of one whole-torso
    NumPy expression with one draw of the noise (the generator's stream continues across slabs)."""
    from regnet.deform import augment
    from regnet.deform.sponge_rule import sponge_factor_weight

    monkeypatch.setattr(augment, "SLAB_VOXELS", 700)  # 17 x 19 planes: one plane per slab
    rng = np.random.default_rng(4)
    image = rng.normal(-400, 400, size=(23, 17, 19)).astype(np.float32)
    jac = rng.uniform(0.3, 2.0, size=image.shape).astype(np.float32)
    torso = rng.random(image.shape) < 0.6
    factor = rng_for("slab-sponge").uniform(*EXP.Sponge_ScaleRange)
    hu = image[torso]
    expected = image.copy()
    expected[torso] = ((hu + 1000) * np.clip(jac[torso], *EXP.Sponge_JacobianClip)
                       * (1 + (factor - 1) * sponge_factor_weight(hu)) - 1000)
    np.testing.assert_allclose(sponge(image, jac, torso, EXP, rng_for("slab-sponge")), expected, atol=2e-3)
    draw = rng_for("slab-noise")
    mean = float(int(draw.uniform(-5.0, 5.0)))
    expected = image.copy()
    expected[torso] += draw.standard_normal(int(torso.sum()), dtype=np.float32) * np.float32(20) + np.float32(mean)
    np.testing.assert_array_equal(noise(image, torso, 20.0, 5.0, rng_for("slab-noise")), expected)


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
    mask = np.random.default_rng(0).random((30, 31, 32)) > 0.97
    np.testing.assert_array_equal(_box_dilate(mask), ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool)))
    for axis in range(3):
        element = np.zeros((9, 9, 9), bool)
        # RegNet's directional element
        element[tuple(slice(0, 5) if k == axis else slice(None) for k in range(3))] = True
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


def _sitk_smooth(array, sigma_voxels, vector=False):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, np.float32), isVector=vector)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_voxels))


def test_a_2_mm_grid_gives_regnets_stage_2_field(phantom):
    """RegNet divided its stage-1 voxel lengths (sigmas, block radius) by ``stage``; the methods now
    convert mm through the grid's spacing. On a 2 mm grid both must give the same field: here the
    old stage-2 formulas, written out by hand (smoothing by SimpleITK), against the methods (smoothing
    by the compiled recursive Gaussian: the same filter, equal to float32 rounding, 1e-5 mm)."""
    image, torso, lung = phantom
    g = Geometry.of(image)
    assert g.spacing == (2.0, 2.0, 2.0)
    # single frequency D1: grid sigma 0.8/2, background sigma 8/2 * M/7 voxels
    m = EXP.MaxDeform * EXP.SingleFrequency_MaxDeformRatio[1]
    rng = rng_for("old formula", 5)
    old = random_bspline_field(g, EXP.SingleFrequency_BSplineGridSpacing[1], m,
                               EXP.SingleFrequency_SetGridBorderToZero[1], 0.8 / 2, rng, "single")
    old = normalize_max(_sitk_smooth(old * torso[..., None], 8.0 / 2 * m / 7.0, vector=True), m)
    new = synthetic_dvf("single_frequency", g, EXP, 1, rng_for("old formula", 5), torso=torso, lung=lung)
    assert np.abs(new).max() > 1.0
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
    # mixed frequency D0: block radius round(20/2), grid sigma 0.5/2, component sigmas U(7/2, 12/2)
    m = EXP.MaxDeform * EXP.MixedFrequency_MaxDeformRatio
    rng = rng_for("old formula", 9)
    near = _box_dilate(lung)
    mask = dilated_edge_mask(canny_edges(image, EXP, near), near, EXP.MixedFrequency_Np[0], 10, rng)
    old = random_bspline_field(g, EXP.MixedFrequency_BSplineGridSpacing[0], m, 0, 0.5 / 2, rng, "mixed")
    for c in range(3):
        old[..., c] = _sitk_smooth(old[..., c] * mask[c], rng.uniform(7.0 / 2, 12.0 / 2))
    old = normalize_max(old, m)
    new = synthetic_dvf("mixed_frequency", g, EXP, 0, rng_for("old formula", 9), image=image, torso=torso, lung=lung)
    assert np.abs(new).max() > 0.5
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)


def test_smoothing_lengths_are_mm_on_an_anisotropic_grid():
    """A sigma of 4 mm is 4 voxels along x and y but 2 along z when z is sampled every 2 mm: the
    smoothed impulse has the same physical standard deviation along every axis, 4 mm (to the
    recursive filter's approximation: it measures 3.87 mm)."""
    g = Geometry((61, 61, 41), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    assert voxels(4.0, g) == (2.0, 4.0, 4.0)
    impulse = np.zeros(g.shape, np.float32)
    impulse[20, 30, 30] = 1.0
    out = smooth(impulse, voxels(4.0, g))
    stds = []
    for axis, (centre, spacing) in enumerate(((20, 2.0), (30, 1.0), (30, 1.0))):
        profile = out.sum(axis=tuple(k for k in range(3) if k != axis))
        mm = (np.arange(len(profile)) - centre) * spacing
        stds.append(np.sqrt((profile * mm ** 2).sum() / profile.sum()))
    assert stds == pytest.approx([4.0] * 3, rel=0.05)
    assert stds[0] == pytest.approx(stds[2], rel=0.002)      # z (2 mm voxels) as wide as x (1 mm voxels)


def test_a_misspelled_or_foreign_keyword_is_an_error_not_ignored(phantom):
    image, torso, lung = phantom
    g = Geometry.of(image)
    with pytest.raises(RegNetError, match=r"'single_frequency' got unexpected keyword\(s\) 'lugn'; it takes 'torso', "
                                          r"'lung'"):
        synthetic_dvf("single_frequency", g, EXP, 0, rng_for("kw"), torso=torso, lugn=lung)
    with pytest.raises(RegNetError, match=r"'zero' got unexpected keyword\(s\) 'stage', 'torso'; it takes no inputs"):
        synthetic_dvf("zero", g, EXP, 0, rng_for("kw"), torso=torso, stage=2)
    with pytest.raises(RegNetError, match=r"Unknown deform method 'single_frequncy'; choose one of"):
        synthetic_dvf("single_frequncy", g, EXP, 0, rng_for("kw"))
    assert inputs_of("mixed_frequency") == ("image", "torso", "lung", "edges")
