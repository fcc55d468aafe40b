"""Whole volumes through a patch network: overlapping tiles, run in batches, blended smoothly.

A pure function of two arrays and a predictor (like MONAI's ``sliding_window_inference``): no
network, file or geometry in here. The predictor says how big its input must be:

* ``radius_in`` R and ``radius_out`` Ry: an input of side ``n + 2(R - Ry)`` gives an output of
  side ``n`` (a *valid* network; ``R == Ry`` is a full-image network, same-size output);
* ``unit``: valid output sides are ``size_base + k * unit`` (``size_base`` defaults to
  ``2 Ry + 1``; 4 for crop4/decimation4, 8 for unet1);
* ``predict(x)``: ``x`` float32 ``(B, Z, Y, X, 2)`` channels [moving, fixed] -> ``(B, z, y, x, 3)``;
* ``pad_value``: what the network saw outside the body in training (-2048).

Why tiles start on multiples of ``unit`` in one padded frame: strided networks are translation
equivariant only for shifts that are multiples of their stride, so every tile then sees the same
phase as one big patch over the same padded volume would, and the tiled output equals that big
patch (exactly, for a network whose receptive field fits its margin). Blending weights are a
separable window that is never zero (sine or Gaussian), normalised by the weight sum, so a voxel
covered once keeps its value and overlaps fade into each other without seams.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from regnet import RegNetError

BLENDS = ("cosine", "gaussian", "constant")
#: Rough working memory of a 3D CNN forward pass per input voxel (bytes); a model may say its own.
DEFAULT_BYTES_PER_VOXEL = 1024
#: Fraction of the available memory that the tiles of one batch may use.
MEMORY_FRACTION = 0.4
MAX_BATCH = 8


@dataclass(frozen=True)
class AxisPlan:
    """Tiling along one axis: ``count`` output tiles of side ``tile`` every ``stride`` voxels,
    covering ``covered`` voxels of which the volume's ``size`` start at ``pad_before``."""

    size: int
    tile: int
    stride: int
    count: int
    pad_before: int

    @property
    def covered(self) -> int:
        return self.tile + (self.count - 1) * self.stride

    @property
    def starts(self) -> list[int]:
        return [i * self.stride for i in range(self.count)]


