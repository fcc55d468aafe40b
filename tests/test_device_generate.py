"""The keras.ops (device) generator against SimpleITK, SciPy and the NumPy generator."""
import inspect

import numpy as np
import pytest
import SimpleITK as sitk
from keras import ops
from scipy import ndimage

from regnet import RegNetError
from regnet.deform import bspline, device, device_field
from regnet.deform.augment import next_image as numpy_next_image
from regnet.deform.augment import noise as numpy_noise
from regnet.deform.augment import sponge as numpy_sponge
from regnet.deform.field import jacobian_determinant, warp
from regnet.deform.methods import canny_edges, inputs_of, synthetic_dvf
from regnet.geometry import Geometry
from regnet.io import image_from_array
from regnet.phantom import PhantomSpec, make_phantom
from regnet.seeding import rng_for
from regnet.settings import load_deform_exp
from tests.conftest import run_under_jax

STAGE = 2
EXP = load_deform_exp("3D_max15_D14_K")


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def phantom():
    """A small chest phantom on a 2 mm grid (the stage-2 grid, so 'stage' and 'spacing' agree)."""
    ph = make_phantom(PhantomSpec(seed=11, spacing=2.0, scale=0.6, size=(80, 70, 60), exhale=False))
    image = ph["image"]
    return (image, sitk.GetArrayFromImage(image).astype(np.float32),
            sitk.GetArrayViewFromImage(ph["torso"]) > 0, sitk.GetArrayViewFromImage(ph["lung"]) > 0)


def numpy_field(method, number, key, image, torso, lung, **extra):
    """The NumPy generator's field (with or without its ``stage`` argument)."""
    kwargs = {"stage": STAGE} if "stage" in inspect.signature(synthetic_dvf).parameters else {}
    data = {"image": image, "torso": torso, "lung": lung, **extra}
    data = {k: v for k, v in data.items() if k in inputs_of(method)}  # each method takes only its own inputs
    return synthetic_dvf(method, Geometry.of(image), EXP, number, rng=rng_for(*key, method), **kwargs, **data)


# ---------------------------------------------------------------- B-spline step
@pytest.mark.parametrize("size", [(10, 12, 7), (37, 29, 23), (1, 5, 3)])
def test_transform_domain_is_simpleitks(size):
    origin, length = bspline.transform_domain(size)
    tx = sitk.BSplineTransformInitializer(sitk.Image(list(size), sitk.sitkUInt8), [1, 1, 1], 3)
    np.testing.assert_allclose(origin, tx.GetTransformDomainOrigin(), atol=1e-12)
    np.testing.assert_allclose(length, tx.GetTransformDomainPhysicalDimensions(), atol=1e-12)


def test_dense_field_matches_simpleitk_bspline_transform():
    g = Geometry((37, 29, 23), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    grid = (9.0, 7.0, 11.0)
    coeffs = np.stack([bspline.random_coefficients(g, grid, 4.0, 1, 0.8, np.random.default_rng(s)) for s in (9, 10)])
    ours = np_(device_field.dense_field(coeffs, g))
    for b in range(2):
        tx = sitk.BSplineTransformInitializer(sitk.Image(list(g.size), sitk.sitkUInt8),
                                              list(bspline.grid_cells(g, grid)), 3)
        tx.SetParameters(np.concatenate([coeffs[b, c].ravel() for c in range(3)]).tolist())
        ref = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, list(g.size), (0, 0, 0), (1, 1, 1))
        np.testing.assert_allclose(ours[b], sitk.GetArrayFromImage(ref), atol=1e-4)   # mm
    assert np.abs(ours).max() > 1.0


def test_dense_field_matches_the_numpy_generator_on_an_anisotropic_grid():
    g = Geometry((30, 24, 20), (1.5, 1.2, 2.0), (-10.0, 5.0, 3.0))
    coeffs = bspline.random_coefficients(g, (15, 15, 15), 3.0, 1, 0.8, np.random.default_rng(0))
    np.testing.assert_allclose(np_(device_field.dense_field(coeffs[None], g))[0], bspline.dense_field(coeffs, g),
                               atol=1e-4)


