"""Networks: sizes, parameter counts by hand, fixed layers against SciPy, registry errors, save/reload, JAX."""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util  # noqa: E402
import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

import regnet.networks as nets  # noqa: E402
from regnet import RegNetError  # noqa: E402
from regnet.losses import RegNetLoss  # noqa: E402
from regnet.networks.layers import (  # noqa: E402
    Decimation,
    IntegerNoise,
    IntensityNormalization,
    TrilinearUpsample,
    decimation_kernel,
)
from regnet.networks.spec import NetworkOptions  # noqa: E402
from tests.conftest import run_under_jax

NAMES = ["crop4_connection", "decimation4", "unet1"]
TINY = 1 / 16                      # every layer 1-3 channels: fast on CPU, same sizes as width 1
PAPER = {"crop4_connection": (101, 21, 1.263e6), "decimation4": (105, 21, 1.201e6), "unet1": (125, 125, 0.233e6)}


def chain(c, sizes):
    return [(c(a), c(b)) for a, b in zip(sizes[:-1], sizes[1:])]


def hand_parameter_count(name, width=1.0, batch_norm=True):
    """Sum over the spec's 3x3x3 convolutions of weights + bias (+ BN gamma, beta), plus the 1x1x1 head."""
    c = NetworkOptions(width=width).channels
    r1 = [(2, c(16))] + chain(c, [16, 20, 24, 28, 32, 32, 32])
    fc = [(c(32) + 2 * c(40), c(120)), (c(120), c(50))]
    up4 = [(c(46) + c(36), c(46)), (c(46) + c(16), c(40))]
    if name == "crop4_connection":
        convs = (r1 + [(c(16), c(30))] + chain(c, [30, 30, 32, 34, 36, 38]) + [(c(38) + c(16), c(40))]
                 + [(c(30), c(40))] + chain(c, [40, 40, 42, 44, 46]) + up4 + fc)
        last = c(50)
    elif name == "decimation4":
        convs = (r1 + [(2, c(20))] + chain(c, [20, 30, 32, 34, 36, 38]) + [(c(38) + c(16), c(40))]
                 + [(2, c(30))] + chain(c, [30, 40, 42, 44, 46]) + up4 + fc)
        last = c(50)
    else:
        convs = ([(2, c(12))] + chain(c, [12, 24, 28, 32, 40, 44])
                 + [(c(44) + c(28), c(32)), (c(32) + c(24), c(18)), (c(18) + c(12), c(12))])
        last = c(12)
    per_output = 3 if batch_norm else 1
    return sum(27 * i * o + per_output * o for i, o in convs) + 3 * last + 3


@pytest.mark.parametrize("name", NAMES)
def test_paper_sizes_and_parameter_counts(name):
    size_in, size_out, approx = PAPER[name]
    model = nets.build(name)
    assert model.input_shape == (None, size_in, size_in, size_in, 2)
    assert model.output_shape == (None, size_out, size_out, size_out, 3)
    assert (2 * nets.patch_radii(name)[0] + 1, 2 * nets.patch_radii(name)[1] + 1) == (size_in, size_out)
    count = nets.count_parameters(model)
    assert count == hand_parameter_count(name)
    assert abs(count - approx) < 500                     # the spec's rounded figure
    narrow = nets.build(name, width=0.3, batch_norm=False)
    assert nets.count_parameters(narrow) == hand_parameter_count(name, 0.3, batch_norm=False)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in narrow.layers)


def test_patch_radii_and_resize_units_of_the_paper():
    assert [nets.patch_radii(n) for n in NAMES] == [(50, 10), (52, 10), (62, 62)]
    assert [nets.resize_unit(n) for n in NAMES] == [4, 4, 8]
    assert nets.output_size("crop4_connection", 101 + 4 * 7) == 21 + 4 * 7
    assert nets.output_size("decimation4", 105 + 4 * 10) == 21 + 4 * 10
    assert nets.output_size("unet1", 125 + 8 * 3) == 125 + 8 * 3
    assert nets.input_size("crop4_connection", 189) == 269


@pytest.mark.parametrize("name", NAMES)
def test_the_graph_builds_exactly_for_the_sizes_the_rule_allows(name):
    """Shape inference alone (no validation) must fail for every size the rule rejects, and agree where it accepts."""
    spec = nets.get_spec(name)
    sizes = [spec.min_input - spec.resize_unit, *range(spec.min_input - 1, spec.min_input + spec.resize_unit + 1)]
    options = NetworkOptions(width=TINY)
    for n in sizes:
        try:
            out = spec.graph(keras.Input((n, n, n, 2)), options).shape[1]
        except ValueError:
            out = None
        assert out == (spec.output_size(n) if spec.valid_input(n) else None), n


