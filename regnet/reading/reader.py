"""PatchReader: class-balanced image/DVF patches from chunks of pairs, cut by background threads.

Design (why threads): the work is reading files (SimpleITK) and copying array slices (NumPy);
both release the GIL, so threads share each chunk without copying it between processes. One
feeder thread walks the batch schedule, loads the next chunk while the current one is cut, and
hands batch jobs in stream order to a small thread pool; their futures go through a bounded
queue of ``MaxQueueSize``. At most two chunks are in memory: the one being cut and the next.
A worker error is re-raised in the consumer (original exception and traceback) within a poll
interval of 0.1 s; ``close()`` cancels pending work and joins every thread.

``source="memory"`` makes each chunk's pairs on the fly in worker processes by the generator's own
code path (:mod:`regnet.reading.memory`), no file read or written: the same patches as from files.
``source="device"`` draws fresh fields for every batch on the accelerator and cuts the patches
there (:mod:`regnet.reading.device`); its batches are backend tensors.
"""
from __future__ import annotations

import queue
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regnet import RegNetError
from regnet.reading.buffers import RecyclingPool
from regnet.reading.memory import POOLS, generator_pool, make_in_worker
from regnet.reading.pairs import LoadedPair, load_pair
from regnet.reading.patches import cut, orient_dvf, orient_image, random_orientation
from regnet.reading.sampling import CandidateIndex, ClassBalanceWarning, draw_centres
from regnet.reading.schedule import Position, Schedule
from regnet.seeding import rng_for
from regnet.settings import Settings, load_settings
from regnet.store import PairId, PairStore, pair_list

MODES = ("Training", "Validation")
SOURCES = ("files", "memory", "device")
_END = object()


@dataclass
class Chunk:
    """Loaded pairs of one chunk and the centres drawn in them (rows: image, flat index, class)."""

    pairs: list[LoadedPair]
    rows: np.ndarray


