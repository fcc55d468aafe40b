"""Batch arrays recycled once the consumer has let go of them.

Why: a crop4 batch is 125 MB. A fresh array per batch makes the kernel map and zero every page
of it again: in ``perf`` on the 2-core machine, zeroing pages (``clear_page_erms``) took two thirds
of the reader's CPU. A recycled array is written without a page fault.

When is an array free? When nothing but the pool refers to it. Every NumPy view (a slice, a
``reshape``, a tensor that aliases it) holds a reference to the array that owns the memory, so the
owner's reference count says whether anyone still sees the data; the pool compares it with the
count of an array that only the pool holds, measured once (it differs between Python versions).
A consumer that keeps every batch (a test collecting them) just gets fresh arrays once the pool
is full: nothing it holds is ever overwritten.
"""
from __future__ import annotations

import sys
import threading

import numpy as np


class RecyclingPool:
    """At most ``capacity`` owned arrays per (shape, dtype), handed out again when unreferenced.
    Off (every array fresh) on a free-threaded Python, where reference counts are not a safe signal."""

    def __init__(self, capacity: int):
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.capacity = int(capacity) if gil else 0
        self._owned: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._free_count = self._references([np.empty(1)], 0)  # an array only a pool list holds
        self.fresh = 0  # arrays allocated (for the bench and tests)

    @staticmethod
    def _references(owned: list, index: int) -> int:
        """The reference count of ``owned[index]``, measured the same way for calibration and check."""
        return sys.getrefcount(owned[index])

    def empty(self, shape: tuple, dtype=np.float32) -> np.ndarray:
        """An uninitialised array of ``shape``: a recycled one when one is free."""
        key = (tuple(int(n) for n in shape), np.dtype(dtype).str)
        with self._lock:
            owned = self._owned.setdefault(key, [])
            for i in range(len(owned)):
                if self._references(owned, i) == self._free_count:
                    return owned[i]
            self.fresh += 1
            fresh = np.empty(key[0], dtype=key[1])
            if len(owned) < self.capacity:
                owned.append(fresh)
            return fresh
