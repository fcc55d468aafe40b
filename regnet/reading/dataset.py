"""The reader as a ``keras.utils.PyDataset``, so ``model.fit`` consumes it directly.

Kept apart from the reader so that importing the reader never imports Keras (start-up time).
"""
from __future__ import annotations

import keras


class ReaderDataset(keras.utils.PyDataset):
    """Training: an infinite stream (``num_batches`` is None; give ``steps_per_epoch``). Validation:
    ``len`` batches, one full validation pass per epoch, the same patches every pass."""

    def __init__(self, reader):
        super().__init__(workers=1, use_multiprocessing=False)
        self.reader = reader

    @property
    def num_batches(self):
        return None if self.reader.mode == "Training" else len(self.reader)

    def __getitem__(self, index):
        return next(self.reader)
