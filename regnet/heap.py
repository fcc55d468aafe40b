"""Keep freed memory in the process for reuse (glibc), so that a generator worker does not pay the
kernel to map and zero the same gigabyte again for every array.

Why: glibc serves every allocation above 32 MB (a 20.8 M-voxel field is 250 MB) with a fresh
``mmap`` and returns it to the system on ``free``; the next array of that size is mapped and
zeroed page by page again. For one synthetic pair that was ~340 000 page faults and ~1.3 s of
system time out of ~10 s of CPU (measured on the 2-core machine, issue 14). Serving large blocks
from the heap and not trimming it lets the next array reuse the pages already mapped. The cost is
that the worker keeps its high-water mark (~1.7 GiB for a pair at 20.8 M voxels) until it exits,
which is what a worker making pair after pair needs anyway. Elsewhere than glibc: nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory mapped (once per process).
    Returns whether the allocator took the settings (False off glibc)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
