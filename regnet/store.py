"""The pair store: where generated images and synthetic pairs live on disk, and which exist.

One small module shared by the offline job (:mod:`regnet.generate`, which writes) and the patch
reader (:mod:`regnet.reading`, which reads), so that neither imports the other. Layout under the
output root (``settings.OutputFolder``)::

    settings.json                                       the resolved settings
    {deform_exp}/{data}/{type}/{case}/stage{s}/
        Original/Image.mha  Lung.mha  Torso.mha          base image on the stage grid (s mm)
        Dsmooth0/DNext{d}/NextIm.mha NextLung.mha NextTorso.mha     base of dsmooth d > 0
        Dsmooth{d}/{method}_D{n}/
            DeformedImage_{chain}.mha                   fixed image: base(x + u(x)), augmented
            DeformedDVF.mha                             u, mm, (x, y, z), on the fixed grid
            DeformedLung.mha DeformedTorso.mha          masks warped with u (nearest)
            Jac.mha                                     det(I + grad u)
            done.json                                   statistics; written last
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from regnet.layouts import Layout, load_layout
from regnet.settings import Settings

MODES = ("Training", "Validation")


@dataclass(frozen=True, order=True)
class ImageId:
    """Names one original image on one stage grid (not the image itself)."""

    deform_exp: str
    data: str
    cn: str
    type_im: int
    stage: int


@dataclass(frozen=True, order=True)
class PairId:
    """Names one synthetic pair: an original image and a dsmooth number."""

    image: ImageId
    dsmooth: int


@dataclass(frozen=True)
class PairFiles:
    """The files of one pair, as the reader consumes them (moving = base, fixed = deformed)."""

    moving: Path
    moving_torso: Path
    fixed: Path
    fixed_torso: Path
    dvf: Path
    done: Path


def pair_list(settings: Settings, mode: str) -> list[PairId]:
    """The pairs of one mode in RegNet's order (data -> case -> type -> dsmooth), repeats kept:
    a dsmooth listed twice is sampled twice as often, as RegNet's repeat lists intend."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pairs = []
    for entry in settings.DataExpDict:
        for cn in getattr(entry, f"{mode}CNList"):
            for type_im in getattr(entry, f"{mode}TypeImList"):
                image = ImageId(entry.deform_exp, entry.data, str(cn), int(type_im), settings.stage)
                pairs.extend(PairId(image, int(d)) for d in getattr(entry, f"{mode}DSmoothList"))
    return pairs


def tasks(settings: Settings, which=MODES) -> tuple[list[ImageId], list[PairId]]:
    """The unique images and pairs the settings ask for, sorted (the job's work list)."""
    pairs = sorted({p for mode in which for p in pair_list(settings, mode)})
    return sorted({p.image for p in pairs}), pairs


class PairStore:
    """Paths of the generated data of one settings object. Layouts are loaded once per store."""

    def __init__(self, settings: Settings, root: str | Path | None = None):
        self.settings = settings
        self.root = Path(root if root is not None else settings.OutputFolder)
        self._layouts: dict[str, Layout] = {}

    def layout(self, data: str) -> Layout:
        if data not in self._layouts:
            self._layouts[data] = load_layout(data, self.settings.DataFolder)
        return self._layouts[data]

    def image_dir(self, image: ImageId) -> Path:
        type_name = self.layout(image.data).type_name(image.type_im)
        return self.root / image.deform_exp / image.data / type_name / image.cn / f"stage{image.stage}"

    def original_dir(self, image: ImageId) -> Path:
        return self.image_dir(image) / "Original"

    def next_dir(self, pair: PairId) -> Path:
        return self.image_dir(pair.image) / "Dsmooth0" / f"DNext{pair.dsmooth}"

    def method_of(self, pair: PairId) -> tuple[str, int]:
        return self.settings.deform_exps[pair.image.deform_exp].method_of(pair.dsmooth)

    def pair_dir(self, pair: PairId) -> Path:
        method, number = self.method_of(pair)
        return self.image_dir(pair.image) / f"Dsmooth{pair.dsmooth}" / f"{method}_D{number}"

    def deformed_image_name(self, pair: PairId) -> str:
        chain = self.settings.deform_exps[pair.image.deform_exp].DeformedImExt
        return f"DeformedImage_{'_'.join(chain)}.mha"

    def is_done(self, pair: PairId) -> bool:
        return (self.pair_dir(pair) / "done.json").is_file()

    def done_stats(self, pair: PairId) -> dict:
        return json.loads((self.pair_dir(pair) / "done.json").read_text(encoding="utf-8"))

    def files(self, pair: PairId) -> PairFiles:
        if pair.dsmooth == 0:
            base = self.original_dir(pair.image)
            moving, moving_torso = base / "Image.mha", base / "Torso.mha"
        else:
            base = self.next_dir(pair)
            moving, moving_torso = base / "NextIm.mha", base / "NextTorso.mha"
        out = self.pair_dir(pair)
        return PairFiles(moving=moving, moving_torso=moving_torso, fixed=out / self.deformed_image_name(pair),
                         fixed_torso=out / "DeformedTorso.mha", dvf=out / "DeformedDVF.mha", done=out / "done.json")
