"""Shared building blocks of the RegNet networks (Keras 3 only, so they run on TensorFlow and JAX).

Fixed (weight-free) layers are computed from their config on every call, so a saved model carries
no copy of their kernels and a reloaded model cannot drift from the formulas below.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from regnet import RegNetError

PACKAGE = "regnet"


def decimation_kernel(size: int) -> np.ndarray:
    """RegNet's 'bspline' down-sampling kernel: B(|x|+|y|+|z|) sampled on ``linspace(-2, 2, size+2)[1:-1]``.

    B is the cubic B-spline, so the kernel is a non-separable *diamond* (constant on |x|+|y|+|z|), not
    a tensor-product B-spline; it is normalised to sum 1 and values below 1e-6 are set to 0, as in
    the original. ``size`` 15 goes with stride 4, 7 with stride 2.
    """
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise RegNetError(f"decimation kernel size must be a positive odd int, got {size!r}")
    t = np.linspace(-2.0, 2.0, size + 2)[1:-1]
    s = np.abs(t)[:, None, None] + np.abs(t)[None, :, None] + np.abs(t)[None, None, :]
    kernel = np.where(s < 1, 0.5 * s**3 - s**2 + 2.0 / 3.0,
                      np.where(s <= 2, (2.0 - s) ** 3 / 6.0, 0.0))
    kernel = kernel / kernel.sum()
    kernel[np.abs(kernel) < 1e-6] = 0.0
    return kernel.astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TrilinearUpsample(layers.Layer):
    """Fixed trilinear up-sampler n -> 2n+1 per axis (RegNet's 'Up').

    Input voxel i lands on output 2i+1, even outputs are the average of their two neighbours and both
    ends are replicated (output 0 = input 0, output 2n = input n-1). Computed as: replicate-pad by 1,
    repeat every voxel twice, 2x2x2 box average (stride 1), crop 1 each side; that equals the
    original's transposed convolution with [.5, 1, .5] per axis, works per channel and accepts
    dynamic (None) spatial sizes on every backend.
    """

    def call(self, x):
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]], mode="symmetric")
        for axis in (1, 2, 3):
            x = ops.repeat(x, 2, axis=axis)
        x = ops.average_pool(x, pool_size=2, strides=1, padding="valid")
        return x[:, 1:-1, 1:-1, 1:-1, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(None if n is None else 2 * n + 1 for n in input_shape[1:4]), input_shape[4])


@keras.saving.register_keras_serializable(package=PACKAGE)
class Decimation(layers.Layer):
    """Per-channel smoothing with :func:`decimation_kernel` then sub-sampling by ``stride`` (valid).

    Output size per axis is ``(n - size) // stride + 1``. The kernel is applied to each channel on
    its own (block-diagonal kernel), as the original convolved moving and fixed separately.
    """

    def __init__(self, size: int = 15, stride: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.stride = int(stride)
        self._kernel = decimation_kernel(self.size)

    def call(self, x):
        channels = x.shape[-1]
        kernel = self._kernel[..., None, None] * np.eye(channels, dtype=np.float32)
        kernel = ops.cast(ops.convert_to_tensor(kernel), x.dtype)
        return ops.conv(x, kernel, strides=self.stride, padding="valid")

    def compute_output_shape(self, input_shape):
        sizes = (None if n is None else (n - self.size) // self.stride + 1 for n in input_shape[1:4])
        return (input_shape[0], *sizes, input_shape[4])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "stride": self.stride}


INTENSITY_MODES = ("window", "raw")


def check_intensity(intensity: dict) -> dict:
    """Validate an intensity setting and return it complete (every key explicit, floats)."""
    if not isinstance(intensity, dict) or "mode" not in intensity:
        raise RegNetError(
            f"intensity must be a dict with a 'mode' ({' or '.join(INTENSITY_MODES)}), got {intensity!r}; "
            "e.g. {'mode': 'window', 'low': -1000, 'high': 1000} or {'mode': 'raw'}")
    mode = intensity["mode"]
    if mode == "raw":
        allowed = {"mode"}
        full = {"mode": "raw"}
    elif mode == "window":
        allowed = {"mode", "low", "high", "clip"}
        full = {"mode": "window", "low": float(intensity.get("low", -1000.0)),
                "high": float(intensity.get("high", 1000.0)), "clip": bool(intensity.get("clip", True))}
        if not full["high"] > full["low"]:
            raise RegNetError(f"intensity window needs high > low, got low={full['low']}, high={full['high']}")
    else:
        raise RegNetError(f"unknown intensity mode {mode!r}; use one of {', '.join(INTENSITY_MODES)}")
    unknown = sorted(set(intensity) - allowed)
    if unknown:
        raise RegNetError(f"unknown intensity key(s) {unknown} for mode {mode!r}; allowed: {sorted(allowed)}")
    return full


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntensityNormalization(layers.Layer):
    """Maps raw HU to the network's input scale; part of the model so training and inference agree.

    ``window``: [low, high] -> [-1, 1] linearly, clipped by default (-2048 padding reads as air).
    ``raw``: HU unchanged, as RegNet fed them (relies on batch norm after the first convolution).
    Always computed in float32 (HU need more than bfloat16's 8 bits of mantissa).
    """

    def __init__(self, mode: str = "window", low: float = -1000.0, high: float = 1000.0, clip: bool = True,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        spec = check_intensity({"mode": mode} if mode == "raw" else
                               {"mode": mode, "low": low, "high": high, "clip": clip})
        self.mode = spec["mode"]
        self.low, self.high, self.clip = float(low), float(high), bool(clip)

    def call(self, x):
        x = ops.cast(x, "float32")
        if self.mode == "raw":
            return x
        centre, half = (self.high + self.low) / 2.0, (self.high - self.low) / 2.0
        x = (x - centre) / half
        return ops.clip(x, -1.0, 1.0) if self.clip else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "low": self.low, "high": self.high, "clip": self.clip}


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntegerNoise(layers.Layer):
    """RegNet's training-time input noise in HU: x + round(N(mu, sigma)), mu = round(N(0, sigma)) per batch.

    Identity at inference. The random state is a Keras ``SeedGenerator`` (saved with the model).
    """

    def __init__(self, sigma: float = 2.0, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.sigma = float(sigma)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        x = ops.cast(x, "float32")
        if not training or self.sigma <= 0:
            return x
        mean = ops.round(keras.random.normal((), stddev=self.sigma, seed=self.seed_generator))
        noise = ops.round(keras.random.normal(ops.shape(x), mean=0.0, stddev=self.sigma, seed=self.seed_generator))
        return x + mean + noise

    def compute_output_shape(self, input_shape):
        return input_shape

    # Keras does not save a layer's SeedGenerator state; save it, so a resumed run draws what an
    # uninterrupted one would have drawn.
    def save_own_variables(self, store):
        store["seed_state"] = keras.ops.convert_to_numpy(self.seed_generator.state.value)

    def load_own_variables(self, store):
        if "seed_state" in store:
            self.seed_generator.state.assign(store["seed_state"][...])

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma, "seed": self.seed}


def centre_crop(x, margin: int, name: str):
    """Remove ``margin`` voxels from both ends of every spatial axis (RegNet's fixed crops)."""
    return layers.Cropping3D(cropping=int(margin), name=name)(x)


def conv_block(x, filters: int, name: str, *, batch_norm: bool, activation: str = "relu", dilation: int = 1,
               padding: str = "valid"):
    """3x3x3 convolution (glorot-uniform, with bias, as RegNet) -> optional batch norm -> activation."""
    x = layers.Conv3D(filters, 3, padding=padding, dilation_rate=dilation, name=name)(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def dvf_head(x, name: str = "dvf"):
    """Linear 1x1x1 convolution to the 3 DVF components (x, y, z) in mm; float32 even under mixed precision."""
    return layers.Conv3D(3, 1, activation=None, name=name, dtype="float32")(x)
