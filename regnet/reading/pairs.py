"""One synthetic pair as the reader needs it: images masked to their torso, the DVF, the centre mask.

Two sources, one result: :func:`load_pair` reads the pair's files, :func:`make_loaded_pair` makes
the pair in memory by the generator's own code path (no file), bitwise the same arrays.
Files are read through the pair store; a pair that is not on disk yet is made on demand by the
generator's own atomic, resumable path (never polled for). A pair on disk made from other
settings than the reader's (its done.json ``made_from`` record, see :mod:`regnet.resume`) is
refused: training on it would look fine and be wrong. Every file problem becomes one
:class:`~regnet.RegNetError` naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform.field import to_grid_axes
from regnet.geometry import Geometry
from regnet.io import map_metaimage, read_image
from regnet.resume import made_from, stale_pairs
from regnet.store import PairId, PairStore


@dataclass
class LoadedPair:
    """Arrays of one pair on its stage grid (z, y, x). ``dvf`` is in mm with components along the
    grid's own index axes (x, y, z) (= physical components for an identity direction)."""

    pair: PairId
    images: np.ndarray  # (z, y, x, 2): [moving, fixed], stacked so one copy cuts both channels
    dvf: np.ndarray
    torso: np.ndarray
    geometry: Geometry
    pad_value: float
    keep_alive: object = None  # the SimpleITK image whose buffer ``dvf`` may view (no copy)

    @property
    def moving(self) -> np.ndarray:
        return self.images[..., 0]

    @property
    def fixed(self) -> np.ndarray:
        return self.images[..., 1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.images, self.dvf, self.torso))

    def __getstate__(self):
        """Sent from a worker process: the arrays are copied into the pickle, the SimpleITK image
        they may view stays behind (the copy owns its data)."""
        return {**self.__dict__, "keep_alive": None}


def _read(path: Path, vector: bool = False) -> tuple[np.ndarray, Geometry]:
    """Voxels (z, y, x[, 3]) and grid: mapped from an uncompressed ``.mha`` (the job's files), else
    read by SimpleITK (a copy: a view would dangle once the image is freed)."""
    if not path.is_file():
        raise RegNetError(f"{path}: missing file of a generated pair (its done.json exists); delete the pair's "
                          "folder and run `regnet generate` again.")
    mapped = map_metaimage(path, vector=vector)
    if mapped is not None:
        return mapped
    image = read_image(path, vector=vector)
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def _check_made_from(store: PairStore, pair: PairId) -> None:
    """Refuse a pair whose done.json records other parameters than the reader's settings give."""
    keys = stale_pairs([pair], store).get(pair)
    if not keys:
        return
    folder = store.pair_dir(pair)
    if keys == ["(no record)"]:
        detail = "its done.json has no 'made_from' record (made by an older regnet), so it cannot be shown to match"
    else:
        recorded = json.loads((folder / "done.json").read_text(encoding="utf-8"))["made_from"]["parameters"]
        now = made_from(pair, store)["parameters"]
        detail = "differing keys: " + ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in keys)
    raise RegNetError(f"{folder}: this pair was made from other settings than the reader's; {detail}. Make the "
                      "pairs again with these settings (`regnet generate` with --overwrite; Python: "
                      "overwrite=True), or give the reader a new OutputFolder.")


def load_pair(store: PairStore, pair: PairId, generate_missing: bool = True) -> LoadedPair:
    """Read a pair's files (making the pair first when it is missing and ``generate_missing``)."""
    files = store.files(pair)
    if not files.done.is_file():
        if not generate_missing:
            raise RegNetError(f"{files.done.parent}: pair not generated (no done.json); run `regnet generate`.")
        from regnet.generate import generate_pair, prepare_image  # the job's atomic, resumable path

        prepare_image(pair.image, store)
        generate_pair(pair, store)
    _check_made_from(store, pair)
    dvf, geometry = _read(files.dvf, vector=True)
    parts = {}
    for name, path in (("deformed image", files.fixed), ("base image", files.moving)):
        parts[name] = _read(path)
        if not parts[name][1].close_to(geometry):
            grid = parts[name][1]
            raise RegNetError(f"{files.dvf}: the DVF grid {geometry.size} @ {geometry.spacing} mm differs from the "
                              f"{name} {path} ({grid.size} @ {grid.spacing} mm); "
                              "the pair is inconsistent: delete its folder and regenerate it.")
    return _loaded(store, pair, parts["base image"][0], _read(files.moving_torso)[0], parts["deformed image"][0],
                   _read(files.fixed_torso)[0], dvf, geometry, files.fixed_torso)


def make_loaded_pair(store: PairStore, pair: PairId, original=None) -> LoadedPair:
    """The pair made in memory by the generator's code path, no file read or written.

    ``original``: the (image, torso, lung) of ``pair.image`` on the stage grid when already made
    (once per image, :func:`regnet.generate.original_on_stage_grid`); made here otherwise."""
    from regnet.generate import make_next_image, make_pair, original_on_stage_grid

    if original is None:
        original = original_on_stage_grid(pair.image, store)
    default = store.layout(pair.image.data).default_pixel_value
    base = list(original) if pair.dsmooth == 0 else make_next_image(pair, store, list(original), default)
    made = make_pair(pair, store, base)
    view = sitk.GetArrayViewFromImage
    return _loaded(store, pair, view(made.image), view(made.torso), view(made.deformed), view(made.deformed_torso),
                   view(made.field), Geometry.of(made.field), f"{store.pair_dir(pair)} (made in memory)",
                   keep_alive=made.field)


def _loaded(store: PairStore, pair: PairId, moving: np.ndarray, moving_torso: np.ndarray, fixed: np.ndarray,
            fixed_torso: np.ndarray, dvf: np.ndarray, geometry: Geometry, torso_name,
            keep_alive=None) -> LoadedPair:
    """The reader's arrays of a pair: both images masked to their torso and stacked (one copy), the
    DVF along the grid axes (it may view a SimpleITK image: ``keep_alive`` keeps that alive)."""
    fixed_torso, moving_torso = fixed_torso > 0, moving_torso > 0
    if not fixed_torso.any():
        raise RegNetError(f"{torso_name}: the torso mask is empty, so no patch centre can be drawn in it.")
    pad = float(store.layout(pair.image.data).default_pixel_value)
    native = moving.dtype.newbyteorder("=")  # a mapped big-endian file keeps its type in memory
    dtype = native if moving.dtype == fixed.dtype and native in (np.int16, np.float32) else np.float32
    images = np.full(moving.shape + (2,), pad, dtype=dtype)  # voxels outside each torso: the background, as RegNet
    np.copyto(images[..., 0], moving, where=moving_torso, casting="unsafe")
    np.copyto(images[..., 1], fixed, where=fixed_torso, casting="unsafe")
    return LoadedPair(pair=pair, images=images, dvf=to_grid_axes(dvf, geometry), torso=fixed_torso,
                      geometry=geometry, pad_value=pad, keep_alive=keep_alive)
