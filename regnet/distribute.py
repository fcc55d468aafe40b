"""Data-parallel training on several devices, through the engines that exist (settings ``Distribute``).

``"mirrored"``: one copy of the model per device, each batch split between them, gradients summed:

* TensorFlow: ``tf.distribute.MirroredStrategy`` over every GPU, or every logical CPU when there is
  no GPU (a CPU split with ``tf.config.set_logical_device_configuration`` is how it is tested).
  The model, its optimiser and metrics must be created inside the strategy's scope; Keras then
  splits each batch of ``model.fit`` over the replicas and scales the loss so the summed gradient
  is the gradient of the whole batch.
* JAX: ``keras.distribution.DataParallel`` over ``jax.devices()`` (Keras 3.15 marks the TensorFlow
  side of ``keras.distribution`` as not for use, hence the two engines).

What differs from one device on TensorFlow: batch normalisation normalises each replica's part of
the batch on its own (Keras's default, unsynchronised), and the training input noise is drawn per
replica; with neither, one step on two replicas gives the weights of one step on one device.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

from regnet import RegNetError
from regnet.settings import DISTRIBUTE_MODES


def _tensorflow_strategy():
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _jax_distribution():
    import jax
    import keras

    return keras.distribution.DataParallel(devices=jax.devices())


def replicas(strategy) -> int:
    """How many model copies a strategy/distribution runs (1 for None)."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(strategy.device_mesh.devices.size)


@contextmanager
def distribution_scope(mode: str, batch_size: int | None = None):
    """Build, compile, load and fit inside this scope; yields the strategy (None for ``"none"``).

    ``batch_size``: the training batch, which must split evenly over the devices (Keras scales
    the loss by the replica count, so uneven parts would weight samples unequally).
    """
    if mode not in DISTRIBUTE_MODES:
        raise RegNetError(f"Distribute must be one of {', '.join(DISTRIBUTE_MODES)}, got {mode!r}.")
    if mode == "none":
        yield None
        return
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = _tensorflow_strategy()
        scope = strategy.scope()
    elif backend == "jax":
        strategy = _jax_distribution()
        scope = strategy.scope()
    else:
        raise RegNetError(f"Distribute = 'mirrored' needs the TensorFlow or JAX backend; KERAS_BACKEND is "
                          f"{backend!r}. Set KERAS_BACKEND=tensorflow or jax, or Distribute = 'none'.")
    n = replicas(strategy)
    if batch_size is not None and batch_size % n:
        raise RegNetError(f"NetworkTraining.BatchSize {batch_size} does not split evenly over {n} devices "
                          f"(Distribute = 'mirrored'); use a multiple of {n}.")
    with scope if scope is not None else nullcontext():
        yield strategy