# ---------------------------------------------------------------- filters
def test_gaussian_smoothing_equals_scipy_nearest_mode():
    x = np.random.default_rng(0).normal(size=(2, 20, 24, 30)).astype(np.float32)
    sigma = (1.5, 2.0, 3.0)
    ours = np_(device_field.gaussian_smooth(x, sigma))
    for b in range(2):
        np.testing.assert_allclose(ours[b], ndimage.gaussian_filter(x[b], sigma, mode="nearest"), atol=1e-5)
    # channels-last fields are smoothed per component; a sigma larger than the axis still works
    u = np.random.default_rng(1).normal(size=(1, 9, 10, 11, 3)).astype(np.float32)
    ours = np_(device_field.gaussian_smooth(u, 6.0))
    np.testing.assert_allclose(ours[0, ..., 2], ndimage.gaussian_filter(u[0, ..., 2], 6.0, mode="nearest"), atol=1e-5)


def test_gaussian_smoothing_is_close_to_simpleitks_recursive_filter():
    """The NumPy generator smooths with SimpleITK's IIR Gaussian; its border extends the edge value
    as SciPy's 'nearest' mode does, so the FIR here differs only by the IIR approximation."""
    x = ndimage.gaussian_filter(np.random.default_rng(2).normal(size=(30, 32, 34)), 2).astype(np.float32) * 50
    ref = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(x), 4.0))
    ours = np_(device_field.gaussian_smooth(x[None], 4.0))[0]
    assert np.abs(ours - ref).max() < 0.02 * np.abs(x).max()


def test_cubic_prefilter_equals_simpleitk_bspline_decomposition():
    x = np.random.default_rng(3).normal(size=(2, 9, 20, 31)).astype(np.float32) * 100
    ours = np_(device_field.bspline_prefilter(x))
    for b in range(2):
        ref = sitk.GetArrayFromImage(sitk.BSplineDecomposition(sitk.GetImageFromArray(x[b]), 3))
        np.testing.assert_allclose(ours[b], ref, atol=1e-3)


# ---------------------------------------------------------------- warps and Jacobian
def test_a_plus_6_mm_x_shift_moves_the_x_20_mm_plane_to_14_mm():
    g = Geometry((40, 12, 10), (2.0, 1.0, 1.0), (-30.0, 0.0, 0.0))
    array = np.zeros((1,) + g.shape, np.float32)
    array[..., 25] = 100.0                                        # plane at x = -30 + 2*25 = 20 mm
    u = np.zeros((1,) + g.shape + (3,), np.float32)
    u[..., 0] = 6.0
    for interpolation in ("linear", "cubic", "nearest"):
        out = np_(device_field.warp(array, u, g, interpolation))
        assert np.argmax(out[0, 5, 5]) == 22, interpolation         # x = 14 mm


@pytest.fixture
def smooth_case(rotated_image):
    """A smooth image in HU on a rotated anisotropic grid and a random B-spline field that
    pushes some points outside the image."""
    g = Geometry.of(rotated_image)
    noise = np.random.default_rng(5).normal(size=g.shape)
    smooth = (ndimage.gaussian_filter(noise, 1.5) * 3000 - 200).astype(np.float32)
    u = bspline.dense_field(bspline.random_coefficients(g, (10, 10, 10), 2.5, 0, 0.0, np.random.default_rng(6)), g)
    return g, smooth, u


@pytest.mark.parametrize("interpolation,sitk_name,tolerance", [("cubic", "bspline", 0.5), ("linear", "linear", 0.05),
                                                               ("nearest", "nearest", 0.0)])
def test_warp_agrees_with_simpleitk_given_the_same_field(smooth_case, interpolation, sitk_name, tolerance):
    g, image, u = smooth_case
    ref = sitk.GetArrayFromImage(warp(image_from_array(image, g), u, sitk_name, -1024.0, reference=g))
    ours = np_(device_field.warp(image[None], u[None], g, interpolation, -1024.0))[0]
    outside = ref == -1024.0
    assert 0 < outside.sum() < outside.size // 2                   # the border rule is exercised
    np.testing.assert_array_equal(ours == -1024.0, outside)
    assert np.abs(ours - ref).max() <= tolerance, np.abs(ours - ref).max()   # HU


def test_jacobian_matches_numpy_and_analytic_linear_field(smooth_case):
    g, _, u = smooth_case
    np.testing.assert_allclose(np_(device_field.jacobian_determinant(u[None], g))[0], jacobian_determinant(u, g),
                               atol=1e-5)
    p = g.index_to_physical(np.stack(np.indices(g.shape)[::-1], -1))
    linear = np.zeros(g.shape + (3,), np.float32)
    linear[..., 0] = 0.1 * p[..., 0]                               # u_x = 0.1 x  =>  J = 1.1
    np.testing.assert_allclose(np_(device_field.jacobian_determinant(linear[None], g)), 1.1, atol=1e-4)


