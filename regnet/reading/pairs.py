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
from regnet.io import read_image
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


def _read(path: Path, vector: bool = False) -> sitk.Image:
    if not path.is_file():
        raise RegNetError(f"{path}: missing file of a generated pair (its done.json exists); delete the pair's "
                          "folder and run `regnet generate` again.")
    return read_image(path, vector=vector)


def _masked(image: sitk.Image, torso: np.ndarray, pad_value: float) -> np.ndarray:
    """Voxels outside the torso set to the background, as RegNet fed them (int16 kept for CT)."""
    array = sitk.GetArrayFromImage(image)
    if array.dtype not in (np.int16, np.float32):
        array = array.astype(np.float32)
    array[~torso] = pad_value
    return array


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
    fixed_image, dvf_image = _read(files.fixed), _read(files.dvf, vector=True)
    moving_image = _read(files.moving)
    geometry = Geometry.of(dvf_image)
    for what, image, path in (("deformed image", fixed_image, files.fixed), ("base image", moving_image, files.moving)):
        if not Geometry.of(image).close_to(geometry):
            raise RegNetError(f"{files.dvf}: the DVF grid {geometry.size} @ {geometry.spacing} mm differs from the "
                              f"{what} {path} ({Geometry.of(image).size} @ {Geometry.of(image).spacing} mm); "
                              "the pair is inconsistent: delete its folder and regenerate it.")
    return _loaded(store, pair, moving_image, _read(files.moving_torso), fixed_image, _read(files.fixed_torso),
                   dvf_image, files.fixed_torso)


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
    return _loaded(store, pair, made.image, made.torso, made.deformed, made.deformed_torso, made.field,
                   f"{store.pair_dir(pair)} (made in memory)")


def _loaded(store: PairStore, pair: PairId, moving_image: sitk.Image, moving_torso_image: sitk.Image,
            fixed_image: sitk.Image, fixed_torso_image: sitk.Image, dvf_image: sitk.Image, torso_name) -> LoadedPair:
    """The reader's arrays of a pair: both images masked to their torso and stacked, the DVF along
    the grid axes (viewing ``dvf_image``, kept alive with it)."""
    geometry = Geometry.of(dvf_image)
    fixed_torso = sitk.GetArrayFromImage(fixed_torso_image) > 0
    moving_torso = sitk.GetArrayFromImage(moving_torso_image) > 0
    if not fixed_torso.any():
        raise RegNetError(f"{torso_name}: the torso mask is empty, so no patch centre can be drawn in it.")
    pad = float(store.layout(pair.image.data).default_pixel_value)
    dvf = to_grid_axes(sitk.GetArrayViewFromImage(dvf_image), geometry)
    moving, fixed = _masked(moving_image, moving_torso, pad), _masked(fixed_image, fixed_torso, pad)
    if moving.dtype != fixed.dtype:
        moving, fixed = moving.astype(np.float32), fixed.astype(np.float32)
    return LoadedPair(pair=pair, images=np.stack([moving, fixed], axis=-1), dvf=dvf,
                      torso=fixed_torso, geometry=geometry, pad_value=pad, keep_alive=dvf_image)
