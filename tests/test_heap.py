"""regnet.heap: freed memory is reused instead of being faulted in again (checked in a subprocess,
so that the test session's own allocator keeps its defaults)."""
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys
import numpy as np
from regnet.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_a_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(40_000_000, np.float32)  # 160 MB: above glibc's largest mmap threshold
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del a
    return after - before
faults_of_a_fresh_array()
print(faults_of_a_fresh_array())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_a_second_large_array_reuses_the_pages_of_the_first():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default >= 70  # by default the second array is mapped afresh (40 000 4-KiB pages, or >= 77 of 2 MiB)
    assert kept < 10  # kept: its pages are already mapped