# ---------------------------------------------------------------- methods: same statistics as the NumPy generator
def field_stats(u, g):
    jac = jacobian_determinant(u, g)
    return np.abs(u).max(), np.linalg.norm(u, axis=-1).mean(), jac.min(), jac.max()


@pytest.mark.parametrize("dsmooth", [0, 1, 4, 5, 9, 10, 13])
def test_each_method_matches_the_numpy_generator_over_seeds(phantom, dsmooth):
    """Same keys: the coefficients and scalar draws are the NumPy job's, so the fields may differ
    only by the smoothing filter (FIR here, recursive there): per seed, max |u| and mean |u| within
    3 %, the Jacobian range within 0.05, and the fields within 5 % of the limit everywhere."""
    image, _, torso, lung = phantom
    g = Geometry.of(image)
    method, number = EXP.method_of(dsmooth)
    limit = {"respiratory_motion": 1.2 * EXP.MaxDeform, "single_frequency": EXP.MaxDeform *
             EXP.SingleFrequency_MaxDeformRatio[number], "mixed_frequency": EXP.MaxDeform, "zero": 0.0}[method]
    edges = canny_edges(image, EXP) if method == "mixed_frequency" else None
    for seed in range(3):
        key = ("device-test", seed, dsmooth)
        theirs = numpy_field(method, number, key, image, torso, lung, edges=edges)
        rngs = [rng_for(*key, method)]
        inputs = {"torso": torso[None], "lung": lung[None], "stage": STAGE}
        if method == "mixed_frequency":
            inputs = {"edge_masks": device.cpu_edge_masks([edges], [lung], EXP, number, rngs, STAGE), "stage": STAGE}
        ours = np_(device.synthetic_dvf(method, g, EXP, number, rngs, **inputs))[0]
        assert ours.shape == theirs.shape and np.isfinite(ours).all()
        a, b = field_stats(ours, g), field_stats(theirs, g)
        assert a[0] <= limit + 1e-4, (seed, a)
        if method == "zero":
            assert a[0] == 0
            continue
        assert a[0] > 0.1 * limit, (seed, a)                    # mixed frequency is sparse
        np.testing.assert_allclose(a[:2], b[:2], rtol=0.03, err_msg=f"seed {seed}")
        np.testing.assert_allclose(a[2:], b[2:], atol=0.05, err_msg=f"seed {seed}")
        assert np.abs(ours - theirs).max() < 0.05 * limit, (seed, np.abs(ours - theirs).max())


def test_fields_differ_between_seeds_and_translation_is_constant(phantom):
    image, _, torso, _ = phantom
    g = Geometry.of(image)
    rngs = [rng_for("device-test", s, "single_frequency") for s in (1, 2)]
    u = np_(device.single_frequency(g, EXP, 1, rngs, torso=torso[None].repeat(2, 0), stage=STAGE))
    assert np.abs(u[0] - u[1]).max() > 1.0
    exp = load_deform_exp("3D_max15_D14_K", {"3D_max15_D14_K": {"Translation_ZeroProbability": 0.0}})
    t = np_(device.translation(g, exp, 0, [np.random.default_rng(3)]))[0]
    expected = np.random.default_rng(3)
    expected.random(3)
    np.testing.assert_allclose(t[5, 6, 7], expected.uniform(-15, 15, 3), rtol=1e-6)
    assert np.ptp(t.reshape(-1, 3), axis=0).max() == 0


# ---------------------------------------------------------------- augmentations
def test_sponge_equals_the_numpy_sponge(phantom):
    _, array, torso, _ = phantom
    jac = 1 + 0.4 * np.sin(np.arange(array.size, dtype=np.float32) / 50).reshape(array.shape)
    ours = np_(device.sponge(array[None], jac[None], torso[None], EXP, [np.random.default_rng(8)]))[0]
    np.testing.assert_allclose(ours, numpy_sponge(array, jac, torso, EXP, np.random.default_rng(8)), atol=1e-3)


