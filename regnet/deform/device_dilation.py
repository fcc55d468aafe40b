"""Mixed frequency's random dilation phases on the device, with ``keras.ops`` only.

The batched twin of :func:`regnet.deform.methods.dilated_edge_mask` (regnet_spec.md 1.4, mixed
frequency step 3): from each image's Canny edges (computed once per image on the CPU) and its
region (lung, else torso), draw (B, 3, z, y, x) masks, one channel per DVF component, in the
same phases with the same parameters:

1. available points = edges inside the region dilated by one voxel; the mask starts as them,
   dilated once by the full 3x3x3 box;
2. ``round(10 Np / 12) - 1`` zero-motion holes: blocks of ``block radius`` voxels around random
   available points set to zero;
3. ``round(11 Np / 12) - round(10 Np / 12)`` growth blocks, each dilating the mask inside it by
   the 18-connected element (the block is exhausted on even iterations), then
   ``Np - round(11 Np / 12)`` growth blocks with RegNet's directional element (a 9^3 cube with
   5 slices along axis ``iteration % 3``; exhausted with probability 0.7).

Dilations are max-pooling along one axis at a time (``keras.ops.max_pool`` on a zero-padded
volume; asymmetric windows for the directional element): exactly ``binary_dilation`` with the
same element (tested against SciPy).

What is batched, and why the distribution is kept (the CPU runs the phases one point at a time):

- Points are drawn with one ``top_k`` of random keys per channel (``keras.random.uniform``
  seeded from the sample's NumPy generator, masked to the available voxels): a uniformly random
  ordering of the available points. The first ``n_holes`` are the holes; the CPU draws them
  uniformly *with* replacement from a set that the hole phase never changes, so only the rare
  repeats differ (and a hole drawn twice punches nothing more).
- Setting blocks to zero commutes, so all holes are punched at once: the mask minus the union
  of the hole blocks (one box dilation of the hole points).
- Growth points are the following candidates of the same ordering, accepted in order when
  outside every block exhausted by an earlier accepted point (``keras.ops.fori_loop`` over the
  candidates, on a (B*3, K, K) table of which candidate lies in which one's block). Skipping
  excluded candidates of a random ordering is exactly drawing uniformly from what is still
  available, as the CPU's rejection sampling does; the exhaustion schedule (even iterations,
  then probability 0.7 from the sample's generator) is the CPU's.
- Growth then acts once per group (18-connected; directional along z, y, x) on the union of the
  group's blocks: ``mask | dilate(mask & blocks) & blocks``, the CPU's "dilate the block's
  content inside the block". Where two blocks of one group overlap the CPU dilates twice (once
  per block, one after the other); here once. Exhaustion keeps overlapping blocks rare, and the
  lost voxel shell is small next to a block: the coverage test bounds the difference.
- The CPU stops every channel once any channel has 4 or fewer available points; here a channel
  stops growing when its candidates run out (``CANDIDATES_PER_GROWTH`` per growth iteration), and
  an image with 4 or fewer available points keeps its bare edges, as there.

Every set voxel lies within one voxel (the first dilation) or one block radius (holes and growth
act inside blocks centred on available points) of an available point, as on the CPU.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

#: Growth candidates drawn per growth iteration: accepted ones are fewer when exhausted blocks
#: exclude some; enough that a channel runs out only where the CPU would stop as well.
CANDIDATES_PER_GROWTH = 4

#: Rounds of growth: blocks within reach of an earlier one wait for a later round; from the
#: last round on, the rest is applied together (see the module's docstring).
GROWTH_ROUNDS = 3

#: How far the growth elements reach from a voxel (the directional 9^3 element: 4 voxels).
_REACH = 4


# ---------------------------------------------------------------- dilations as max-pooling
def running_max(x, axis: int, low: int, high: int):
    """``out[i] = max(x[i + low], ..., x[i + high])`` along ``axis`` (1, 2 or 3) of (N, z, y, x, C)
    tensors, zero outside (``low <= 0 <= high``): one max-pooling of the zero-padded volume."""
    if not low <= 0 <= high:
        raise ValueError(f"running_max needs low <= 0 <= high, got {low}, {high}")
    if low == high == 0:
        return x
    pad = [(0, 0)] * 5
    pad[axis] = (-low, high)
    window = [1, 1, 1]
    window[axis - 1] = high - low + 1
    return ops.max_pool(ops.pad(x, pad), tuple(window), strides=1, padding="valid")


def box_dilate(x, windows):
    """Dilation of 0/1 (N, z, y, x, C) volumes by a box; ``windows`` gives ``(low, high)`` offsets
    per array axis (z, y, x). ``binary_dilation`` by the element reflected through its centre:
    ``((-1, 1),) * 3`` is the 3x3x3 box."""
    for axis, (low, high) in enumerate(windows, start=1):
        x = running_max(x, axis, low, high)
    return x


def dilate_18(x):
    """Dilation by the 18-connected 3x3x3 element (the cube less its corners): the union of the
    three 3x3 squares perpendicular to z, y and x, since an offset with at most two non-zero
    coordinates lies in the plane of a zero one."""
    along_x = running_max(x, 3, -1, 1)
    along_y = running_max(x, 2, -1, 1)
    return ops.maximum(ops.maximum(running_max(along_x, 2, -1, 1), running_max(along_x, 1, -1, 1)),
                       running_max(along_y, 1, -1, 1))


def directional_windows(axis: int, size: int = 9, length: int = 5):
    """Windows of RegNet's directional element (a ``size``-cube whose first ``length`` slices
    along array ``axis`` are set), as offsets for :func:`box_dilate`."""
    half = size // 2
    return tuple((0, length - 1) if k == axis else (-half, half) for k in range(3))


def block_windows(radius_zyx):
    return tuple((-int(r), int(r)) for r in radius_zyx)


# ---------------------------------------------------------------- phases
def phase_bounds(np_iterations: int) -> tuple[int, int]:
    """First iteration of the 18-connected and of the directional growth (RegNet's rounding)."""
    return round(10 * np_iterations / 12), round(11 * np_iterations / 12)


def _accept_growth(candidates, valid, schedule, radius_zyx, shape, n_growth: int):
    """Walk each channel's candidates in order and accept those outside every block exhausted
    so far, until ``n_growth`` are accepted; give each accepted one a round: one more than the
    latest earlier accepted one whose block comes within an element's reach of its own (so
    that the blocks of one round neither overlap nor feed each other, and applying the rounds
    in order is applying the points in order). Returns (rank, round), (N, K) float: growth
    rank + 1 (0: not accepted) and the round."""
    ny, nx = shape[1], shape[2]
    z, y, x = candidates // (ny * nx), (candidates // nx) % ny, candidates % nx
    inside = conflict = None
    for coordinate, r in zip((z, y, x), radius_zyx):
        distance = ops.abs(ops.expand_dims(coordinate, 2) - ops.expand_dims(coordinate, 1))
        a, b = distance <= int(r), distance <= 2 * int(r) + _REACH
        inside = a if inside is None else ops.logical_and(inside, a)
        conflict = b if conflict is None else ops.logical_and(conflict, b)
    # table[n, i, j, 0]: j lies in i's block; [..., 1]: their blocks are within reach
    table = ops.cast(ops.stack([inside, conflict], axis=-1), "float32")
    k = int(candidates.shape[1])
    columns = ops.arange(k, dtype="int32")
    steps = ops.arange(n_growth, dtype="int32")
    n = int(candidates.shape[0])

    def body(j, state):
        rank, exhausting, level, count = state
        onehot = ops.cast(ops.equal(columns, j), "float32")
        column = ops.einsum("nijc,j->nic", table, onehot)
        excluded = ops.max(exhausting * column[..., 0], axis=1) > 0
        valid_j = ops.sum(valid * onehot, axis=1) > 0
        okf = ops.cast(ops.logical_and(ops.logical_and(valid_j, ops.logical_not(excluded)), count < n_growth),
                       "float32")
        exhausts = ops.sum(schedule * ops.cast(ops.equal(steps, ops.expand_dims(count, 1)), "float32"), axis=1)
        after = ops.max((level + 1.0) * ops.cast(rank > 0, "float32") * column[..., 1], axis=1)
        rank = rank + ops.expand_dims(okf * ops.cast(count + 1, "float32"), 1) * onehot
        exhausting = exhausting + ops.expand_dims(okf * exhausts, 1) * onehot
        level = level + ops.expand_dims(okf * after, 1) * onehot
        return rank, exhausting, level, count + ops.cast(okf, "int32")

    state = (ops.zeros((n, k), "float32"), ops.zeros((n, k), "float32"), ops.zeros((n, k), "float32"),
             ops.zeros((n,), "int32"))
    rank, _, level, _ = ops.fori_loop(0, k, body, state)
    return rank, level


def _exhaust_schedule(rngs, np_iterations: int) -> np.ndarray:
    """(B, 3, Np - b1) float: whether the growth iteration exhausts its block, per channel (even
    iterations in the 18-connected phase; probability 0.7 from the generator in the directional one)."""
    b1, b2 = phase_bounds(np_iterations)
    even = np.array([it % 2 == 0 for it in range(b1, b2)], np.float32)
    rows = []
    for rng in rngs:
        coin = (rng.random((3, np_iterations - b2)) < 0.7).astype(np.float32)
        rows.append(np.concatenate([np.broadcast_to(even, (3, b2 - b1)), coin], axis=1))
    return np.stack(rows)


def dilated_edge_masks(edges, region, np_iterations: int, radius_zyx, rngs, rounds: int = GROWTH_ROUNDS):
    """Random dilation phases for a batch: ``edges`` and ``region`` (B, z, y, x) 0/1 tensors,
    ``radius_zyx`` the block radius in voxels per array axis, one NumPy generator per sample
    (draws: one seed, then the directional phase's exhaustion coins). Returns (B, 3, z, y, x)
    float32 0/1, one channel per DVF component."""
    batch = len(rngs)
    shape = tuple(int(s) for s in edges.shape[1:])
    near = box_dilate(ops.expand_dims(ops.cast(region, "float32"), -1), ((-1, 1),) * 3)[..., 0]
    available = ops.cast(edges, "float32") * near                                   # (B, z, y, x)
    points = draw_points(available, np_iterations, radius_zyx, rngs)
    mask = apply_phases(available, points, np_iterations, radius_zyx, rounds)
    enough = ops.sum(available, axis=(1, 2, 3)) > 4
    bare = ops.repeat(ops.expand_dims(available, 1), 3, axis=1)
    return ops.where(ops.reshape(enough, (batch, 1, 1, 1, 1)), ops.reshape(mask, (batch, 3) + shape), bare)


def draw_points(available, np_iterations: int, radius_zyx, rngs) -> dict:
    """The random points of every channel (row ``3 b + c``): ``holes`` (B*3, V) 0/1 flat indicator
    of the hole centres; growth ``candidates`` (B*3, K) flat indices with their ``rank`` (iteration
    - b1 + 1, 0: not accepted) and ``round``."""
    batch = len(rngs)
    shape = tuple(int(s) for s in available.shape[1:])
    volume = int(np.prod(shape))
    b1, _ = phase_bounds(np_iterations)
    n_holes, n_growth = max(b1 - 1, 0), np_iterations - b1
    seeds = [int(rng.integers(2 ** 31 - 1)) for rng in rngs]
    schedule = _exhaust_schedule(rngs, np_iterations).reshape(batch * 3, -1)
    flat = ops.reshape(ops.repeat(ops.expand_dims(available, 1), 3, axis=1), (batch * 3, volume))
    keys = ops.concatenate([ops.reshape(keras.random.uniform((3, volume), seed=s), (3, volume)) for s in seeds])
    keys = ops.where(flat > 0, keys, -1.0)
    k = min(n_holes + CANDIDATES_PER_GROWTH * n_growth, volume)
    values, indices = ops.top_k(keys, k)
    out = {"holes": None, "candidates": None}
    if n_holes > 0:                                      # the holes: the first points of the ordering
        threshold = ops.expand_dims(values[:, min(n_holes, k) - 1], 1)
        out["holes"] = ops.cast(ops.logical_and(keys >= threshold, keys >= 0.0), "float32")
    candidates = ops.cast(indices[:, n_holes:], "int32")
    if n_growth > 0 and int(candidates.shape[1]) > 0:
        valid = ops.cast(values[:, n_holes:] >= 0.0, "float32")
        out["rank"], out["round"] = _accept_growth(candidates, valid, ops.convert_to_tensor(schedule), radius_zyx,
                                                   shape, n_growth)
        out["candidates"] = candidates
    return out


def apply_phases(available, points: dict, np_iterations: int, radius_zyx, rounds: int = GROWTH_ROUNDS):
    """The phases given the points (:func:`draw_points`): (B*3, z, y, x, 1) float 0/1. Growth rounds
    from ``rounds - 1`` on are applied together."""
    batch = int(available.shape[0])
    shape = tuple(int(s) for s in available.shape[1:])
    volume = int(np.prod(shape))
    _, b2 = phase_bounds(np_iterations)
    b1 = phase_bounds(np_iterations)[0]
    windows = block_windows(radius_zyx)
    first = box_dilate(ops.expand_dims(available, -1), ((-1, 1),) * 3)              # the full dilation
    mask = ops.reshape(ops.repeat(ops.expand_dims(first, 1), 3, axis=1), (batch * 3,) + shape + (1,))
    if points["holes"] is not None:
        holes = box_dilate(ops.reshape(points["holes"], (batch * 3,) + shape + (1,)), windows)
        mask = mask * (1.0 - holes)
    if points["candidates"] is None:
        return mask
    candidates, rank = points["candidates"], points["rank"]
    iteration = rank - 1.0 + b1
    level = ops.minimum(points["round"], float(rounds - 1))
    kinds = [(ops.less(iteration, float(b2)), None)]
    kinds += [(ops.logical_and(iteration >= b2, ops.equal(ops.mod(iteration, 3.0), float(a))), a)
              for a in _axis_order(b2)]
    rows = ops.repeat(ops.expand_dims(ops.arange(batch * 3, dtype="int32"), 1), int(candidates.shape[1]), axis=1)
    index = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(candidates, (-1,))], axis=1)
    for r in range(rounds):
        chosen = ops.logical_and(rank > 0, ops.equal(level, float(r)))
        weights = ops.stack([ops.reshape(ops.cast(ops.logical_and(chosen, kind), "float32"), (-1,))
                             for kind, _ in kinds], axis=1)
        centres = ops.reshape(ops.scatter(index, weights, (batch * 3, volume, len(kinds))),
                              (batch * 3,) + shape + (len(kinds),))
        blocks = box_dilate(centres, windows)
        for g, (_, axis) in enumerate(kinds):
            block = blocks[..., g:g + 1]
            inside = mask * block
            grown = dilate_18(inside) if axis is None else box_dilate(inside, directional_windows(axis))
            mask = ops.maximum(mask, grown * block)
    return mask


def _axis_order(b2: int) -> list[int]:
    """The directional groups in the order their first iterations come (axis = iteration % 3)."""
    return [(b2 + k) % 3 for k in range(3)]
