"""Named wall-clock steps, collected only when someone asks (the benchmarks).

``with step("warp image"):`` costs one clock read when recording is off.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

_recorded: dict[str, float] | None = None


@contextmanager
def step(name: str):
    if _recorded is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _recorded[name] += time.perf_counter() - t0


@contextmanager
def recording():
    """Collect step times inside the block; yields the dict of seconds per step."""
    global _recorded
    previous, _recorded = _recorded, defaultdict(float)
    try:
        yield _recorded
    finally:
        _recorded = previous
