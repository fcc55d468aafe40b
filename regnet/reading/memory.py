"""Pairs made on the fly for ``PatchReader(source="memory")``: the generator in worker processes, no file.

Why processes: the generator is mostly NumPy and Python between SimpleITK calls, so threads of one
process wait on the GIL; separate processes run it in parallel at the price of pickling each pair's
arrays back (bench/reader.py measures both). The pool uses ``forkserver`` (``spawn`` where there is
none), never ``fork``: the reader's own threads are running when it starts.

The once-per-image step (the original on the stage grid and its masks) is cached in each worker,
for the images of the current chunk only (at most :data:`CACHED_IMAGES` of them): a chunk's pairs
are submitted grouped by image, so a worker making pair after pair of one image makes its
original once. The original is a pure function of the settings, so where two workers both make it
the result is the same; the patches do not depend on which worker made which pair.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections import OrderedDict
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from regnet.reading.pairs import LoadedPair, make_loaded_pair
from regnet.store import PairId, PairStore

POOLS = ("processes", "threads")
CACHED_IMAGES = 2

_store: PairStore | None = None  # the worker process's store, set once by the initializer
_originals: OrderedDict = OrderedDict()
_chunk = None
_lock = threading.Lock()


def _init_process(store: PairStore, threads: int) -> None:
    """Worker process set-up: the store once, SimpleITK and kernel threads shared out (as the job)."""
    global _store
    import SimpleITK as sitk

    from regnet.deform.kernels import set_threads
    from regnet.heap import keep_freed_memory

    _store = store
    keep_freed_memory()
    set_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def generator_pool(kind: str, workers: int, store: PairStore) -> Executor:
    """``workers`` processes (or threads, for comparison) that make pairs for :func:`make_in_worker`."""
    if kind == "threads":
        return ThreadPoolExecutor(workers, thread_name_prefix="regnet-generator")
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["regnet.generate", "regnet.reading.memory"])  # imported once, not per worker
    else:
        context = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process, initargs=(store, threads))


def make_in_worker(pair: PairId, chunk, store: PairStore | None = None) -> LoadedPair:
    """One pair in memory, its image's original taken from this worker's cache for ``chunk``."""
    global _chunk
    store = store or _store
    with _lock:
        if chunk != _chunk:
            _originals.clear()
            _chunk = chunk
        original = _originals.get(pair.image)
    if original is None:
        from regnet.generate import original_on_stage_grid

        original = original_on_stage_grid(pair.image, store)
        with _lock:
            if _chunk == chunk:
                _originals[pair.image] = original
                while len(_originals) > CACHED_IMAGES:
                    _originals.popitem(last=False)
    return make_loaded_pair(store, pair, original)
