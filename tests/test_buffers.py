"""The batch-array pool: an array is handed out again only when nothing else refers to it."""
import numpy as np

from regnet.reading import PatchReader
from regnet.reading.buffers import RecyclingPool
from tests.test_reader import root, settings_for  # noqa: F401 - the module's pairs fixture


def test_an_array_is_reused_only_when_unreferenced():
    pool = RecyclingPool(capacity=3)
    a = pool.empty((4, 5))
    b = pool.empty((4, 5))
    assert a is not b and pool.fresh == 2
    a_id = id(a)
    del a
    c = pool.empty((4, 5))
    assert id(c) == a_id and pool.fresh == 2  # a's memory, nobody held it
    view = c[1:]  # a view keeps its owner in use
    del c
    d = pool.empty((4, 5))
    assert pool.fresh == 3 and not np.shares_memory(d, view)
    e = pool.empty((2, 5))  # another shape: its own arrays
    assert e.shape == (2, 5) and pool.fresh == 4


def test_a_full_pool_hands_out_fresh_arrays_and_never_overwrites_held_ones():
    pool = RecyclingPool(capacity=2)
    held = []
    for k in range(5):
        a = pool.empty((3,))
        a[...] = k
        held.append(a)
    assert pool.fresh == 5
    assert [a.tolist() for a in held] == [[k] * 3 for k in range(5)]


def test_the_reader_recycles_its_batches(root):  # noqa: F811
    """A consumer that drops each batch: the reader allocates at most its pool's worth of arrays."""
    with PatchReader(settings_for(root), workers=2) as reader:
        for _ in range(40):
            next(reader)
        assert reader._buffers.fresh <= 2 * reader._buffers.capacity  # x and y arrays
