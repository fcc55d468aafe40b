"""Numba kernel of :meth:`regnet.reading.sampling.CandidateIndex.of`, at module level for Numba's
on-disk cache (see :mod:`regnet.deform._compiled`).

Why by hand: the NumPy version gathered the candidate voxels' vectors, took |u| and sorted them into
classes in five passes with temporaries (~0.12 s per stage-1 phantom pair, a third of the reader's
chunk load); this is one read of the torso and DVF, twice (count, then fill), with no temporary."""
import numpy as np
from numba import njit


@njit(cache=True)
def _class_of(u, lows):
    m = np.float32(np.sqrt(np.float32(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])))
    k = 0
    while k < lows.shape[0] and lows[k] <= m:  # = searchsorted(lows, m, side="right")
        k += 1
    return k


@njit(cache=True)
def candidates_by_class(dvf, torso, margin, lows):
    """Flat indices of the torso voxels at least ``margin`` inside every border, grouped by class of
    |u| (class k: k entries of ``lows`` at or below |u|), ascending within a class; and the counts."""
    nz, ny, nx = torso.shape
    counts = np.zeros(lows.shape[0] + 1, np.int64)
    for z in range(margin, nz - margin):
        for y in range(margin, ny - margin):
            for x in range(margin, nx - margin):
                if torso[z, y, x]:
                    counts[_class_of(dvf[z, y, x], lows)] += 1
    starts = np.zeros(counts.shape[0], np.int64)
    for k in range(1, counts.shape[0]):
        starts[k] = starts[k - 1] + counts[k - 1]
    flat = np.empty(counts.sum(), np.int64)
    fill = starts.copy()
    for z in range(margin, nz - margin):
        for y in range(margin, ny - margin):
            for x in range(margin, nx - margin):
                if torso[z, y, x]:
                    k = _class_of(dvf[z, y, x], lows)
                    flat[fill[k]] = (z * ny + y) * nx + x
                    fill[k] += 1
    return flat, counts
