"""Callbacks of a training run: NaN guard and patches/s, periodic checkpoints, best model, logs."""
from __future__ import annotations

import math
import time

import keras
import numpy as np


class Guard(keras.callbacks.Callback):
    """Stops at the first non-finite loss (remembering the step) and shows patches/s in the bar."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size, self.failed_step, self._t = batch_size, None, None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        if self._t is not None:
            logs["patches_per_s"] = self.batch_size / max(time.perf_counter() - self._t, 1e-9)
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


def best_so_far(history) -> float:
    """The lowest val_epe of earlier segments of this run (history.csv), so a resumed run keeps
    ``model.keras`` until it really does better."""
    from regnet.train import read_history

    return min((row["val_epe"] for row in read_history(history) if math.isfinite(row.get("val_epe", math.nan))),
               default=math.inf)


class BestModel(keras.callbacks.Callback):
    """Saves ``DIR/model.keras`` whenever the validation end-point error improves."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer, self.best = trainer, best_so_far(trainer.out / "history.csv")

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_epe")
        if value is not None and math.isfinite(value) and value < self.best:
            self.best = float(value)
            self.trainer.save(self.model, self.trainer.out / "model.keras")


class Checkpoint(keras.callbacks.Callback):
    """The last checkpoint every ``every`` steps (never after a non-finite loss)."""

    def __init__(self, trainer, guard: Guard, every: int):
        super().__init__()
        self.trainer, self.guard, self.every = trainer, guard, every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0 and self.guard.failed_step is None:
            self.trainer.save(self.model, self.trainer.checkpoint, step)


class ImageSummaries(keras.callbacks.Callback):
    """TensorBoard images after each validation: middle slices of both inputs, the true and the
    predicted DVF components (TensorFlow backend only, as TensorBoard's writer is TensorFlow's)."""

    def __init__(self, log_dir, val_reader):
        super().__init__()
        import tensorflow as tf  # lazy: only on the TensorFlow backend

        self.tf, self.writer, self.val_reader = tf, tf.summary.create_file_writer(str(log_dir / "images")), val_reader
        self._batch = None

    def on_epoch_end(self, epoch, logs=None):
        if "val_epe" not in (logs or {}):
            return
        if self._batch is None:  # its own reader: the validation stream's position is not touched
            from regnet.reading import PatchReader

            with PatchReader(self.val_reader.settings, "Validation", self.val_reader.source, workers=1) as reader:
                x, y = next(reader)
            self._batch = (np.asarray(x[:1]), np.asarray(y[:1]))  # device source: tensors
        x, y = self._batch
        pred = np.asarray(self.model(x, training=False))  # not predict(): one sample cannot split over replicas
        step = int(self.model.optimizer.iterations.numpy())

        def middle(a):  # (1, z, y, x, c) -> (c, y, x, 1) scaled to [0, 1]
            s = a[0, a.shape[1] // 2]
            s = np.moveaxis(s, -1, 0)[..., None].astype(np.float32)
            lo, hi = s.min(), s.max()
            return (s - lo) / (hi - lo) if hi > lo else s * 0

        with self.writer.as_default():
            self.tf.summary.image("inputs [moving, fixed]", middle(x), step=step, max_outputs=2)
            self.tf.summary.image("dvf true [x, y, z]", middle(y), step=step, max_outputs=3)
            self.tf.summary.image("dvf predicted [x, y, z]", middle(pred), step=step, max_outputs=3)
        self.writer.flush()


def callbacks_for(trainer, model, val_reader, first_step: int = 0) -> list:
    run = trainer.settings.NetworkTraining
    guard = Guard(run.BatchSize)
    best = BestModel(trainer)
    callbacks = [guard, best, Checkpoint(trainer, guard, run.CheckpointEvery),
                 keras.callbacks.CSVLogger(str(trainer.out / "history.csv"), append=True)]
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(str(trainer.out / "logs"), update_freq=25))
        callbacks.append(ImageSummaries(trainer.out / "logs", val_reader))
    return callbacks
