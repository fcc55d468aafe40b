"""``PatchReader(source="device")``: fresh synthetic pairs on the accelerator for every batch, patches cut there.

Why: on a CPU a pair costs seconds, so the files source trains on the same few thousand fields; on
a GPU :func:`regnet.deform.device.generate_pairs` makes one in milliseconds, so every training
batch can carry new deformations and nothing is written.

How, and why each choice:

- Base images (each original on the stage grid, its torso and lung masks, and its Canny edges when
  one of its pairs is mixed frequency) are made once per image on the CPU (SimpleITK, the job's own
  :func:`regnet.generate.original_on_stage_grid`) and kept as device tensors for the whole run.
- Training batch ``n`` makes ``PairsPerBatch`` pairs (a walk over the shuffled pair list) with keys
  ``job key + ("PatchReader device", n, slot)``: the same settings and ``n`` give the same batch,
  so ``start=n`` resumes the stream exactly and no two batches share a field. ``len()`` of the
  training reader is the files source's semi-epoch (the same number of patches), so a learning-rate
  decay per semi-epoch decays after as many patches whichever the source.
- Validation makes its pairs with the job's own keys (no batch number): every pass cuts the same
  patches, from the device rendering of the pairs ``regnet generate`` would write. It walks the
  validation list in groups of ``PairsPerBatch`` pairs, ``SamplesPerImage`` patches each.
- Centres: the magnitude class of every voxel is computed on the device (-1 outside the torso or
  nearer than Ry to the border); only the class counts (pairs x classes) come to the CPU, where
  the files source's quota rule (:func:`regnet.reading.sampling.class_quota`, equal classes, water
  filling, the same warnings) fixes how many centres each class gets; each class's centres are then
  the top-k of one uniform random key per voxel on the device (uniform draws without replacement,
  pooled over the batch's pairs as the files source pools a chunk's), and only those few indices
  come back. So no volume ever crosses to the host: a 20 M-voxel label volume would be 20 MB and
  ~50 ms of NumPy per pair, more than making the pair on a GPU.
- Cutting: each image pair is padded once by R with the background value, then every patch is an
  ``ops.slice`` (a dynamic slice under JAX, no recompilation per centre); DVF patches need no
  padding (centres are at least Ry inside). Full-image networks (R == Ry) take the whole image
  padded to 2R+1 about its centre, BatchSize pairs per batch, as the files source.
- Augmentation (flips and axis permutations) draws the same orientations as the files source
  (:func:`regnet.reading.patches.random_orientation`, per batch) and applies them with ``keras.ops``.

Batches are backend tensors on the device (``np.asarray(x)`` gives the array); ``keras.ops`` only,
no TensorFlow import, so the reader runs under ``KERAS_BACKEND=jax``. Random streams (the noise of
:func:`~regnet.deform.device.generate_pairs`, the centre keys) are ``keras.random`` draws seeded
from the stable hash: deterministic on one backend, not equal between TensorFlow and JAX.
"""
from __future__ import annotations

import threading
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from regnet import RegNetError
from regnet.reading.patches import random_orientation
from regnet.reading.sampling import ClassBalanceWarning, class_quota, quota_warnings
from regnet.reading.schedule import Position, Schedule
from regnet.seeding import rng_for
from regnet.store import ImageId, PairId, PairStore

#: Batches made ahead of the consumer (each is BatchSize patches on the device: ~120 MB for crop4).
DEVICE_QUEUE = 2
SEED = "PatchReader device"


def job_key(pair: PairId) -> tuple:
    """The offline job's stable-hash key of a pair (without the purpose)."""
    from regnet.generate import pair_key

    return pair_key(pair.image, pair.dsmooth)


@dataclass
class BaseImage:
    """One original on the stage grid, on the device: (z, y, x) tensors, made once per run."""

    image: object
    torso: object
    lung: object
    edges: object | None
    geometry: object
    default: float
    integer: bool  # CT in HU: the deformed image is rounded as the job's Int16 files


