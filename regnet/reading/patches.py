"""Cutting patches out of loaded pairs, and the flips/permutations that keep image and DVF consistent.

Patches are cut straight from the unpadded arrays: the part of a patch that falls outside the
volume is filled with the background, so no padded copy of any volume is ever held in memory.
"""
from __future__ import annotations

import numpy as np


def cut(volume: np.ndarray, centre, radius: int, out: np.ndarray, fill: float) -> None:
    """Write the cube of side 2*radius+1 around ``centre`` (z, y, x) of ``volume`` into ``out``,
    ``fill`` where the cube leaves the volume. ``out`` may be a strided view (a batch channel)."""
    src, dst = [], []
    for c, n in zip(centre, volume.shape[:3]):
        lo, hi = c - radius, c + radius + 1
        src.append(slice(max(lo, 0), min(hi, n)))
        dst.append(slice(max(lo, 0) - lo, 2 * radius + 1 - (hi - min(hi, n))))
    src, dst = tuple(src), tuple(dst)
    inside = all(s.start == 0 and s.stop == 2 * radius + 1 for s in dst)
    if not inside:
        out[...] = fill
    out[dst] = volume[src]


def random_orientation(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """A random axis permutation and per-axis flips (of the array axes z, y, x)."""
    return tuple(int(a) for a in rng.permutation(3)), tuple(bool(f) for f in rng.integers(0, 2, size=3))


def orient_image(patch: np.ndarray, permutation, flips) -> np.ndarray:
    """Transpose array axes (new axis j = old axis permutation[j]), then flip the flagged new axes.
    Works on (z, y, x) and (z, y, x, C) arrays (channels untouched)."""
    out = np.transpose(patch, tuple(permutation) + tuple(range(3, patch.ndim)))
    flipped = tuple(a for a in range(3) if flips[a])
    return np.flip(out, axis=flipped) if flipped else out


def orient_dvf(dvf: np.ndarray, permutation, flips) -> np.ndarray:
    """The same transform for a DVF patch (z, y, x, 3), components (x, y, z) along the array axes:
    components follow their axes (array axis a carries component 2 - a) and a flipped axis negates
    its component. Then warping the oriented moving patch by the oriented DVF gives the oriented
    fixed patch (tested)."""
    out = orient_image(dvf, permutation, flips)
    components = [2 - permutation[2 - c] for c in range(3)]  # new component c = old component ...
    signs = np.array([-1.0 if flips[2 - c] else 1.0 for c in range(3)], dtype=dvf.dtype)
    return out[..., components] * signs
