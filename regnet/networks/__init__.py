"""RegNet's networks by name: ``build('crop4_connection', width=0.25)``, sizes, radii, save/load.

Every network maps an input patch (B, n, n, n, 2) with channels [moving, fixed] in raw HU to a DVF
(B, m, m, m, 3) in mm with components (x, y, z). Intensity scaling and RegNet's training noise are
layers of the model, so a saved model carries them.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from regnet import RegNetError
from regnet.networks.model import RegNetModel
from regnet.networks.registry import ALIASES, NETWORKS, get_spec
from regnet.networks.spec import DEFAULT_INTENSITY, NetworkOptions, NetworkSpec

__all__ = ["ALIASES", "DEFAULT_INTENSITY", "NETWORKS", "NetworkOptions", "NetworkSpec", "RegNetModel", "build",
           "count_parameters", "get_spec", "input_size", "load", "output_size", "patch_radii", "resize",
           "resize_unit"]

PAPER = "paper"


def build(name: str, *, input_size: int | None | str = PAPER, **options) -> RegNetModel:
    """Build network ``name`` for cubic inputs of side ``input_size``.

    ``input_size``: ``'paper'`` (2R+1: 101, 105, 125), an int on the network's size grid, or None for
    dynamic sizes. ``options``: see :class:`NetworkOptions` (width, batch_norm, intensity,
    input_noise, seed).
    """
    spec = get_spec(name)
    size = spec.paper_input if input_size == PAPER else input_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise RegNetError(f"input_size must be an int, None (dynamic) or 'paper', got {input_size!r}")
    return RegNetModel(spec.name, size, options)


def patch_radii(name: str) -> tuple[int, int]:
    """(R, Ry) of the paper: input patch side 2R+1, output side 2Ry+1."""
    spec = get_spec(name)
    return spec.R, spec.Ry


def resize_unit(name: str) -> int:
    """Input sides may change by multiples of this (RegNet's ``get_resize_unit``)."""
    return get_spec(name).resize_unit


def output_size(name: str, input_size: int) -> int:
    """Output side for an input side; a clear error naming the nearest valid sizes otherwise."""
    return get_spec(name).output_size(input_size)


def input_size(name: str, output: int) -> int:
    """Input side that gives an output side of ``output``."""
    return get_spec(name).input_size(output)


def count_parameters(model: keras.Model) -> int:
    """Trainable parameters (conv weights + bias + BN gamma/beta; not BN moving statistics)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def resize(model: RegNetModel, input_size: int | None) -> RegNetModel:
    """The same network and weights for another input side (None: dynamic), e.g. for whole-image inference."""
    if not isinstance(model, RegNetModel):
        raise RegNetError(f"resize needs a RegNet network model, got {type(model).__name__}")
    new = RegNetModel(model.network_name, input_size, model.network_options.to_dict())
    new.set_weights(model.get_weights())
    return new


def load(path) -> RegNetModel:
    """Load a network saved with ``model.save('x.keras')``; the file holds its full construction options."""
    path = Path(path)
    if not path.is_file():
        raise RegNetError(f"model file not found: {path}")
    if path.suffix != ".keras":
        raise RegNetError(f"{path}: expected a native Keras model file ending in .keras")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises several types for a foreign or damaged file
        raise RegNetError(f"{path}: cannot load as a Keras model ({type(error).__name__}: {error})") from error
    if not isinstance(model, RegNetModel):
        raise RegNetError(f"{path} holds a {type(model).__name__}, not a RegNet network (regnet.networks.build)")
    return model
