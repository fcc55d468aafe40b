"""Patch reader throughput: crop4 patches (101^3 x 2 -> 21^3 x 3) at BatchSize 15, chunks of 16 images.

    python bench/reader.py [--out DIR] [--batches N] [--workers 1 2] [--memory processes threads] [--stage 1]

Generates 16 phantom pairs at stage 1 once (kept in --out), then reports for each thread count:
time to first batch, patches/s and batches/s for a consumer that takes batches as fast as it can
(after twice as many batches as the reader keeps arrays for: then its batch arrays are recycled, as
in training; "fresh" counts the arrays still allocated while timing),
queue occupancy for a consumer that takes one batch every 50 ms (a fast GPU step), the bytes of one
loaded chunk (its memory-mapped DVFs included: page cache, not private memory), and peak RSS.
As the baseline for the choice of threads over processes it times, in the same run, handing one
batch from a worker process to the consumer through a multiprocessing queue (the copy a process
design adds to every batch).

``--memory`` also times ``source="memory"`` (pairs made on the fly, 2 generator processes or threads,
no files): its steady state is the generator's pair rate, so it runs enough batches to cross into the
second chunk (``SamplesPerImage * 16 / 15`` batches a chunk) and reports patches/s over that span.
``--stage 2`` makes the pairs 8x smaller for a quick look.

``--device`` also times ``source="device"`` (fresh pairs made for every batch with keras.ops on
the Keras backend's device, ``--pairs-per-batch`` of them, no files): time to first batch (base
images made on the CPU, first calls) and patches/s once warm. ``KERAS_BACKEND=jax`` on a GPU machine
times the accelerator; ``--device --no-files`` skips the files figures.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

from regnet.generate import run
from regnet.reading import PatchReader
from regnet.settings import load_settings


def settings(out: str, stage: int = 1):
    return load_settings({
        "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max7_D14_K", "TrainingCNList": [1, 2, 3, 4],
                         "TrainingTypeImList": [0], "TrainingDSmoothList": [0, 4, 9, 13],
                         "ValidationCNList": [], "ValidationDSmoothList": []}],
        "stage": stage, "NetworkDesign": "crop4_connection", "OutputFolder": out, "Jobs": 2,
        "NetworkTraining": {"NumberOfImagesPerChunk": 16, "SamplesPerImage": 50, "BatchSize": 15,
                            "MaxQueueSize": 20},
    })


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(s, workers: int, batches: int, **source) -> dict:
    t0 = time.perf_counter()
    with PatchReader(s, workers=workers, **source) as reader:
        next(reader)
        first = time.perf_counter() - t0
        for _ in range(0 if source else 2 * reader._buffers.capacity):  # files: the pool fills, then recycles
            next(reader)
        fresh = reader._buffers.fresh
        t1 = time.perf_counter()
        for _ in range(batches):
            next(reader)
        fast = time.perf_counter() - t1
        fresh = reader._buffers.fresh - fresh
        occupancy = []
        for _ in range(batches):
            time.sleep(0.05)
            occupancy.append(reader._queue.qsize())
            next(reader)
        chunk_gib = reader.peak_chunk_bytes / 2**30
    return {"workers": workers, "first_batch_s": first, "batches_per_s": batches / fast,
            "patches_per_s": batches * 15 / fast, "queue_min": min(occupancy[len(occupancy) // 4:]),
            "queue_mean": float(np.mean(occupancy)), "chunk_gib": chunk_gib, "fresh": fresh}


def measure_device(s, batches: int, pairs_per_batch: int) -> dict:
    """source="device": the first batch (base images, first calls), then ``batches`` as fast as they come."""
    import keras

    s = load_settings({**s.to_dict(), "NetworkTraining": {**s.to_dict()["NetworkTraining"],
                                                          "PairsPerBatch": pairs_per_batch}})
    t0 = time.perf_counter()
    with PatchReader(s, source="device") as reader:
        np.asarray(next(reader)[0])
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(batches):
            x, y = next(reader)
        np.asarray(x), np.asarray(y)  # wait for the device
        fast = time.perf_counter() - t1
    return {"backend": keras.backend.backend(), "first_batch_s": first, "batches_per_s": batches / fast,
            "patches_per_s": batches * s.NetworkTraining.BatchSize / fast,
            "pairs_per_s": batches * pairs_per_batch / fast}


def _send(q, shape):
    q.put(np.zeros(shape, np.float32))


def process_handoff_seconds(shape) -> float:
    """One batch from a worker process to this one (pickling + pipe), the per-batch cost of processes."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=2)
    p = ctx.Process(target=_send, args=(q, shape))
    p.start()
    q.get()  # warm up: process start
    p.join()
    p = ctx.Process(target=_send, args=(q, shape))
    p.start()
    time.sleep(1.0)  # let the child allocate and start writing
    t0 = time.perf_counter()
    q.get()
    elapsed = time.perf_counter() - t0
    p.join()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_reader_data")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory", nargs="*", default=[], choices=["processes", "threads"],
                        help="also time source='memory' with these generator pools (2 workers each)")
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--no-files", action="store_true",
                        help="time source='memory' / 'device' only (no pairs generated)")
    parser.add_argument("--device", action="store_true", help="also time source='device' (keras.ops)")
    parser.add_argument("--pairs-per-batch", type=int, default=2, help="source='device': pairs made per batch")
    args = parser.parse_args()
    s = settings(args.out, args.stage)
    if args.device:
        n = max(3, args.batches // 4)
        r = measure_device(s, n, args.pairs_per_batch)
        print(f"device ({r['backend']}, stage {args.stage}, {args.pairs_per_batch} fresh pairs per 15-patch crop4 "
              f"batch): first batch {r['first_batch_s']:.1f} s, then {r['patches_per_s']:.1f} patches/s "
              f"({r['batches_per_s']:.2f} batches/s, {r['pairs_per_s']:.2f} pairs/s) over {n} batches")
    for pool in args.memory:
        per_chunk = 16 * 50 // 15
        r = measure(s, 2, per_chunk + 10, source="memory", generators=2, generator_pool=pool)
        print(f"memory ({pool}, 2 generators, 2 threads, stage {args.stage}): first batch {r['first_batch_s']:.1f} s, "
              f"{r['patches_per_s']:.1f} patches/s and {r['batches_per_s']:.2f} batches/s over {per_chunk + 10} "
              f"batches (one chunk of 16 pairs made while cutting), queue min / mean at 1 batch per 50 ms "
              f"{r['queue_min']} / {r['queue_mean']:.1f}")
    if args.no_files:
        print(f"peak RSS {peak_rss_gib():.2f} GiB (this process; generator processes not counted)")
        return
    t0 = time.perf_counter()
    run(s, jobs=2)
    print(f"pairs ready in {time.perf_counter() - t0:.1f} s (16 phantom pairs, stage {args.stage})")
    print("| threads | first batch (s) | batches/s | patches/s | fresh arrays | queue min / mean at 1 batch per 50 ms "
          "| chunk (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for w in args.workers:
        r = measure(s, w, args.batches)
        print(f"| {w} | {r['first_batch_s']:.2f} | {r['batches_per_s']:.2f} | {r['patches_per_s']:.0f} | {r['fresh']} "
              f"| {r['queue_min']} / {r['queue_mean']:.1f} | {r['chunk_gib']:.2f} |")
    handoff = process_handoff_seconds((15, 101, 101, 101, 2))
    print(f"baseline: one 15-patch batch handed over from a worker process: {handoff * 1000:.0f} ms "
          f"(= at most {15 / handoff:.0f} patches/s through one pipe, before any cutting)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
