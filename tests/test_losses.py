"""Losses against hand computations, analytic fields and SciPy stencils."""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from regnet import RegNetError  # noqa: E402
from regnet.losses import HuberLoss, RegNetLoss, bending_energy, build, huber  # noqa: E402

SPACING = (0.8, 1.3, 2.1)   # (sx, sy, sz) mm, deliberately anisotropic


def physical_grid(shape, spacing):
    """x, y, z in mm on a (z, y, x) grid of the given shape."""
    z, y, x = np.indices(shape, dtype=np.float64)
    return x * spacing[0], y * spacing[1], z * spacing[2]


def energy(dvf, spacing=SPACING):
    return np.asarray(bending_energy(np.asarray(dvf, np.float32), spacing))


def test_quadratic_field_bending_energy_by_hand():
    # u_x = a x^2 + b x y, u_y = c z^2, u_z = d y z  (x, y, z in mm)
    # => u_x: u_xx = 2a, u_xy = b -> 4a^2 + 2b^2;  u_y: u_zz = 2c -> 4c^2;  u_z: u_yz = d -> 2d^2
    # energy = mean over the 3 components = (4a^2 + 2b^2 + 4c^2 + 2d^2) / 3 at every voxel.
    a, b, c, d = 0.03, -0.02, 0.01, 0.05
    x, y, z = physical_grid((6, 7, 8), SPACING)
    dvf = np.stack([a * x**2 + b * x * y, c * z**2, d * y * z], -1)[None]
    expected = (4 * a**2 + 2 * b**2 + 4 * c**2 + 2 * d**2) / 3
    assert energy(dvf) == pytest.approx([expected], rel=1e-4)


def test_single_quadratic_term_is_four_a_squared_over_three():
    a = 0.2
    x, _, _ = physical_grid((5, 5, 5), (1.0, 1.0, 1.0))
    dvf = np.zeros((1, 5, 5, 5, 3))
    dvf[0, ..., 0] = a * x**2
    assert energy(dvf, (1.0, 1.0, 1.0)) == pytest.approx([4 * a**2 / 3], rel=1e-5)


def test_any_affine_field_has_zero_bending_energy():
    rng = np.random.default_rng(4)
    x, y, z = physical_grid((7, 9, 8), SPACING)
    points = np.stack([x, y, z], -1)
    fields = [points @ rng.normal(size=(3, 3)).T * 0.3 + rng.normal(size=3) * 5 for _ in range(3)]
    assert np.abs(energy(np.stack(fields))).max() < 1e-8


def test_energy_of_the_same_array_scales_as_spacing_to_the_minus_four():
    dvf = np.random.default_rng(5).normal(size=(2, 6, 6, 6, 3))
    assert energy(dvf, 2.5) == pytest.approx(energy(dvf, 1.0) / 2.5**4, rel=1e-5)


def test_random_field_matches_scipy_stencils():
    """Independent implementation: 3x3x3 stencils through scipy.ndimage.correlate, interior voxels."""
    dvf = np.random.default_rng(6).normal(size=(1, 6, 7, 8, 3))
    sx, sy, sz = SPACING
    second = np.array([1.0, -2.0, 1.0])
    first = np.array([-0.5, 0.0, 0.5])

    def stencil(z=None, y=None, x=None):
        k = np.ones((1, 1, 1))
        for axis, weights in ((0, z), (1, y), (2, x)):
            shape = [1, 1, 1]
            shape[axis] = 3
            w = np.array([0.0, 1.0, 0.0]) if weights is None else weights
            k = k * w.reshape(shape)
        return k

    terms = [(stencil(x=second) / sx**2, 1), (stencil(y=second) / sy**2, 1), (stencil(z=second) / sz**2, 1),
             (stencil(y=first, x=first) / (sx * sy), 2), (stencil(z=first, x=first) / (sx * sz), 2),
             (stencil(z=first, y=first) / (sy * sz), 2)]
    total = np.zeros((4, 5, 6, 3))
    for comp in range(3):
        for kernel, factor in terms:
            d = ndimage.correlate(dvf[0, ..., comp], kernel, mode="constant")[1:-1, 1:-1, 1:-1]
            total[..., comp] += factor * d**2
    assert energy(dvf) == pytest.approx([total.mean()], rel=1e-4)


def test_patches_thinner_than_three_voxels_have_no_curvature():
    assert np.all(energy(np.ones((2, 1, 1, 1, 3))) == 0)


def test_huber_matches_the_hand_formula():
    rng = np.random.default_rng(7)
    y_true = rng.normal(size=(3, 4, 4, 4, 3)).astype(np.float32) * 3
    y_pred = rng.normal(size=(3, 4, 4, 4, 3)).astype(np.float32) * 3
    delta = 1.5
    e = np.abs(y_pred - y_true)
    assert (e > delta).any() and (e <= delta).any()
    per_element = np.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta))
    expected = per_element.reshape(3, -1).mean(1)
    np.testing.assert_allclose(np.asarray(huber(y_true, y_pred, delta)), expected, rtol=1e-5)
    assert float(HuberLoss(delta)(y_true, y_pred)) == pytest.approx(expected.mean(), rel=1e-5)


def test_regnet_loss_is_huber_plus_weighted_bending_of_the_prediction():
    rng = np.random.default_rng(8)
    y_true = rng.normal(size=(2, 5, 5, 5, 3)).astype(np.float32)
    y_pred = rng.normal(size=(2, 5, 5, 5, 3)).astype(np.float32)
    loss = RegNetLoss(delta=2.0, bending_weight=0.1, spacing=SPACING)
    h = np.asarray(huber(y_true, y_pred, 2.0)).mean()
    b = energy(y_pred).mean()
    assert float(loss(y_true, y_pred)) == pytest.approx(h + 0.1 * b, rel=1e-5)
    parts = {k: float(v) for k, v in loss.components(y_true, y_pred).items()}
    assert parts == pytest.approx({"huber": h, "bending_energy": b, "loss": h + 0.1 * b}, rel=1e-5)
    # the ground truth's curvature does not count: only the prediction is regularised
    assert float(loss(y_pred, y_pred)) == pytest.approx(0.1 * b, rel=1e-5)


def test_loss_serialises_with_its_settings():
    loss = build("regnet", delta=3.0, bending_weight=0.5, spacing=4)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, RegNetLoss)
    assert (again.delta, again.bending_weight, again.spacing) == (3.0, 0.5, (4.0, 4.0, 4.0))


def test_build_errors_name_the_fix():
    with pytest.raises(RegNetError, match="unknown loss 'regnett'; did you mean 'regnet'"):
        build("regnett")
    with pytest.raises(RegNetError, match="unknown option 'detla' for loss 'regnet'; did you mean 'delta'"):
        build("regnet", detla=1.0)
    with pytest.raises(RegNetError, match="Huber delta must be a positive number of mm, got 0"):
        build("huber", delta=0)
    with pytest.raises(RegNetError, match=r"spacing must be a positive number or \(sx, sy, sz\) in mm, got \(1, 1\)"):
        RegNetLoss(spacing=(1, 1))
    with pytest.raises(RegNetError, match="bending_weight must be a number >= 0, got -1"):
        RegNetLoss(bending_weight=-1)