@pytest.mark.parametrize("name", NAMES)
def test_a_dynamic_tiny_network_runs_on_larger_and_smaller_inputs(name):
    spec = nets.get_spec(name)
    model = nets.build(name, input_size=None, width=TINY)
    rng = np.random.default_rng(0)
    for n in (spec.min_input, spec.paper_input + spec.resize_unit):
        x = rng.uniform(-1000, 500, size=(1, n, n, n, 2)).astype(np.float32)
        m = nets.output_size(name, n)
        y = np.asarray(model(x, training=False))
        assert y.shape == (1, m, m, m, 3) and np.isfinite(y).all()


def test_registry_and_option_errors_name_the_fix(tmp_path):
    with pytest.raises(RegNetError, match="unknown network 'crop4_conection'; did you mean 'crop4_connection'"):
        nets.build("crop4_conection")
    with pytest.raises(RegNetError, match="unknown network 'decimation5'; did you mean 'decimation4'"):
        nets.patch_radii("decimation5")
    with pytest.raises(RegNetError, match="unknown network option 'widht'; did you mean 'width'"):
        nets.build("unet1", widht=0.5)
    with pytest.raises(RegNetError, match="width must be a positive number, got 0"):
        nets.build("unet1", width=0)
    with pytest.raises(RegNetError, match=r"crop4_connection cannot take an input of 103 voxels per side: valid sizes "
                                          r"are 101 \+ 4k, at least 81 \(nearest: 101 or 105\)"):
        nets.build("crop4_connection", input_size=103)
    with pytest.raises(RegNetError, match=r"unet1 cannot take an input of 20 .* \(nearest: 21\)"):
        nets.output_size("unet1", 20)
    with pytest.raises(RegNetError, match="unknown intensity mode 'hu'; use one of window, raw"):
        nets.build("unet1", intensity={"mode": "hu"})
    with pytest.raises(RegNetError, match="intensity window needs high > low"):
        nets.build("unet1", intensity={"mode": "window", "low": 100, "high": -100})
    with pytest.raises(RegNetError, match="model file not found"):
        nets.load(tmp_path / "missing.keras")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(RegNetError, match="holds a Sequential, not a RegNet network"):
        nets.load(tmp_path / "plain.keras")


def test_upsampler_matches_scipy_linear_interpolation_n_to_2n_plus_1():
    x = np.random.default_rng(1).normal(size=(1, 4, 5, 6, 2)).astype(np.float32)
    y = np.asarray(TrilinearUpsample()(x))
    assert y.shape == (1, 9, 11, 13, 2)
    # output m sits at input coordinate (m - 1) / 2; outside [0, n-1] the end value is replicated
    coords = np.meshgrid(*[(np.arange(2 * n + 1) - 1) / 2 for n in (4, 5, 6)], indexing="ij")
    for ch in range(2):
        expected = ndimage.map_coordinates(x[0, ..., ch].astype(np.float64), coords, order=1, mode="nearest")
        np.testing.assert_allclose(y[0, ..., ch], expected, atol=1e-6)
    np.testing.assert_allclose(y[:, 1::2, 1::2, 1::2], x, atol=1e-6)              # input i lands on 2i+1
    np.testing.assert_allclose(y[:, 2, 1, 1], (x[:, 0, 0, 0] + x[:, 1, 0, 0]) / 2, atol=1e-6)
    assert TrilinearUpsample().compute_output_shape((None, None, 7, 3, 4)) == (None, None, 15, 7, 4)


def test_decimation_kernel_is_a_normalised_diamond():
    for size in (7, 15):
        k = decimation_kernel(size).astype(np.float64)
        assert k.shape == (size,) * 3 and k.sum() == pytest.approx(1.0, abs=1e-6)
        t = np.abs(np.linspace(-2, 2, size + 2)[1:-1])
        s = t[:, None, None] + t[None, :, None] + t[None, None, :]
        for value in np.unique(np.round(s, 9)):                   # constant on |x|+|y|+|z| = const
            assert np.ptp(k[np.isclose(s, value)]) < 1e-9
        assert np.all(k[s >= 2] == 0) and np.all(k[s < 1.9] > 0)
    k7 = decimation_kernel(7)
    # t = -1.5 ... 1.5 step 0.5: B(0) = 2/3, B(0.5) = 0.5 * 0.125 - 0.25 + 2/3 = 23/48
    assert k7[3, 3, 3] / k7[3, 3, 4] == pytest.approx((2 / 3) / (23 / 48), rel=1e-6)


def test_decimation_layer_is_per_channel_correlation_then_stride():
    x = np.random.default_rng(2).normal(size=(1, 19, 17, 21, 2)).astype(np.float32)
    y = np.asarray(Decimation(7, 2)(x))
    assert y.shape == (1, 7, 6, 8, 2)
    k = decimation_kernel(7).astype(np.float64)
    for ch in range(2):
        full = ndimage.correlate(x[0, ..., ch].astype(np.float64), k, mode="constant")
        np.testing.assert_allclose(y[0, ..., ch], full[3::2, 3::2, 3::2][:7, :6, :8], atol=1e-5)