@dataclass
class Group:
    """Pairs made together and the centres drawn in them (rows: pair in group, flat index, class)."""

    members: list[PairId]
    keys: list[tuple]
    images: list  # per pair (z, y, x, 2) [moving, fixed], masked to their torso
    dvfs: list  # per pair (z, y, x, 3) mm along the grid axes (x, y, z)
    pads: list[float]
    rows: np.ndarray


class DeviceBatches:
    """The batch stream of ``PatchReader(source="device")``: ``batch(n)`` is a pure function of the
    settings and ``n``. The reader runs it in one background thread, a few batches ahead."""

    def __init__(self, settings, mode: str, pairs: list[PairId], store: PairStore, radii: tuple[int, int],
                 thresholds, augment: bool, files_schedule: Schedule):
        from regnet.deform.field import magnitude_class_edges

        self.settings, self.mode, self.pairs, self.store = settings, mode, pairs, store
        self.R, self.Ry = radii
        self.full_image = self.R == self.Ry
        self.lows = [lo for lo, _ in magnitude_class_edges(thresholds)[1:]]
        self.thresholds, self.augment = list(thresholds), augment
        run = settings.NetworkTraining if mode == "Training" else settings.NetworkValidation
        self.batch_size = run.BatchSize
        per_group = self.batch_size if self.full_image else run.PairsPerBatch
        self.per_group = min(per_group, len(pairs))
        self.training = mode == "Training"
        for name in sorted({p.image.deform_exp for p in pairs}):
            extra = [s for s in settings.deform_exps[name].DeformedImExt[1:] if s not in ("Sponge", "Noise")]
            if extra:
                raise RegNetError(f"ReaderSource 'device' has no {extra[0]!r} augmentation (deform_exp {name}, "
                                  "DeformedImExt); remove it from DeformedImExt, or train from files "
                                  "(ReaderSource 'files' after `regnet generate`).")
        if self.training:
            self.length = files_schedule.batches_per_semi_epoch
            self.schedule = None
        else:
            self.schedule = Schedule(n_pairs=len(pairs), chunk_size=self.per_group,
                                     samples_per_image=run.SamplesPerImage, batch_size=self.batch_size,
                                     shuffle=False, seed_key=(SEED, mode, settings.stage),
                                     full_image=self.full_image, drop_remainder=False)
            self.length = self.schedule.batches_per_semi_epoch
        self._bases: dict[ImageId, BaseImage] = {}
        self._lock = threading.Lock()
        self._order: tuple[int, np.ndarray] | None = None
        self._group: tuple[int, Group] | None = None  # validation: the group being cut
        self._needs_edges = {p.image for p in pairs if store.method_of(p)[0] == "mixed_frequency"}

    def __len__(self) -> int:
        return self.length

    def position_of(self, number: int) -> Position:
        """Training: (semi-epoch, 0, batch in it); validation: (0, group, batch in group)."""
        if self.training:
            semi_epoch, batch = divmod(int(number), self.length)
            return Position(semi_epoch, 0, batch)
        return self.schedule.position_of(int(number) % self.length)

    # ------------------------------------------------------------ what a batch holds
    def members(self, number: int) -> tuple[list[PairId], list[tuple]]:
        """Training batch ``number``: its pairs (slots ``number * P ...`` of a walk over the pair list,
        reshuffled every pass) and their generation keys (with the batch number and slot)."""
        n = len(self.pairs)
        members, keys = [], []
        for slot in range(self.per_group):
            walk, i = divmod(int(number) * self.per_group + slot, n)
            order = self._order  # one read: another thread may replace it (the result is the same)
            if order is None or order[0] != walk:
                order = (walk, rng_for(SEED, self.mode, self.settings.stage, "order", walk).permutation(n))
                self._order = order
            pair = self.pairs[int(order[1][i])]
            members.append(pair)
            keys.append(job_key(pair) + (SEED, int(number), slot))
        return members, keys

    def batch(self, number: int):
        """``(x, y, info)`` of global batch ``number`` (validation: of the pass, modulo its length)."""
        from keras import ops

        if self.training:
            members, keys = self.members(number)
            samples = len(members) if self.full_image else self.batch_size
            group = self.make_group(members, keys, samples, ("centres", int(number)))
            rows, position = group.rows, self.position_of(number)
        else:
            position = self.position_of(number)
            if self._group is None or self._group[0] != position.chunk:
                members = [self.pairs[i] for i in self.schedule.chunks(0)[position.chunk]]
                samples = self.schedule.samples(len(members))
                self._group = None  # the previous group's tensors go before the next is made
                self._group = (position.chunk, self.make_group(members, [job_key(p) for p in members], samples,
                                                               ("centres", position.chunk)))
            group = self._group[1]
            rows = group.rows[position.batch * self.batch_size:(position.batch + 1) * self.batch_size]
        rng = rng_for(SEED, self.mode, self.settings.stage, "augment", int(number)) if self.augment else None
        xs, ys, info = [], [], []
        padded = {}
        for i, flat, cls in rows:
            i = int(i)
            shape = tuple(int(s) for s in group.dvfs[i].shape[:3])
            centre = tuple(int(c) for c in np.unravel_index(int(flat), shape))
            if i not in padded:
                padded[i] = _pad(group.images[i], self.R, group.pads[i])
            x = ops.slice(padded[i], centre + (0,), (2 * self.R + 1,) * 3 + (2,))
            if self.full_image:
                y = ops.slice(_pad(group.dvfs[i], self.R, 0.0), centre + (0,), (2 * self.R + 1,) * 3 + (3,))
            else:
                y = ops.slice(group.dvfs[i], tuple(c - self.Ry for c in centre) + (0,), (2 * self.Ry + 1,) * 3 + (3,))
            pair = group.members[i]
            item = {"data": pair.image.data, "case": pair.image.cn, "type_im": pair.image.type_im,
                    "dsmooth": pair.dsmooth, "centre": centre, "class": int(cls), "batch": int(number),
                    "key": group.keys[i], "position": (position.semi_epoch, position.chunk, position.batch)}
            if rng is not None:
                permutation, flips = random_orientation(rng)
                x, y = orient_image(x, permutation, flips), orient_dvf(y, permutation, flips)
                item.update(permutation=permutation, flips=flips)
            xs.append(x)
            ys.append(y)
            info.append(item)
        return ops.stack(xs), ops.stack(ys), info

    # ------------------------------------------------------------ pairs on the device
    def make_group(self, members: list[PairId], keys: list[tuple], samples: int, centre_key: tuple) -> Group:
        """Make ``members`` on the device (one :func:`generate_pairs` call per grid and experiment)
        and draw ``samples`` centres in them."""
        from keras import ops

        from regnet.deform.device import generate_pairs

        bases = [self._base(p.image) for p in members]
        batches = defaultdict(list)
        for i, (pair, base) in enumerate(zip(members, bases)):
            batches[(base.geometry, pair.image.deform_exp, base.default, base.integer)].append(i)
        images, dvfs, torsos = [None] * len(members), [None] * len(members), [None] * len(members)
        for (geometry, deform_exp, default, integer), index in batches.items():
            mine = [bases[i] for i in index]
            edges = None
            if any(p.image in self._needs_edges for p in (members[i] for i in index)):
                edges = ops.stack([b.edges if b.edges is not None else ops.zeros_like(b.torso) for b in mine])
            made = generate_pairs(ops.stack([b.image for b in mine]), ops.stack([b.torso for b in mine]),
                                  ops.stack([b.lung for b in mine]), geometry, self.settings.deform_exps[deform_exp],
                                  [keys[i] for i in index], [members[i].dsmooth for i in index],
                                  stage=self.settings.stage, default=default, round_hu=integer, edges=edges)
            dvf = made["dvf"]
            d = geometry.matrix
            if not np.allclose(d, np.eye(3)):  # components along the grid axes, as the files source
                dvf = ops.matmul(dvf, ops.convert_to_tensor(d.astype(np.float32)))
            moving = ops.where(made["moving_torso"] > 0, made["moving"], default)
            fixed = ops.where(made["fixed_torso"] > 0, made["fixed"], default)
            stacked = ops.stack([moving, fixed], axis=-1)
            for b, i in enumerate(index):
                images[i], dvfs[i], torsos[i] = stacked[b], dvf[b], made["fixed_torso"][b]
        pads = [b.default for b in bases]
        rng = rng_for(SEED, self.mode, self.settings.stage, *centre_key)
        if self.full_image:
            rows = self._full_image_rows(members, dvfs, rng)
        else:
            rows = self._draw(members, dvfs, torsos, samples, rng, f"{self.mode} {centre_key[0]} {centre_key[1]}: ")
        return Group(members, keys, images, dvfs, pads, rows)

    def _base(self, image: ImageId) -> BaseImage:
        with self._lock:  # the feeder thread and a direct caller may ask at once: made once
            if image not in self._bases:
                self._bases[image] = self._make_base(image)
            return self._bases[image]

    def _make_base(self, image: ImageId) -> BaseImage:
        """The original on the stage grid and its masks (and edges) as device tensors (CPU work, once)."""
        import SimpleITK as sitk
        from keras import ops

        from regnet.generate import original_on_stage_grid
        from regnet.geometry import Geometry

        on_grid, torso_image, lung_image = original_on_stage_grid(image, self.store)
        array = sitk.GetArrayFromImage(on_grid)
        torso = sitk.GetArrayFromImage(torso_image) > 0
        lung = sitk.GetArrayFromImage(lung_image) > 0
        edges = None
        if image in self._needs_edges:
            from regnet.deform.methods import _box_dilate, canny_edges

            exp = self.settings.deform_exps[image.deform_exp]
            region = lung if (exp.UseLungMask and lung.any()) else torso
            edges = ops.convert_to_tensor(canny_edges(on_grid, exp, _box_dilate(region.copy())))
        return BaseImage(
            image=ops.convert_to_tensor(array.astype(np.float32)), torso=ops.convert_to_tensor(torso),
            lung=ops.convert_to_tensor(lung), edges=edges, geometry=Geometry.of(on_grid),
            default=float(self.store.layout(image.data).default_pixel_value), integer=array.dtype.kind in "iu")

    # ------------------------------------------------------------ centres
    def _full_image_rows(self, members, dvfs, rng) -> np.ndarray:
        rows = []
        for i, dvf in enumerate(dvfs):
            shape = tuple(int(s) for s in dvf.shape[:3])
            if any(n > 2 * self.R + 1 for n in shape):
                raise RegNetError(f"{self.store.pair_dir(members[i])}: image {shape} is larger than the full-image "
                                  f"input {2 * self.R + 1}^3; use a patch network or a larger R.")
            rows.append([i, np.ravel_multi_index(tuple(n // 2 for n in shape), shape), 0])
        rows = np.array(rows, dtype=np.int64)
        return rows[rng.permutation(len(rows))] if self.training else rows

    def _labels(self, dvf, torso):
        """Flat int32 magnitude class of every voxel, -1 where no centre may go (outside the torso or
        nearer than Ry to a border), computed on the device."""
        from keras import ops

        shape = tuple(int(s) for s in dvf.shape[:3])
        magnitude = ops.sqrt(ops.sum(ops.square(dvf), axis=-1))
        label = ops.zeros(shape, "int32")
        for low in self.lows:
            label = label + ops.cast(magnitude >= low, "int32")
        inner = np.zeros(shape, bool)
        if all(n > 2 * self.Ry for n in shape):
            inner[tuple(slice(self.Ry, n - self.Ry) for n in shape)] = True
        allowed = ops.logical_and(torso > 0, ops.convert_to_tensor(inner))
        return ops.reshape(ops.where(allowed, label, -1), (-1,))

    def _draw(self, members, dvfs, torsos, samples: int, rng: np.random.Generator, where: str) -> np.ndarray:
        """Rows ``(pair, flat index, class)``: class-balanced over the group's pooled candidates, as
        :func:`regnet.reading.sampling.draw_centres`, the draws made on the device."""
        import keras
        from keras import ops

        labels = [self._labels(dvf, torso) for dvf, torso in zip(dvfs, torsos)]
        n_classes = len(self.lows) + 1
        counts = np.stack([ops.convert_to_numpy(ops.stack([ops.sum(ops.cast(lab == k, "int32"))
                                                            for k in range(n_classes)])) for lab in labels])
        for i, c in enumerate(counts):
            if c.sum() == 0:
                shape = tuple(int(s) for s in dvfs[i].shape[:3])
                raise RegNetError(f"{self.store.pair_dir(members[i])} (made on the device): no torso voxel lies "
                                  f"{self.Ry} voxels inside the border of the {shape} DVF grid, so no "
                                  f"{2 * self.Ry + 1}^3 output patch fits; use a smaller Ry or larger images.")
        available = counts.sum(axis=0)
        quota = class_quota(samples, available)
        quota_warnings(samples, available, quota, self.thresholds, where)
        starts = np.concatenate([[0], np.cumsum([int(lab.shape[0]) for lab in labels])])
        pooled = ops.concatenate(labels) if len(labels) > 1 else labels[0]
        keys = keras.random.uniform((int(starts[-1]),), seed=int(rng.integers(2 ** 31 - 1)))
        rows = []
        for k, q in enumerate(quota):
            if q == 0:
                continue
            _, picked = ops.top_k(ops.where(pooled == k, keys, -1.0), int(q))
            picked = ops.convert_to_numpy(picked).astype(np.int64)
            pair = np.searchsorted(starts, picked, side="right") - 1
            rows.append(np.stack([pair, picked - starts[pair], np.full_like(pair, k)], axis=1))
        rows = np.concatenate(rows).astype(np.int64)
        rows = rows[rng.permutation(len(rows))]
        if len(rows) < samples:  # fewer candidate voxels than requested draws
            warnings.warn(f"{where}only {len(rows)} candidate centres for {samples} samples; drawing the rest again "
                          "(with replacement).", ClassBalanceWarning, stacklevel=2)
            rows = np.concatenate([rows, rows[rng.integers(0, len(rows), samples - len(rows))]])
        return rows


def _pad(volume, radius: int, value: float):
    from keras import ops

    return ops.pad(volume, [[radius, radius]] * 3 + [[0, 0]], constant_values=value)


def orient_image(patch, permutation, flips):
    """:func:`regnet.reading.patches.orient_image` with ``keras.ops`` (a (z, y, x, C) patch on the device)."""
    from keras import ops

    out = ops.transpose(patch, tuple(permutation) + tuple(range(3, len(patch.shape))))
    for axis in range(3):
        if flips[axis]:
            out = ops.flip(out, axis=axis)
    return out


def orient_dvf(patch, permutation, flips):
    """:func:`regnet.reading.patches.orient_dvf` with ``keras.ops``: components follow their axes,
    a flipped axis negates its component."""
    from keras import ops

    out = orient_image(patch, permutation, flips)
    components = np.array([2 - permutation[2 - c] for c in range(3)], np.int32)
    signs = np.array([-1.0 if flips[2 - c] else 1.0 for c in range(3)], np.float32)
    return ops.take(out, components, axis=-1) * signs
