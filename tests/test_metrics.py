"""Validation metrics against NumPy: end-point error overall, per magnitude class, and of u = 0."""
import numpy as np
import pytest

pytest.importorskip("keras")

from regnet.metrics import EndPointError, ZeroPredictionError, class_metrics  # noqa: E402


def fields(seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(0.0, 3.0, (2, 5, 6, 7, 3)).astype(np.float32)
    y_pred = (y_true + rng.normal(0.0, 0.5, y_true.shape)).astype(np.float32)
    return y_true, y_pred


def test_end_point_error_overall_and_per_class_equal_numpy():
    y_true, y_pred = fields()
    error = np.linalg.norm(y_pred - y_true, axis=-1)
    norm = np.linalg.norm(y_true, axis=-1)
    metrics = class_metrics([1.5, 4.0, 15.0])
    assert [m.name for m in metrics] == ["epe", "zero_epe", "epe_c0", "epe_c1", "epe_c2"]
    for m in metrics:  # two updates: the totals accumulate over batches
        m.update_state(y_true[:1], y_pred[:1])
        m.update_state(y_true[1:], y_pred[1:])
    expected = [error.mean(), norm.mean(), error[norm < 1.5].mean(), error[(norm >= 1.5) & (norm < 4)].mean(),
                error[norm >= 4].mean()]
    np.testing.assert_allclose([float(m.result()) for m in metrics], expected, rtol=1e-5)


def test_zero_prediction_error_ignores_the_prediction_and_round_trips_its_config():
    y_true, y_pred = fields(1)
    zero = ZeroPredictionError(1.5, None, name="z")
    zero.update_state(y_true, y_pred)
    norm = np.linalg.norm(y_true, axis=-1)
    np.testing.assert_allclose(float(zero.result()), norm[norm >= 1.5].mean(), rtol=1e-5)
    again = ZeroPredictionError.from_config(zero.get_config())
    assert (again.low, again.high, again.name) == (1.5, None, "z")
    empty = EndPointError(100.0)  # no voxel in the class: 0, not NaN
    empty.update_state(y_true, y_pred)
    assert float(empty.result()) == 0.0
