"""Class-balanced patch centres: balanced over classes of displacement magnitude, drawn without
replacement where a class has enough voxels.

Classes are those of :func:`regnet.deform.field.magnitude_class_edges` on the magnitude |u|
(the same classes the validation metrics and ``regnet evaluate`` report). RegNet's
per-component "all components in the class" rule silently dropped every voxel whose components
fell in different classes; the magnitude rule keeps every voxel.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from regnet.deform.field import magnitude_class_edges


class ClassBalanceWarning(UserWarning):
    """A requested magnitude class has too few voxels; its share went to the other classes."""


@dataclass
class CandidateIndex:
    """Flat voxel indices of the candidate centres of one image, one array per class."""

    per_class: list[np.ndarray]

    @classmethod
    def of(cls, dvf: np.ndarray, torso: np.ndarray, thresholds, margin: int) -> CandidateIndex:
        from regnet.reading._candidates import candidates_by_class  # Numba: imported on first use

        edges = magnitude_class_edges(thresholds)
        lows = np.asarray([lo for lo, _ in edges[1:]], np.float32)
        flat, counts = candidates_by_class(np.asarray(dvf, np.float32), np.asarray(torso, bool), int(margin), lows)
        return cls(np.split(flat, np.cumsum(counts)[:-1]))

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(a) for a in self.per_class], dtype=np.int64)


def class_quota(total: int, available: np.ndarray) -> np.ndarray:
    """Split ``total`` draws equally over the classes; a class short of voxels gives what it lacks to
    the others (water filling), so the total stays and no class is drawn with replacement."""
    quota = np.zeros_like(available)
    open_classes = available > 0
    remaining = min(int(total), int(available.sum()))
    while remaining > 0 and open_classes.any():
        share = remaining // int(open_classes.sum())
        if share == 0:  # fewer draws left than open classes: one each, in class order
            for k in np.flatnonzero(open_classes)[:remaining]:
                quota[k] += 1
            break
        take = np.where(open_classes, np.minimum(share, available - quota), 0)
        quota += take
        remaining -= int(take.sum())
        open_classes &= quota < available
    return quota


def quota_warnings(samples: int, available: np.ndarray, quota: np.ndarray, thresholds, where: str = "") -> None:
    """A :class:`ClassBalanceWarning` for every class with fewer candidate voxels than its fair share."""
    fair = samples // len(available)
    for k in np.flatnonzero((available < fair) & (quota == available)):
        lo = 0.0 if k == 0 else thresholds[k - 1]
        hi = f"{thresholds[k]:g}" if k < len(thresholds) - 1 else "inf"
        warnings.warn(f"{where}magnitude class {k} [{lo:g}, {hi}) mm has {available[k]} candidate voxels for "
                      f"{fair} requested draws; its remaining share goes to the "
                      "other classes.", ClassBalanceWarning, stacklevel=4)


def draw_centres(index: list[CandidateIndex], samples: int, rng: np.random.Generator,
                 thresholds, where: str = "") -> np.ndarray:
    """Rows ``(image_in_chunk, flat_voxel_index, class)`` (int64), shuffled, ``samples`` of them when
    the chunk has that many candidate voxels. Classes are pooled over the chunk's images, as RegNet."""
    counts = np.stack([i.counts for i in index])  # (images, classes)
    available = counts.sum(axis=0)
    quota = class_quota(samples, available)
    quota_warnings(samples, available, quota, thresholds, where)
    rows = []
    for k, n in enumerate(quota):
        if n == 0:
            continue
        picks = np.sort(rng.choice(available[k], size=int(n), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts[:, k])])
        image = np.searchsorted(starts, picks, side="right") - 1
        flat = np.empty(len(picks), dtype=np.int64)
        for i in np.unique(image):
            mine = image == i
            flat[mine] = index[i].per_class[k][picks[mine] - starts[i]]
        rows.append(np.stack([image, flat, np.full_like(image, k)], axis=1))
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    rows = np.concatenate(rows).astype(np.int64)
    return rows[rng.permutation(len(rows))]
