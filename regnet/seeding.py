"""Stable, order-free randomness: every draw comes from a generator keyed by what it is for.

The key is hashed with SHA-256 (not Python's salted ``hash``), so the same (experiment,
dataset, case, type, dsmooth, stage, purpose) gives bitwise the same numbers on any
machine, in any process, in any order.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np


def seed_for(*key) -> int:
    """A 128-bit integer seed from a tuple of JSON-able parts."""
    text = json.dumps([str(k) if not isinstance(k, (int, float, str, bool)) else k for k in key],
                      separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "little")


def rng_for(*key) -> np.random.Generator:
    """A NumPy generator (PCG64) seeded by :func:`seed_for`."""
    return np.random.Generator(np.random.PCG64(seed_for(*key)))