class PatchReader:
    """Batches ``(x, y)``: x float32 (B, 2R+1, 2R+1, 2R+1, 2) channels [moving, fixed] on the stage
    grid; y float32 (B, 2Ry+1, 2Ry+1, 2Ry+1, 3), the DVF in mm, components (x, y, z), centred on the
    same voxel. ``batch_info`` describes every patch of the last batch.

    Training streams forever (semi-epoch after semi-epoch); ``start`` (a global batch number) resumes
    the stream exactly. Validation walks the whole validation list in order, the same patches every
    pass; ``len(reader)`` is the number of batches of one pass.
    """

    def __init__(self, settings: Settings | dict | str | Path, mode: str = "Training", source: str = "files", *,
                 workers: int = 2, start: int = 0, generate_missing: bool = True, generators: int | None = None,
                 generator_pool: str = "processes"):
        if mode not in MODES:
            raise RegNetError(f"PatchReader mode must be one of {MODES}, got {mode!r}")
        if source not in SOURCES:
            raise RegNetError(f"PatchReader source must be one of {SOURCES}, got {source!r}")
        if generator_pool not in POOLS:
            raise RegNetError(f"PatchReader generator_pool must be one of {POOLS}, got {generator_pool!r}")
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self.mode, self.source, self.workers = mode, source, max(1, int(workers))
        self.generate_missing = generate_missing
        # source="memory": how many workers make pairs, and of which kind (processes; threads to compare)
        self.generators, self.generator_pool = max(1, int(generators or self.workers)), generator_pool
        run = self.settings.NetworkTraining if mode == "Training" else self.settings.NetworkValidation
        self.batch_size, self.max_queue = run.BatchSize, run.MaxQueueSize
        self.R, self.Ry = self.settings.patch_radii()
        self.full_image = self.R == self.Ry
        self.augment = self.settings.Augmentation and mode == "Training"
        self.store = PairStore(self.settings)
        self.pairs: list[PairId] = pair_list(self.settings, mode)
        if not self.pairs:
            raise RegNetError(f"The settings list no {mode.lower()} pairs: fill DataExpDict's {mode}CNList, "
                              f"{mode}TypeImList and {mode}DSmoothList.")
        self.thresholds = self.settings.class_balanced()
        self.schedule = Schedule(
            n_pairs=len(self.pairs), chunk_size=min(run.NumberOfImagesPerChunk, len(self.pairs)),
            samples_per_image=run.SamplesPerImage, batch_size=self.batch_size, shuffle=mode == "Training",
            seed_key=("PatchReader", mode, self.settings.stage), full_image=self.full_image,
            drop_remainder=mode == "Training")
        self._device = None  # source="device": the batch stream (regnet.reading.device)
        if source == "device":
            from regnet.reading.device import DEVICE_QUEUE, DeviceBatches

            self._device = DeviceBatches(self.settings, mode, self.pairs, self.store, (self.R, self.Ry),
                                         self.thresholds, self.augment, self.schedule)
            self.max_queue = min(self.max_queue, DEVICE_QUEUE)
        self.start = int(start)
        self.position = self._position_of(self.start)  # of the last batch handed out
        self.batch_info: list[dict] = []
        self.peak_chunk_bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._loader: ThreadPoolExecutor | None = None
        self._makers = None  # source="memory": the generator pool
        self._making: list[Future] = []  # its pairs of the chunk being made
        self._lock = threading.Lock()
        # batches in the queue, being cut, held by the consumer, by ReaderDataset (4) and by Keras's
        # queue and prefetch under model.fit (~12): a cap only, arrays are made when first needed
        self._buffers = RecyclingPool(self.max_queue + self.workers + 16)

    # ------------------------------------------------------------ public
    def __len__(self) -> int:
        """Batches of one semi-epoch (training) or of one validation pass."""
        return len(self._device) if self._device is not None else self.schedule.batches_per_semi_epoch

    def batch_sizes(self) -> list[int]:
        """Every batch size this reader hands out (the device source groups pairs its own way)."""
        from regnet.distribute import batch_sizes

        device = self._device
        if device is None or device.schedule is not None:
            return batch_sizes(self.schedule if device is None else device.schedule)
        return [device.per_group if self.full_image else self.batch_size]  # device training: every batch alike

    def __enter__(self) -> PatchReader:
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> PatchReader:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        self._start()
        while True:
            if self._error is not None:
                raise self._error
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._feeder is not None and not self._feeder.is_alive() and self._queue.empty():
                    raise self._error or RegNetError("PatchReader was closed.") from None
                continue
            if item is _END:
                raise self._error or RegNetError("PatchReader was closed.")
            future, position = item
            x, y, info = future.result()
            self.batch_info = info
            self.position = position
            return x, y

    def one_pass(self):
        """Exactly the batches of one semi-epoch / validation pass, from the current position."""
        for _ in range(len(self)):
            yield next(self)

    def close(self) -> None:
        """Stop every thread and drop pending work; safe to call twice and after errors."""
        self._stop.set()
        for future in self._making:  # pairs not started are dropped now, so the loader ends soon
            future.cancel()
        while True:  # unblock a feeder waiting on a full queue
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _END:
                item[0].cancel()
        if self._feeder is not None:
            self._feeder.join()
        for pool in (self._pool, self._loader, self._makers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._feeder = self._pool = self._loader = self._makers = None
        self._buffers = RecyclingPool(self._buffers.capacity)  # a closed reader keeps no batch memory

    def seek(self, batch_number: int) -> None:
        """Restart the stream at global batch ``batch_number`` (validation: batch of the pass)."""
        self.close()
        self.start = int(batch_number)
        self.position = self._position_of(self.start)
        self._queue = queue.Queue(maxsize=self.max_queue)
        self._stop = threading.Event()
        self._error = None

    def as_dataset(self, first: int = 0):
        """This reader as a ``keras.utils.PyDataset`` for ``model.fit`` (training: infinite stream,
        give ``steps_per_epoch``; validation: one pass per call)."""
        from regnet.reading.dataset import ReaderDataset

        return ReaderDataset(self, first)

    # ------------------------------------------------------------ internals
    def _position_of(self, batch_number: int) -> Position:
        source = self._device if self._device is not None else self.schedule
        return source.position_of(batch_number)

    def _start(self) -> None:
        if self._feeder is not None or self._stop.is_set():
            return
        if self._device is not None:  # one thread drives the device, a few batches ahead
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="regnet-device")
            self._feeder = threading.Thread(target=self._feed_device, name="regnet-feeder", daemon=True)
            self._feeder.start()
            return
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="regnet-patches")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="regnet-chunks")
        if self.source == "memory":
            self._makers = generator_pool(self.generator_pool, self.generators, self.store)
        self._feeder = threading.Thread(target=self._feed, name="regnet-feeder", daemon=True)
        self._feeder.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fail(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()

    def _feed(self) -> None:
        try:
            position = self.schedule.position_of(self.start)
            cache: dict[tuple, Chunk] = {}
            loading = self._loader.submit(self._load_chunk, position)
            previous: list[Future] = []
            while not self._stop.is_set():
                chunk = loading.result()
                wait(previous)  # the chunk before is fully cut: drop it before loading the one after
                previous = []
                if self.mode == "Validation" and len(self.schedule.chunk_lengths) == 1:
                    cache[(0,)] = chunk  # one validation chunk: keep it, every pass is the same
                following = self.schedule.after(Position(position.semi_epoch, position.chunk,
                                                         self.schedule.batches_in_chunk(len(chunk.pairs)) - 1))
                loading = self._loader.submit(self._load_chunk, following, cache.get((0,)))
                n_batches = self.schedule.batches_in_chunk(len(chunk.pairs))
                for batch in range(position.batch, n_batches):
                    here = Position(position.semi_epoch, position.chunk, batch)
                    future = self._pool.submit(self._make_batch, chunk, here)
                    future.add_done_callback(self._fail)
                    # only the batches still being cut: a done future holds its batch (125 MB for crop4)
                    previous = [f for f in previous if not f.done()] + [future]
                    if not self._put((future, here)):
                        return
                position = following
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, never lost
            if self._error is None:
                self._error = err
            self._put(_END)

    def _feed_device(self) -> None:
        try:
            number = self.start
            while not self._stop.is_set():
                future = self._pool.submit(self._device.batch, number)
                future.add_done_callback(self._fail)
                if not self._put((future, self._device.position_of(number))):
                    return
                number += 1
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, never lost
            if self._error is None:
                self._error = err
            self._put(_END)

    def _load_chunk(self, position: Position, cached: Chunk | None = None) -> Chunk:
        if cached is not None:
            return cached
        semi_epoch = position.semi_epoch if self.mode == "Training" else 0
        members = [self.pairs[i] for i in self.schedule.chunks(semi_epoch)[position.chunk]]
        loaded = self._loader_map(members, (semi_epoch, position.chunk))
        with self._lock:
            self.peak_chunk_bytes = max(self.peak_chunk_bytes, sum(p.nbytes for p in loaded))
        rng = rng_for("PatchReader", self.mode, self.settings.stage, "centres", semi_epoch, position.chunk)
        rows = self._draw(loaded, rng, f"semi-epoch {semi_epoch} chunk {position.chunk}: ")
        return Chunk(loaded, rows)

    def _loader_map(self, members: list[PairId], chunk: tuple) -> list[LoadedPair]:
        if self.source == "files":
            return [load_pair(self.store, p, self.generate_missing) for p in members]
        # grouped by image, so that a worker makes pair after pair of one image from its cached original
        order = sorted(range(len(members)), key=lambda i: (members[i].image, i))
        store = self.store if self.generator_pool == "threads" else None  # processes have theirs
        futures = {i: self._makers.submit(make_in_worker, members[i], chunk, store) for i in order}
        self._making = list(futures.values())
        if self._stop.is_set():  # closed while submitting
            raise RegNetError("PatchReader was closed.")
        return [futures[i].result() for i in range(len(members))]

    def _draw(self, loaded: list[LoadedPair], rng: np.random.Generator, where: str) -> np.ndarray:
        if self.full_image:
            for lp in loaded:
                if any(n > 2 * self.R + 1 for n in lp.dvf.shape[:3]):
                    raise RegNetError(f"{self.store.pair_dir(lp.pair)}: image {lp.dvf.shape[:3]} is larger than the "
                                      f"full-image input {2 * self.R + 1}^3; use a patch network or a larger R.")
            centres = [np.ravel_multi_index(tuple(n // 2 for n in lp.dvf.shape[:3]), lp.dvf.shape[:3]) for lp in loaded]
            rows = np.array([[i, c, 0] for i, c in enumerate(centres)], dtype=np.int64)
            return rows[rng.permutation(len(rows))] if self.mode == "Training" else rows
        index = [CandidateIndex.of(lp.dvf, lp.torso, self.thresholds, self.Ry) for lp in loaded]
        for lp, ix in zip(loaded, index):
            if ix.counts.sum() == 0:
                raise RegNetError(f"{self.store.pair_dir(lp.pair)}: no torso voxel lies {self.Ry} voxels inside the "
                                  f"border of the {lp.dvf.shape[:3]} DVF grid, so no {2 * self.Ry + 1}^3 output "
                                  "patch fits; use a smaller Ry or larger images.")
        wanted = self.schedule.samples(len(loaded))
        rows = draw_centres(index, wanted, rng, self.thresholds, where)
        if len(rows) < wanted:  # fewer candidate voxels in the chunk than requested draws
            warnings.warn(f"{where}only {len(rows)} candidate centres for {wanted} samples; drawing the rest again "
                          "(with replacement).", ClassBalanceWarning, stacklevel=2)
            rows = np.concatenate([rows, rows[rng.integers(0, len(rows), wanted - len(rows))]])
        return rows

    def _make_batch(self, chunk: Chunk, position: Position):
        rows = chunk.rows[position.batch * self.batch_size:(position.batch + 1) * self.batch_size]
        sx, sy = 2 * self.R + 1, 2 * self.Ry + 1
        x = self._buffers.empty((len(rows), sx, sx, sx, 2))
        y = self._buffers.empty((len(rows), sy, sy, sy, 3))
        rng = rng_for("PatchReader", self.mode, self.settings.stage, "augment", position.semi_epoch,
                      position.chunk, position.batch)
        info = []
        for b, (i, flat, cls) in enumerate(rows):
            lp = chunk.pairs[i]
            centre = tuple(int(c) for c in np.unravel_index(flat, lp.dvf.shape[:3]))
            cut(lp.images, centre, self.R, x[b], lp.pad_value)  # both channels in one copy
            cut(lp.dvf, centre, self.Ry, y[b], 0.0)
            item = {"data": lp.pair.image.data, "case": lp.pair.image.cn, "type_im": lp.pair.image.type_im,
                    "dsmooth": lp.pair.dsmooth, "centre": centre, "class": int(cls),
                    "position": (position.semi_epoch, position.chunk, position.batch)}
            if self.augment:
                permutation, flips = random_orientation(rng)
                x[b] = orient_image(x[b], permutation, flips)
                y[b] = orient_dvf(y[b], permutation, flips)
                item.update(permutation=permutation, flips=flips)
            info.append(item)
        return x, y, info
