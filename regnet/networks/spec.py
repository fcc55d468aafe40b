"""What every network declares about itself (sizes, radii) and the options every network accepts."""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from regnet import RegNetError
from regnet.networks.layers import check_intensity

#: Default input scaling: HU window [-1000, 1000] -> [-1, 1], clipped. RegNet fed raw HU and relied
#: on batch norm; a fixed window keeps the first layer's inputs O(1) with or without batch norm, and
#: makes the -2048 padding read as air instead of an outlier twice as far away. Measured with
#: bench/intensity_scaling.py (tiny unet1, 240 steps): window never worse than raw, with or without BN.
DEFAULT_INTENSITY = {"mode": "window", "low": -1000.0, "high": 1000.0, "clip": True}


@dataclass(frozen=True)
class NetworkOptions:
    """Construction options shared by all networks (stored complete in every saved model)."""

    width: float = 1.0                 # channel multiplier: channels = max(1, round(c * width))
    batch_norm: bool = True            # conv -> BN -> activation (RegNet), or conv -> activation
    intensity: dict = field(default_factory=lambda: dict(DEFAULT_INTENSITY))
    input_noise: float = 2.0           # sigma in HU of RegNet's training-time integer noise; 0 = off
    seed: int | None = None            # seed of the input noise generator

    def channels(self, c: int) -> int:
        return max(1, round(c * self.width))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetworkOptions:
        names = list(cls.__dataclass_fields__)
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(names)}"
                raise RegNetError(f"unknown network option {key!r}{hint}")
        merged = {**asdict(cls()), **values}
        width = merged["width"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise RegNetError(f"network option width must be a positive number, got {width!r}")
        noise = merged["input_noise"]
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise RegNetError(f"network option input_noise must be a number >= 0 (HU), got {noise!r}")
        if not isinstance(merged["batch_norm"], bool):
            raise RegNetError(f"network option batch_norm must be True or False, got {merged['batch_norm']!r}")
        seed = merged["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RegNetError(f"network option seed must be an int or None, got {seed!r}")
        return cls(width=float(width), batch_norm=merged["batch_norm"], intensity=check_intensity(merged["intensity"]),
                   input_noise=float(noise), seed=seed)


@dataclass(frozen=True)
class NetworkSpec:
    """A network design: its graph builder and its size arithmetic.

    Valid input sizes are ``paper_input + k * resize_unit`` (k may be negative) down to
    ``min_input``; the output is always ``input - 2 * (R - Ry)``.
    """

    name: str
    graph: Callable            # graph(x, options) -> last feature tensor (before the DVF head)
    R: int                     # paper input radius: patch side 2R+1
    Ry: int                    # paper output radius: DVF side 2Ry+1
    resize_unit: int           # input sizes may change by multiples of this (pooling / stride depth)
    min_input: int             # smallest valid input side
    paper_parameters: int      # trainable parameters at width 1 (weights + bias + BN gamma/beta)
    full_image: bool = False   # trained on whole padded volumes (unet1, crop5) rather than patches
    description: str = ""

    @property
    def paper_input(self) -> int:
        return 2 * self.R + 1

    @property
    def paper_output(self) -> int:
        return 2 * self.Ry + 1

    def valid_input(self, size: int) -> bool:
        return size >= self.min_input and (size - self.paper_input) % self.resize_unit == 0

    def output_size(self, size: int) -> int:
        if isinstance(size, bool) or not isinstance(size, int):
            raise RegNetError(f"{self.name}: input size must be an int, got {size!r}")
        if not self.valid_input(size):
            below = size - (size - self.paper_input) % self.resize_unit
            candidates = [n for n in (below, below + self.resize_unit) if n >= self.min_input] or [self.min_input]
            raise RegNetError(
                f"{self.name} cannot take an input of {size} voxels per side: valid sizes are "
                f"{self.paper_input} + {self.resize_unit}k, at least {self.min_input} "
                f"(nearest: {' or '.join(map(str, candidates))})")
        return size - 2 * (self.R - self.Ry)

    def input_size(self, output: int) -> int:
        """The input side that gives ``output`` voxels per side (raises if none does)."""
        size = output + 2 * (self.R - self.Ry)
        self.output_size(size)
        return size