def test_noise_has_the_numpy_mean_and_sigma_inside_the_torso_only(phantom):
    _, array, torso, _ = phantom
    ours = np_(device.noise(array[None], torso[None], 10.0, 10.0, [np.random.default_rng(12)]))[0] - array
    theirs = numpy_noise(array, torso, 10.0, 10.0, np.random.default_rng(12)) - array
    assert np.abs(ours[~torso]).max() == 0
    assert abs(ours[torso].mean() - theirs[torso].mean()) < 0.1     # the same mean draw (int(U(-10, 10)))
    assert abs(ours[torso].std() - 10.0) < 0.2


def test_next_image_follows_the_numpy_next_image(phantom):
    """Same keys: the same field (to the smoothing), the same sponge factor, different noise (sigma 2 HU)."""
    image, array, torso, lung = phantom
    g = Geometry.of(image)
    names = ("NextDVF", "NextSponge", "NextNoise")
    theirs = numpy_next_image(image, image_from_array(torso.astype(np.uint8), g),
                              image_from_array(lung.astype(np.uint8), g), EXP,
                              {k: rng_for("next", k) for k in names})
    ours = device.next_image(array[None], torso[None], lung[None], g, EXP, [{k: rng_for("next", k) for k in names}],
                             STAGE)
    their_dvf = sitk.GetArrayFromImage(theirs["field"])
    np.testing.assert_allclose(np_(ours["dvf"])[0], their_dvf, atol=1e-4)  # no smoothing in next-image fields
    assert np.abs(np_(ours["dvf"])).max() <= EXP.NextIm_MaxDeform + 1e-4
    their_image = sitk.GetArrayFromImage(theirs["image"]).astype(np.float32)
    diff = np_(ours["image"])[0] - their_image
    their_torso = sitk.GetArrayViewFromImage(theirs["torso"]) > 0
    np.testing.assert_array_equal(np_(ours["torso"])[0] > 0, their_torso)
    np.testing.assert_array_equal(np_(ours["lung"])[0] > 0, sitk.GetArrayViewFromImage(theirs["lung"]) > 0)
    assert np.abs(diff[~their_torso]).max() <= 1.0                  # rounding only: no noise outside
    assert abs(diff[their_torso].std() - 2 * np.sqrt(2)) < 0.5      # two independent N(., 2) noises


# ---------------------------------------------------------------- whole pairs
def test_generate_pairs_is_deterministic_and_consistent(phantom):
    image, array, torso, lung = phantom
    g = Geometry.of(image)
    edges = canny_edges(image, EXP)
    dsmooths = [0, 9, 18]                         # RM on the original; MF and SF on next images
    keys = [("device-pairs", "phantom", "11", 0, d, STAGE) for d in dsmooths]
    batch = [np.repeat(a[None], 3, 0) for a in (array, torso, lung, edges)]

    def run(k):
        out = device.generate_pairs(*batch[:3], g, EXP, k, dsmooths, stage=STAGE, edges=batch[3])
        return {name: np_(v) for name, v in out.items()}

    first, again = run(keys), run(keys)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    np.testing.assert_array_equal(first["moving"][0], array)           # dsmooth 0 deforms the original itself
    assert np.abs(first["moving"][1:] - array).mean() > 5              # dsmooth > 0 a next image
    for b, d in enumerate(dsmooths):                                   # the fixed image is moving(x + u(x)), augmented
        method, _ = EXP.method_of(d)
        assert np.abs(first["dvf"][b]).max() > 0.5, method
        clean = np_(device_field.warp(first["moving"][b:b + 1], first["dvf"][b:b + 1], g, "cubic", -2048.0))[0]
        inside = first["fixed_torso"][b] > 0
        assert np.abs(first["fixed"][b] - clean)[~inside].max() <= 0.5
        factor = rng_for(*keys[b], "Sponge").uniform(*EXP.Sponge_ScaleRange)
        jac = np.clip(jacobian_determinant(first["dvf"][b], g), *EXP.Sponge_JacobianClip)
        scale = 1.0 + (factor - 1.0) * np.clip((-200.0 - clean) / 400.0, 0.0, 1.0)  # factor on parenchyma only
        residual = (first["fixed"][b] - ((clean + 1000) * jac * scale - 1000))[inside]   # the noise, N(mean, 10)
        assert abs(residual.std() - EXP.Im_NoiseSigma) < 0.5 and abs(residual.mean()) <= EXP.Im_NoiseAverage + 0.5
    other = run([k[:-1] + ("other",) for k in keys])
    assert np.abs(other["dvf"] - first["dvf"]).max() > 1.0


