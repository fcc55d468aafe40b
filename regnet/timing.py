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


class Clock:
    """Seconds per named step of one run (``with clock("read"): ...``), kept in ``clock.seconds`` in
    order: a report of its own, unlike :func:`step`, which feeds the benchmarks' global recording."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
