"""The reader as a ``keras.utils.PyDataset``, so ``model.fit`` consumes it directly.

Keras asks for batches by index and may ask twice (it reads the first batches to learn their
shapes, then starts over) or ahead (tf.data prefetching). So an index maps to a fixed global
batch number of the reader's stream, recent batches are kept, and a request behind the stream
restarts it there: the batch a step trains on never depends on what Keras prefetched, which is
what makes an interrupted run resume bitwise. Kept apart from the reader so that importing the
reader never imports Keras.
"""
from __future__ import annotations

from collections import OrderedDict

import keras


class ReaderDataset(keras.utils.PyDataset):
    """Training: an infinite stream from global batch ``first`` (give ``steps_per_epoch``).
    Validation: ``len(reader)`` batches, one whole validation pass per epoch."""

    def __init__(self, reader, first: int = 0, keep: int = 4):
        super().__init__(workers=1, use_multiprocessing=False)
        self.reader, self.first, self.keep = reader, int(first), keep
        self.training = reader.mode == "Training"
        self._kept: OrderedDict[int, tuple] = OrderedDict()
        self._next = reader.start

    @property
    def num_batches(self):
        return None if self.training else len(self.reader)

    def _key(self, stream_number: int) -> int:
        """Training batches are global numbers; validation passes are all the same, so a validation
        batch is known by its place in the pass."""
        return stream_number if self.training else stream_number % len(self.reader)

    def __getitem__(self, index):
        number = self.first + index if self.training else index % len(self.reader)
        if number in self._kept:
            return self._kept[number]
        if number < self._key(self._next):  # behind the stream (and no longer kept): restart there
            self.reader.seek(number)
            self._next = number
        elif not self.training and number != self._key(self._next):
            self.reader.seek(number)
            self._next = number
        while True:
            batch = next(self.reader)
            key = self._key(self._next)
            self._next += 1
            self._kept[key] = batch
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)
            if key == number:
                return batch
