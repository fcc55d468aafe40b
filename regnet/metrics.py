"""Validation metrics: end-point error (mm) overall and per class of true displacement magnitude.

Written with ``keras.ops`` only, so they run on every Keras backend.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from regnet.deform.field import magnitude_class_edges

PACKAGE = "regnet"


@keras.saving.register_keras_serializable(package=PACKAGE)
class EndPointError(keras.metrics.Metric):
    """Mean |u_pred - u_true| (mm) over the voxels whose true |u| lies in [low, high)."""

    def __init__(self, low: float = 0.0, high: float | None = None, name: str = "epe", **kwargs):
        super().__init__(name=name, **kwargs)
        self.low, self.high = float(low), None if high is None else float(high)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        norm = ops.sqrt(ops.sum(ops.square(y_true), axis=-1))
        inside = ops.cast(norm >= self.low, "float32")
        if self.high is not None:
            inside = inside * ops.cast(norm < self.high, "float32")
        self.total.assign_add(ops.sum(self._error(y_true, y_pred, norm) * inside))
        self.count.assign_add(ops.sum(inside))

    def _error(self, y_true, y_pred, norm):
        """|u_pred - u_true| per voxel (``norm`` = |u_true|)."""
        return ops.sqrt(ops.sum(ops.square(ops.cast(y_pred, "float32") - y_true), axis=-1))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPredictionError(EndPointError):
    """What :class:`EndPointError` would be for a network that predicts u = 0 (mean |u_true|): the
    baseline every end-point error should be read against, measured on the same batches."""

    def _error(self, y_true, y_pred, norm):
        return norm  # |0 - u_true|, already computed


def class_metrics(thresholds) -> list[EndPointError]:
    """EPE overall, the zero prediction's (``zero_epe``), then one per class of
    :func:`regnet.deform.field.magnitude_class_edges` (epe_c0, epe_c1, ...): the classes the reader balances."""
    classes = [EndPointError(lo, None if math.isinf(hi) else hi, name=f"epe_c{k}")
               for k, (lo, hi) in enumerate(magnitude_class_edges(thresholds))]
    return [EndPointError(name="epe"), ZeroPredictionError(name="zero_epe"), *classes]