@dataclass(frozen=True)
class TilePlan:
    axes: tuple[AxisPlan, AxisPlan, AxisPlan]
    margin: int
    batch_size: int
    blend: str

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        return tuple(a.tile for a in self.axes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(a.tile + 2 * self.margin for a in self.axes)

    @property
    def count(self) -> int:
        return math.prod(a.count for a in self.axes)

    def describe(self) -> dict:
        return {"tiles": self.count, "tile_output": list(self.tile_shape), "tile_input": list(self.input_shape),
                "stride": [a.stride for a in self.axes], "batch_size": self.batch_size, "blend": self.blend}


def _spec(predictor) -> tuple[int, int, int, int]:
    """(margin, unit, size_base, radius_out) of a predictor, checked."""
    try:
        r_in, r_out, unit = int(predictor.radius_in), int(predictor.radius_out), int(getattr(predictor, "unit", 1))
    except AttributeError as err:
        raise RegNetError(f"The predictor lacks {err.name!r}: it needs radius_in, radius_out, unit, pad_value "
                          "and predict(x) (see regnet.register.StageModel).") from None
    if r_out < 0 or r_in < r_out or unit < 1:
        raise RegNetError(f"Invalid predictor sizes radius_in={r_in}, radius_out={r_out}, unit={unit}: "
                          "need radius_in >= radius_out >= 0 and unit >= 1.")
    base = int(getattr(predictor, "size_base", None) or 2 * r_out + 1)
    return r_in - r_out, unit, base, r_out


def valid_ceil(n: int, base: int, unit: int) -> int:
    """The smallest valid output side >= n."""
    return base if n <= base else base + math.ceil((n - base) / unit) * unit


def valid_floor(n: int, base: int, unit: int) -> int | None:
    """The largest valid output side <= n (None when even the smallest is larger)."""
    return None if n < base else base + ((n - base) // unit) * unit


def available_memory_bytes() -> int:
    """Memory available to this process now (Linux MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def automatic_max_patch(predictor, memory_bytes: int | None = None) -> int:
    """The largest input side whose forward pass fits a share of the memory available now."""
    per_voxel = float(getattr(predictor, "bytes_per_voxel", None) or DEFAULT_BYTES_PER_VOXEL)
    memory = available_memory_bytes() if memory_bytes is None else memory_bytes
    return max(1, int((MEMORY_FRACTION * memory / per_voxel) ** (1.0 / 3.0)))


def plan_tiles(shape, predictor, max_patch: int | None = None, overlap: float | None = None,
               batch_size: int | None = None, blend: str = "cosine") -> TilePlan:
    """How to cover a (z, y, x) volume: tile side, stride and count per axis, and the batch size.

    ``max_patch`` is the largest input side (voxels) per tile; automatic from memory when None.
    ``overlap`` is a fraction of the tile (< 1) or voxels (>= 1), rounded up to the unit. Default:
    two units for a valid network (each tile already sees its full margin of context; the overlap
    only blends away the small dependence of outputs near a tile edge on what lies beyond it),
    a quarter of the tile for a full-image network (zero-padded borders are poor; MONAI's default).
    """
    if blend not in BLENDS:
        raise RegNetError(f"Unknown blend {blend!r}; choose one of {', '.join(BLENDS)}.")
    margin, unit, base, _ = _spec(predictor)
    auto = max_patch is None
    max_patch = automatic_max_patch(predictor) if auto else int(max_patch)
    largest = valid_floor(max_patch - 2 * margin, base, unit)
    if largest is None:
        if not auto:
            raise RegNetError(f"--max-patch {max_patch} is smaller than this model's smallest input "
                              f"{base + 2 * margin} voxels; use at least that.")
        largest = base  # the memory estimate is rough; the smallest patch must run anyway
    axes = []
    for n in (int(s) for s in shape):
        if n < 1:
            raise RegNetError(f"Cannot tile an empty volume of shape {tuple(shape)}.")
        one = valid_ceil(n, base, unit)
        if one <= largest:
            axes.append(AxisPlan(n, one, unit, 1, (one - n) // 2))
            continue
        tile = largest
        if overlap is None:
            lap = 2 * unit if margin > 0 else 0.25 * tile
        else:
            lap = overlap * tile if overlap < 1 else overlap
        stride = _stride(tile, lap, unit)
        count = math.ceil((n - tile) / stride) + 1
        # the smallest tile that still covers the axis with this many tiles: less wasted padding
        for smaller in range(valid_ceil(math.ceil(n / count), base, unit), tile, unit):
            if smaller + (count - 1) * _stride(smaller, lap, unit) >= n:
                tile, stride = smaller, _stride(smaller, lap, unit)
                break
        covered = tile + (count - 1) * stride
        axes.append(AxisPlan(n, tile, stride, count, (covered - n) // 2))
    plan_input = math.prod(a.tile + 2 * margin for a in axes)
    if batch_size is None:
        per_voxel = float(getattr(predictor, "bytes_per_voxel", None) or DEFAULT_BYTES_PER_VOXEL)
        fit = int(MEMORY_FRACTION * available_memory_bytes() / (per_voxel * plan_input))
        batch_size = max(1, min(MAX_BATCH, fit, math.prod(a.count for a in axes)))
    elif batch_size < 1:
        raise RegNetError(f"batch_size must be >= 1, got {batch_size}.")
    return TilePlan(tuple(axes), margin, int(batch_size), blend)


def _stride(tile: int, overlap: float, unit: int) -> int:
    return max(unit, ((tile - math.ceil(overlap)) // unit) * unit)


def window(n: int, blend: str, single: bool) -> np.ndarray:
    """1D blending weights for one tile side, positive everywhere (never zero at an edge)."""
    if single or blend == "constant":
        return np.ones(n, np.float32)
    i = np.arange(n, dtype=np.float64) + 0.5
    if blend == "cosine":  # sine bump: pi/(2n) at the edges, 1 in the middle
        w = np.sin(np.pi * i / n)
    else:  # Gaussian with sigma = n/8 (MONAI's default), floored like MONAI's min_non_zero
        w = np.exp(-0.5 * ((i - n / 2) / (n / 8.0)) ** 2)
        w = np.maximum(w, 1e-3)
    return w.astype(np.float32)


def tiled_predict(moving: np.ndarray, fixed: np.ndarray, predictor, max_patch: int | None = None,
                  overlap: float | None = None, batch_size: int | None = None, blend: str = "cosine",
                  plan: TilePlan | None = None, progress: bool = False) -> tuple[np.ndarray, TilePlan]:
    """The predictor's DVF for a whole (z, y, x) volume pair: ``(z, y, x, 3)`` float32.

    The volume is padded with ``pad_value`` (to the covered size plus the network margin), cut into
    overlapping input tiles, run ``batch_size`` tiles at a time, and the weighted outputs are summed
    and divided by the summed weights.
    """
    moving, fixed = np.asarray(moving), np.asarray(fixed)
    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise RegNetError(f"Tiling needs two 3D arrays of one shape; got {moving.shape} and {fixed.shape}.")
    plan = plan or plan_tiles(moving.shape, predictor, max_patch, overlap, batch_size, blend)
    m = plan.margin
    pad_value = np.float32(getattr(predictor, "pad_value", -2048.0))
    covered = [a.covered for a in plan.axes]
    padded = np.full([c + 2 * m for c in covered] + [2], pad_value, np.float32)
    inside = tuple(slice(m + a.pad_before, m + a.pad_before + a.size) for a in plan.axes)
    padded[inside + (0,)] = moving
    padded[inside + (1,)] = fixed

    total = np.zeros(covered + [3], np.float32)
    weight_sum = np.zeros(covered, np.float32)
    wz, wy, wx = (window(a.tile, plan.blend, a.count == 1) for a in plan.axes)
    weights = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
    starts = [(z, y, x) for z in plan.axes[0].starts for y in plan.axes[1].starts for x in plan.axes[2].starts]
    ti = plan.input_shape
    bar = _progress(len(starts), progress)
    for b in range(0, len(starts), plan.batch_size):
        chunk = starts[b:b + plan.batch_size]
        x = np.stack([padded[z:z + ti[0], y:y + ti[1], x0:x0 + ti[2]] for z, y, x0 in chunk])
        y_pred = np.asarray(predictor.predict(x), dtype=np.float32)
        expected = (len(chunk),) + plan.tile_shape + (3,)
        if y_pred.shape != expected:
            raise RegNetError(f"The model returned {y_pred.shape} for input {x.shape}; expected {expected} "
                              f"(radius_in/radius_out/unit of the model do not match its network).")
        for (z, y, x0), out in zip(chunk, y_pred):
            region = (slice(z, z + plan.tile_shape[0]), slice(y, y + plan.tile_shape[1]),
                      slice(x0, x0 + plan.tile_shape[2]))
            total[region] += out * weights[..., None]
            weight_sum[region] += weights
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    crop = tuple(slice(a.pad_before, a.pad_before + a.size) for a in plan.axes)
    result = np.ascontiguousarray(total[crop])
    result /= weight_sum[crop][..., None]
    return result, plan


def _progress(total: int, enabled: bool):
    if not enabled or total <= 1:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", leave=False)