def test_intensity_window_and_raw():
    hu = np.array([-2048, -1000, -500, 0, 1000, 3000], np.float32).reshape(1, 6, 1, 1, 1)
    window = np.asarray(IntensityNormalization("window", -1000, 1000)(hu)).ravel()
    np.testing.assert_allclose(window, [-1, -1, -0.5, 0, 1, 1])
    unclipped = np.asarray(IntensityNormalization("window", -1000, 1000, clip=False)(hu)).ravel()
    np.testing.assert_allclose(unclipped, [-2.048, -1, -0.5, 0, 1, 3])
    np.testing.assert_array_equal(np.asarray(IntensityNormalization("raw")(hu)), hu)
    model = nets.build("unet1", input_size=21, width=TINY)
    assert model.get_config()["options"]["intensity"] == {"mode": "window", "low": -1000.0, "high": 1000.0,
                                                          "clip": True}


def test_input_noise_is_integer_hu_in_training_only():
    x = np.full((2, 9, 9, 9, 2), -300.0, np.float32)
    layer = IntegerNoise(2.0, seed=1)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    noisy = np.asarray(layer(x, training=True)) - x
    assert np.array_equal(noisy, np.round(noisy)) and 1.0 < noisy.std() < 4.0


@pytest.mark.parametrize("name", NAMES)
def test_save_and_reload_gives_the_same_network(name, tmp_path):
    spec = nets.get_spec(name)
    n = spec.min_input + (0 if spec.full_image else spec.resize_unit)
    model = nets.build(name, input_size=n, width=TINY, intensity={"mode": "raw"}, seed=5)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1000, 500, size=(2, n, n, n, 2)).astype(np.float32)
    # every weight random, BN variances positive: the reload must restore each one, not a default
    model.set_weights([np.abs(rng.normal(size=w.shape)) + 0.5 if "variance" in w.path else rng.normal(size=w.shape)
                       for w in model.weights])
    path = tmp_path / f"{name}.keras"
    model.save(path)
    again = nets.load(path)
    assert again.get_config() == model.get_config()
    assert again.get_config()["options"] == {"width": TINY, "batch_norm": True, "intensity": {"mode": "raw"},
                                             "input_noise": 2.0, "seed": 5}
    np.testing.assert_array_equal(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)))
    dynamic = nets.resize(again, None)
    np.testing.assert_allclose(np.asarray(dynamic(x, training=False)), np.asarray(model(x, training=False)),
                               atol=1e-5)


def test_one_training_step_with_the_regnet_loss_moves_weights_and_batch_statistics():
    model = nets.build("unet1", input_size=21, width=TINY, seed=0)
    model.compile(optimizer="adam", loss=RegNetLoss(delta=1.0, bending_weight=0.1, spacing=2.0), run_eagerly=True)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1000, 500, size=(2, 21, 21, 21, 2)).astype(np.float32)
    before = [w.numpy() for w in model.weights]
    history = model.fit(x, rng.normal(size=(2, 21, 21, 21, 3)).astype(np.float32), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = {w.path.split("/")[-1] for w, b in zip(model.weights, before) if not np.array_equal(w.numpy(), b)}
    assert {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"} <= moved


JAX_SCRIPT = r"""
import json, sys
import numpy as np
import regnet.networks as nets, regnet.losses
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
folder = sys.argv[1]
report = {"tensorflow_imported": "tensorflow" in sys.modules}
for name in json.loads(sys.argv[2]):
    model = nets.load(f"{folder}/{name}.keras")
    x = np.load(f"{folder}/{name}_x.npy")
    y = model.predict(x, verbose=0)           # one jit-compiled graph: much faster than eager op-by-op on JAX
    report[name] = {"shape": list(y.shape), "max_diff": float(np.abs(y - np.load(f"{folder}/{name}_y.npy")).max())}
loss = regnet.losses.RegNetLoss(spacing=(1, 2, 3))
report["loss"] = float(loss(np.zeros((1, 5, 5, 5, 3), "float32"), np.ones((1, 5, 5, 5, 3), "float32")))
report["tensorflow_imported"] = report["tensorflow_imported"] or "tensorflow" in sys.modules
print(json.dumps(report))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (pip install jax)")
def test_jax_backend_gives_the_same_outputs_from_the_same_file(tmp_path):
    expected = {}
    for name in NAMES:
        spec = nets.get_spec(name)
        n = spec.min_input + spec.resize_unit
        model = nets.build(name, input_size=n, width=TINY)
        x = np.random.default_rng(4).uniform(-1000, 500, size=(1, n, n, n, 2)).astype(np.float32)
        y = np.asarray(model(x, training=False))
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_y.npy", y)
        expected[name] = list(y.shape)
    run = run_under_jax(JAX_SCRIPT, tmp_path, json.dumps(NAMES))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["tensorflow_imported"] is False
    for name in NAMES:
        assert report[name]["shape"] == expected[name]
        assert report[name]["max_diff"] < 1e-4, (name, report[name])
    assert report["loss"] == pytest.approx(0.5, rel=1e-6)        # Huber of a 1 mm error; a constant field is flat
