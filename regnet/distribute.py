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

from contextlib import contextmanager

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


def batch_sizes(schedule) -> list[int]:
    """Every batch size a reader's pass produces (training drops the remainder; validation keeps it)."""
    b = schedule.batch_size
    if schedule.drop_remainder:
        return [b]
    sizes = set()
    for n in schedule.chunk_lengths:
        full, rest = divmod(schedule.samples(n), b)
        sizes.update(([b] if full else []) + ([rest] if rest else []))
    return sorted(sizes)


def check_batches(settings, n: int) -> None:
    """Every training and validation batch must split evenly over ``n`` devices: Keras scales the loss
    by the replica count (uneven parts would weight samples unequally), and a device left without
    samples fails (TensorFlow) or cannot be sharded (JAX)."""
    from regnet.reading import PatchReader

    for mode, key in (("Training", "NetworkTraining"), ("Validation", "NetworkValidation")):
        # the schedule of the source training reads from; no thread starts before iteration
        reader = PatchReader(settings, mode, source=settings.ReaderSource)
        sizes = reader.batch_sizes()
        bad = [b for b in sizes if b % n]
        if bad:
            run = getattr(settings, key)
            raise RegNetError(f"Distribute = 'mirrored' over {n} devices: {mode.lower()} batches of "
                              f"{' and '.join(map(str, sizes))} patches do not split evenly "
                              f"({key}.BatchSize {run.BatchSize}, SamplesPerImage {run.SamplesPerImage}, "
                              f"NumberOfImagesPerChunk {run.NumberOfImagesPerChunk}, {len(reader.pairs)} pairs). "
                              f"Make every batch a multiple of {n}: BatchSize and the patches per chunk.")


@contextmanager
def distribution_scope(mode: str, settings=None):
    """Build, compile, load and fit inside this scope; yields the strategy (None for ``"none"``).

    ``settings``: when given, its training and validation batches are checked to split evenly
    over the devices (:func:`check_batches`).
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
    elif backend == "jax":
        strategy = _jax_distribution()
    else:
        raise RegNetError(f"Distribute = 'mirrored' needs the TensorFlow or JAX backend; KERAS_BACKEND is "
                          f"{backend!r}. Set KERAS_BACKEND=tensorflow or jax, or Distribute = 'none'.")
    if settings is not None:
        check_batches(settings, replicas(strategy))
    with strategy.scope():
        yield strategy
