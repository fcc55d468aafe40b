"""Which pairs form which chunk, and which batch comes n-th: a pure function of the settings.

The batch stream is fixed in advance: semi-epoch ``e`` shuffles the pair list with a generator
seeded by ``e`` and cuts it into chunks; a chunk of ``n`` pairs gives ``floor(n * SamplesPerImage
/ BatchSize)`` training batches. So the global batch number alone says where the stream is,
which is what resuming a training run needs (no reader state to save).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regnet.seeding import rng_for


@dataclass(frozen=True, order=True)
class Position:
    """Where the stream is: semi-epoch, chunk within it, batch within the chunk."""

    semi_epoch: int = 0
    chunk: int = 0
    batch: int = 0


@dataclass(frozen=True)
class Schedule:
    n_pairs: int
    chunk_size: int
    samples_per_image: int
    batch_size: int
    shuffle: bool
    seed_key: tuple
    full_image: bool = False
    drop_remainder: bool = True

    def chunks(self, semi_epoch: int) -> list[np.ndarray]:
        """Pair indices of every chunk of a semi-epoch (training shuffles; validation keeps order)."""
        order = (rng_for(*self.seed_key, "order", semi_epoch).permutation(self.n_pairs) if self.shuffle
                 else np.arange(self.n_pairs))
        return [order[i:i + self.chunk_size] for i in range(0, self.n_pairs, self.chunk_size)]

    def samples(self, n_images: int) -> int:
        return n_images if self.full_image else n_images * self.samples_per_image

    def batches_in_chunk(self, n_images: int) -> int:
        n = self.samples(n_images)
        return max(1, n // self.batch_size) if self.drop_remainder else -(-n // self.batch_size)

    @property
    def chunk_lengths(self) -> list[int]:
        return [min(self.chunk_size, self.n_pairs - i) for i in range(0, self.n_pairs, self.chunk_size)]

    @property
    def batches_per_semi_epoch(self) -> int:
        return sum(self.batches_in_chunk(n) for n in self.chunk_lengths)

    def position_of(self, batch_number: int) -> Position:
        """The position of global batch ``batch_number`` (0-based) in the stream."""
        per_chunk = [self.batches_in_chunk(n) for n in self.chunk_lengths]
        semi_epoch, rest = divmod(int(batch_number), sum(per_chunk))
        for chunk, n in enumerate(per_chunk):
            if rest < n:
                return Position(semi_epoch, chunk, rest)
            rest -= n
        raise AssertionError("unreachable")

    def after(self, position: Position) -> Position:
        """The position that follows ``position``."""
        if position.batch + 1 < self.batches_in_chunk(self.chunk_lengths[position.chunk]):
            return Position(position.semi_epoch, position.chunk, position.batch + 1)
        if position.chunk + 1 < len(self.chunk_lengths):
            return Position(position.semi_epoch, position.chunk + 1, 0)
        return Position(position.semi_epoch + 1, 0, 0)