# ---------------------------------------------------------------- errors
def test_errors_name_the_problem(phantom):
    image, array, torso, lung = phantom
    g = Geometry.of(image)
    with pytest.raises(RegNetError, match="samples \\[1\\] of the batch have none"):
        device.respiratory_motion(g, EXP, 0, [rng_for(1), rng_for(2)], torso=np.stack([torso, torso]),
                                  lung=np.stack([lung, np.zeros_like(lung)]), stage=STAGE)
    with pytest.raises(RegNetError, match="needs edges=\\(B, z, y, x\\)"):
        device.mixed_frequency(g, EXP, 0, [rng_for(1)], stage=STAGE)
    with pytest.raises(RegNetError, match="Unknown deform method 'spline'"):
        device.synthetic_dvf("spline", g, EXP, 0, [rng_for(1)])
    with pytest.raises(RegNetError, match="1 images but 2 keys"):
        device.generate_pairs(array[None], torso[None], lung[None], g, EXP, [(1,), (2,)], [0, 1])
    with pytest.raises(RegNetError, match="needs the Canny edges"):
        device.generate_pairs(array[None], torso[None], lung[None], g, EXP, [(1,)], [9], stage=STAGE)
    occluded = load_deform_exp("3D_max15_D14_K", {"3D_max15_D14_K": {"DeformedImExt": ["Clean", "Occluded"]}})
    with pytest.raises(RegNetError, match="no 'Occluded' augmentation"):
        device.intensity_chain(array[None], array[None], torso[None], occluded, [{}])
    with pytest.raises(RegNetError, match="Unknown interpolation 'quintic'"):
        device_field.warp(array[None], np.zeros((1,) + g.shape + (3,), np.float32), g, "quintic")
    with pytest.raises(RegNetError, match="must be on the grid"):
        device_field.warp(array[None, :5], np.zeros((1,) + g.shape + (3,), np.float32), g)
    with pytest.raises(RegNetError, match="Unknown coefficient normalisation 'both'"):
        bspline.normalize_coefficients(np.ones(3), 1.0, "both")


# ---------------------------------------------------------------- JAX backend
JAX_SCRIPT = """
import sys
import numpy as np
from keras import ops
from regnet.deform import device, device_field
from regnet.geometry import Geometry
from regnet.settings import load_deform_exp
g = Geometry((20, 18, 16), (2.0, 2.0, 2.0))
data = np.load(sys.argv[1])
u = ops.convert_to_numpy(device_field.dense_field(data["coeffs"][None], g))[0]
w = ops.convert_to_numpy(device_field.warp(data["image"][None], u[None], g, "cubic", -1024.0))[0]
exp = load_deform_exp("3D_max15_D14_K")
torso = np.ones((1,) + g.shape, np.float32)
out = device.generate_pairs(data["image"][None], torso, torso, g, exp, [("a",)], [14], 2)  # next image + RM
assert "tensorflow" not in sys.modules and "SimpleITK" not in sys.modules, "imported a TF/SimpleITK module"
np.savez(sys.argv[2], u=u, w=w, fixed=ops.convert_to_numpy(out["fixed"]))
"""


def test_runs_under_jax_without_tensorflow_or_simpleitk(tmp_path):
    pytest.importorskip("jax")
    g = Geometry((20, 18, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    coeffs = bspline.random_coefficients(g, (12, 12, 12), 2.0, 0, 0.0, np.random.default_rng(1)).astype(np.float32)
    image = (ndimage.gaussian_filter(np.random.default_rng(2).normal(size=g.shape), 1.5) * 3000).astype(np.float32)
    np.savez(tmp_path / "in.npz", coeffs=coeffs, image=image)
    done = run_under_jax(JAX_SCRIPT, tmp_path / "in.npz", tmp_path / "out.npz")
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    u = bspline.dense_field(coeffs.astype(np.float64), g)
    np.testing.assert_allclose(out["u"], u, atol=1e-4)
    ref = sitk.GetArrayFromImage(warp(image_from_array(image, g), u, "bspline", -1024.0, reference=g))
    assert np.abs(out["w"] - ref).max() <= 0.5
    assert out["fixed"].shape == (1,) + g.shape and np.isfinite(out["fixed"]).all()
