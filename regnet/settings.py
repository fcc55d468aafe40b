"""The settings dict, in RegNet's own vocabulary, validated into typed configuration.

Users write the dict exactly as the original README shows it (``DataExpDict``,
``NetworkTraining``, ``deform_exp`` ...). :func:`load_settings` checks every key and value
against the dataclasses below, fills stage-dependent defaults, resolves each ``deform_exp``
from the TOML presets shipped in ``regnet/presets/deform_exp`` or the user's own folders
(``$REGNET_SETTINGS_PATH``), plus the overrides under ``DeformExp`` in the dict, and
returns a frozen :class:`Settings`. Errors name the full key path and the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from regnet import RegNetError
from regnet.files import write_json_atomic

AG_MODES = ("Resp", "NoResp", "SingleResp", "SingleOnly", "MixedOnly")
NETWORK_DESIGNS = ("crop4_connection", "decimation4", "unet1", "crop5_connection")
METHODS = ("zero", "translation", "single_frequency", "mixed_frequency", "respiratory_motion")
STAGES = (1, 2, 4)
#: Data parallel training (regnet.distribute): one device, or a model copy per device with the batch split.
DISTRIBUTE_MODES = ("none", "mirrored")
#: Where the training patches come from (regnet.reading): pair files, pairs made in CPU processes, or the accelerator.
READER_SOURCES = ("files", "memory", "device")
#: Paper patch radii (R, Ry) per network (regnet_spec.md section 3): input 2R+1, output 2Ry+1 voxels.
PATCH_RADII = {"crop4_connection": (50, 10), "decimation4": (52, 10), "unet1": (62, 62), "crop5_connection": (62, 62)}

#: Upper bound of MaxDeform and NextIm_MaxDeform (mm): RegNet's presets use 7-20; beyond this a field
#: moves tissue by more than a lung's half-width, which is a typo (e.g. 1e6), not an experiment.
MAX_DEFORM_LIMIT_MM = 100.0

POSITIVE = {"check": "positive"}
NONNEGATIVE = {"check": "nonnegative"}


# ------------------------------------------------------------------ deform experiments
@dataclass(frozen=True)
class DeformExp:
    """Every parameter of a synthetic-deformation experiment (regnet_spec.md section 1.1)."""

    name: str = field(metadata={"internal": True})
    DeformMethods: list[Literal[METHODS]]
    MaxDeform: float = field(metadata=POSITIVE)
    UseLungMask: bool
    DVFNormalization: bool
    MaskToZero: Literal["Torso", "Lung", "None"]
    DeformedImExt: list[Literal["Clean", "Sponge", "Noise", "Occluded"]]
    CannyLowerThreshold: float
    CannyUpperThreshold: float
    Im_NoiseSigma: float = field(metadata=NONNEGATIVE)
    Im_NoiseAverage: float = field(metadata=NONNEGATIVE)
    Sponge_JacobianClip: list[float]
    Sponge_ScaleRange: list[float]
    Occlusion: bool
    Occlusion_NumberOfEllipse: int = field(metadata=NONNEGATIVE)
    Occlusion_IntensityRange: list[float]
    Occlusion_Max_a: float = field(metadata=POSITIVE)
    Occlusion_Max_b: float = field(metadata=POSITIVE)
    Occlusion_Max_c: float = field(metadata=POSITIVE)
    NextIm_SigmaN: float = field(metadata=NONNEGATIVE)
    NextIm_MaxDeform: float = field(metadata=POSITIVE)
    SingleFrequency_BSplineGridSpacing: list[list[float]]
    SingleFrequency_SetGridBorderToZero: list[int]
    SingleFrequency_GridSmoothingSigma: float = field(metadata=NONNEGATIVE)
    SingleFrequency_BackgroundSmoothingSigma: float = field(metadata=NONNEGATIVE)
    SingleFrequency_MaxDeformRatio: list[float]
    MixedFrequency_BlockRadius: int = field(metadata=POSITIVE)
    MixedFrequency_Np: list[int]
    MixedFrequency_BSplineGridSpacing: list[list[float]]
    MixedFrequency_GridSmoothingSigma: float = field(metadata=NONNEGATIVE)
    MixedFrequency_SetGridBorderToZero: int = field(metadata=NONNEGATIVE)
    MixedFrequency_MaxDeformRatio: float = field(metadata=POSITIVE)
    MixedFrequency_SigmaRange: list[float]
    RespiratoryMotion_t0: float = field(metadata=NONNEGATIVE)
    RespiratoryMotion_t0Range: list[float]
    RespiratoryMotion_s0: float = field(metadata=NONNEGATIVE)
    RespiratoryMotion_s0Range: list[float]
    RespiratoryMotion_DeltaRange: list[float]
    RespiratoryMotion_BSplineGridSpacing: list[list[float]]
    RespiratoryMotion_SetGridBorderToZero: list[int]
    RespiratoryMotion_GridSmoothingSigma: float = field(metadata=NONNEGATIVE)
    RespiratoryMotion_BackgroundSmoothingSigma: float = field(metadata=NONNEGATIVE)
    RespiratoryMotion_MaxDeformRatio: float = field(metadata=POSITIVE)
    RespiratoryMotion_SingleFrequency_MaxDeformRatio: float = field(metadata=POSITIVE)
    Translation_MaxDeformRatio: list[float]
    Translation_ZeroProbability: float = field(metadata=NONNEGATIVE)
    ClassBalanced: list[float] | None = None

    def method_of(self, dsmooth: int) -> tuple[str, int]:
        """RegNet's rule: dsmooth d uses DeformMethods[d % n]; the deform number is its rank
        among earlier entries with the same method (e.g. d%14 = 9 -> mixed_frequency D0)."""
        slot = dsmooth % len(self.DeformMethods)
        method = self.DeformMethods[slot]
        return method, self.DeformMethods[:slot].count(method)

    def class_balanced(self) -> list[float]:
        """ClassBalanced thresholds (mm): given, or RegNet's suggestion keyed on MaxDeform."""
        if self.ClassBalanced is not None:
            return list(self.ClassBalanced)
        m = self.MaxDeform
        if m <= 5:
            return [m]
        if m <= 7:
            return [2.0, m]
        if m <= 15:
            return [1.5, 4.0, m]
        return [1.5, 8.0, m]


# ------------------------------------------------------------------ the settings dict
@dataclass(frozen=True)
class DataExp:
    """One entry of ``DataExpDict``: a dataset, its deform experiment, and which cases to use."""

    data: str
    deform_exp: str
    TrainingCNList: list[int | str] = field(default_factory=list)
    TrainingTypeImList: list[int] = field(default_factory=lambda: [0])
    TrainingDSmoothList: list[int] | None = None
    ValidationCNList: list[int | str] = field(default_factory=list)
    ValidationTypeImList: list[int] = field(default_factory=lambda: [0])
    ValidationDSmoothList: list[int] | None = None


@dataclass(frozen=True)
class NetworkRun:
    """``NetworkTraining`` / ``NetworkValidation``; None means "RegNet's value for this stage"."""

    NumberOfImagesPerChunk: int | None = field(default=None, metadata=POSITIVE)
    SamplesPerImage: int | None = field(default=None, metadata=POSITIVE)
    BatchSize: int | None = field(default=None, metadata=POSITIVE)
    MaxQueueSize: int | None = field(default=None, metadata=POSITIVE)
    LearningRate: float = field(default=1e-3, metadata=POSITIVE)
    #: RegNet's optional decay: learning rate x LearningRate_Decay ** semi_epoch (None = constant).
    LearningRate_Decay: float | None = field(default=None, metadata=POSITIVE)
    MaxIterations: int = field(default=10_000_000, metadata=POSITIVE)
    #: Loss: Huber delta in mm (RegNet: 1 at every stage) + reg_weight x bending energy (RegNet: 0.1).
    HuberDelta: float = field(default=1.0, metadata=POSITIVE)
    reg_weight: float = field(default=0.1, metadata=NONNEGATIVE)
    #: Steps between validation passes and between checkpoints (RegNet: 1000 for both).
    ValidationEvery: int = field(default=1000, metadata=POSITIVE)
    CheckpointEvery: int = field(default=1000, metadata=POSITIVE)
    #: ReaderSource "device": pairs made on the accelerator for each training batch (validation: per
    #: group of SamplesPerImage patches each); ~1 GB of device memory per 20 M-voxel pair.
    PairsPerBatch: int = field(default=2, metadata=POSITIVE)


@dataclass(frozen=True)
class Settings:
    DataExpDict: list[DataExp]
    NetworkTraining: NetworkRun = field(default_factory=NetworkRun)
    NetworkValidation: NetworkRun = field(default_factory=NetworkRun)
    stage: Literal[STAGES] = 1
    NetworkDesign: Literal[NETWORK_DESIGNS] = "crop4_connection"
    AGMode: Literal[AG_MODES] = "Resp"
    DataFolder: str = "./Data"
    OutputFolder: str = "./output"
    #: The user's ``{deform_exp: {key: value}}`` overrides and own experiments. Its key in the
    #: settings dict is RegNet's ``DeformExp``; the field is named apart from the class DeformExp.
    DeformExpOverrides: dict[str, dict] = field(default_factory=dict, metadata={"key": "DeformExp"})
    Jobs: int = field(default=1, metadata=POSITIVE)
    #: Patch radii of the network input (R) and output (Ry); None = the NetworkDesign's paper values.
    R: int | None = field(default=None, metadata=POSITIVE)
    Ry: int | None = field(default=None, metadata=NONNEGATIVE)
    #: Random flips and axis permutations of patches (images and DVF together) while training.
    Augmentation: bool = False
    #: Network construction options (regnet.networks.NetworkOptions: width, batch_norm, intensity, ...).
    NetworkOptions: dict[str, object] = field(default_factory=dict)
    MixedPrecision: bool = False
    JitCompile: bool = False
    #: "mirrored": train on every GPU (or logical CPU) at once, the batch split between them
    #: (tf.distribute.MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX).
    Distribute: Literal[DISTRIBUTE_MODES] = "none"
    #: "files" (pairs on disk, made on demand), "memory" (made on the fly in CPU processes, the same
    #: patches) or "device" (fresh fields for every batch on the accelerator, regnet.reading.device).
    ReaderSource: Literal[READER_SOURCES] = "files"
    #: Filled by load_settings: every deform_exp used, fully resolved.
    deform_exps: dict[str, DeformExp] = field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict:
        """The settings in RegNet's vocabulary (user keys), plus the resolved ``deform_exps``."""
        values = dataclasses.asdict(self)
        return {f.metadata.get("key", f.name): values[f.name] for f in dataclasses.fields(self)}

    def class_balanced(self) -> list[float]:
        """The ClassBalanced thresholds (mm) of this run: the reader balances, and the validation
        reports, one set of magnitude classes, so every deform experiment used must agree."""
        found = {tuple(exp.class_balanced()) for exp in self.deform_exps.values()}
        if len(found) > 1:
            raise RegNetError(f"The deform experiments {sorted(self.deform_exps)} have different ClassBalanced "
                              f"thresholds {sorted(found)}; set the same ClassBalanced in each.")
        return list(found.pop())

    def patch_radii(self) -> tuple[int, int]:
        """(R, Ry): the settings' values, else the paper's for NetworkDesign. R == Ry means a
        full-image network (unet1): whole images padded to 2R+1 per axis."""
        r, ry = PATCH_RADII[self.NetworkDesign]
        r, ry = self.R if self.R is not None else r, self.Ry if self.Ry is not None else ry
        if ry > r:
            raise RegNetError(f"Ry ({ry}) must not exceed R ({r}): the output patch lies inside the input patch.")
        return r, ry

    def write_json(self, path) -> Path:
        """The resolved settings, written beside every output."""
        write_json_atomic(path, self.to_dict())
        return Path(path)


# Per-stage values of RegNet3D.py (regnet_spec.md section 2): chunk, samples/image, batch, queue.
STAGE_DEFAULTS = {
    "NetworkTraining": {1: (16, 50, 15, 20), 2: (40, 20, 15, 20), 4: (80, 5, 15, 20)},
    "NetworkValidation": {1: (10, 500, 50, 10), 2: (60, 10, 50, 10), 4: (200, 10, 50, 10)},
}

# AGMode -> (methods used for training, validation dsmooth list) from regnet_spec.md 1.2.
AG_MODE_TABLE = {
    "Resp": (("respiratory_motion", "single_frequency", "mixed_frequency", "zero"), [0, 5, 10]),
    "NoResp": (("single_frequency", "mixed_frequency", "zero"), [5, 8, 10]),
    "SingleResp": (("single_frequency", "respiratory_motion", "zero"), [4, 8, 10]),
    "SingleOnly": (("single_frequency",), [5, 6, 8]),
    "MixedOnly": (("mixed_frequency",), [9, 10, 12]),
}


# ------------------------------------------------------------------ generic validation
def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is int:
        return "int"
    if annotation is float:
        return "number"
    if annotation is bool:
        return "bool (true/false)"
    if annotation is str:
        return "string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return "dict"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "None" for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _convert(value, annotation, path: str, check: str | None = None):
    """Validate ``value`` against a type annotation; return the converted value or raise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, check)
            except RegNetError:
                continue
        shown = [a for a in args if a is not type(None)]
        raise _type_error(path, shown[0] if len(shown) == 1 else annotation, value, check)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise RegNetError(f"{path} must be a dict, got {value!r}")
        return annotation(**validate(annotation, value, path))
    if origin is list:
        if not isinstance(value, (list, tuple, range)):
            raise _type_error(path, annotation, value, check)
        return [_convert(v, args[0], f"{path}[{i}]", check) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(path, annotation, value, check)
        return dict(value)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegNetError(f"{path} must be {_describe(annotation)}, got {value!r}{hint}")
        return value
    ok = (annotation is bool and isinstance(value, bool)) or \
         (annotation is int and isinstance(value, int) and not isinstance(value, bool)) or \
         (annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool)) or \
         (annotation is str and isinstance(value, str))
    if not ok:
        raise _type_error(path, annotation, value, check)
    if annotation is float:
        value = float(value)
        if not math.isfinite(value):
            raise RegNetError(f"{path} must be a finite number, got {value!r}")
    if check == "positive" and value <= 0 or check == "nonnegative" and value < 0:
        raise _type_error(path, annotation, value, check)
    return value


def _type_error(path, annotation, value, check) -> RegNetError:
    qualifier = {"positive": "a positive ", "nonnegative": "a non-negative "}.get(check, "")
    what = _describe(annotation)
    article = "" if qualifier or what.startswith(("one of", "list", "int or", "string or")) else "a "
    return RegNetError(f"{path} must be {qualifier}{article}{what}, got {value!r}")


def validate(cls, values: dict, path: str = "") -> dict:
    """Check a dict against dataclass ``cls``; return its converted keyword arguments.

    Unknown keys name the closest valid key; fields marked ``internal`` are not user keys; a
    field whose metadata names a ``key`` is read from that (RegNet's) key instead of its name."""
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    prefix = f"{path}." if path else ""
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise RegNetError(f"Unknown settings key '{prefix}{key}'{hint}")
    kwargs = {}
    for key, f in fields.items():
        if key in values:
            kwargs[f.name] = _convert(values[key], hints[f.name], prefix + key, f.metadata.get("check"))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RegNetError(f"Missing settings key '{prefix}{key}' ({_describe(hints[f.name])}).")
    return kwargs


# ------------------------------------------------------------------ presets
def preset_dirs() -> list[Traversable]:
    """Where deform_exp presets are looked up: $REGNET_SETTINGS_PATH entries (a folder, or its
    ``deform_exp`` subfolder), then the presets shipped inside the package (package data, so a
    wheel or ``pip install .`` has them too)."""
    extra = [Path(p) for p in os.environ.get("REGNET_SETTINGS_PATH", "").split(os.pathsep) if p]
    return [*(p / "deform_exp" if (p / "deform_exp").is_dir() else p for p in extra),
            resources.files("regnet") / "presets" / "deform_exp"]


def toml_files(directory: Traversable) -> dict[str, Traversable]:
    """``{stem: file}`` of the ``.toml`` files in a folder (a Path or a package resource)."""
    if not directory.is_dir():
        return {}
    return {p.name[:-5]: p for p in directory.iterdir() if p.name.endswith(".toml") and p.is_file()}


def available_deform_exps() -> list[str]:
    names = {name for d in preset_dirs() for name in toml_files(d)}
    return sorted(n for n in names if not n.startswith("_"))


def _preset_values(name: str, user: dict[str, dict], seen: tuple = ()) -> dict:
    """Flatten a preset's ``extends`` chain; the user's dict for that name overrides the file."""
    if name in seen:
        raise RegNetError(f"deform_exp presets extend each other in a loop: {' -> '.join(seen + (name,))}")
    values: dict = {}
    for directory in preset_dirs():
        path = directory / f"{name}.toml"
        if path.is_file():
            with path.open("rb") as fh:
                values = tomllib.load(fh)
            break
    if name in user:
        values = {**values, **user[name]}
    if not values:
        close = difflib.get_close_matches(name, available_deform_exps(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(available_deform_exps())}"
        raise RegNetError(f"Unknown deform_exp {name!r}{hint} (add your own under 'DeformExp' in the settings, "
                          f"or as {name}.toml in a folder named by $REGNET_SETTINGS_PATH)")
    parent = values.pop("extends", None)
    if parent:
        values = {**_preset_values(parent, user, seen + (name,)), **values}
    return values


def load_deform_exp(name: str, overrides: dict[str, dict] | None = None) -> DeformExp:
    """A deform experiment from its preset, with optional ``{name: {key: value}}`` overrides."""
    values = _preset_values(name, overrides or {})
    kwargs = validate(DeformExp, values, f"deform_exp[{name!r}]")
    exp = DeformExp(name=name, **kwargs)
    _check_deform_exp(exp)
    return exp


def _check_deform_exp(exp: DeformExp) -> None:
    where = f"deform_exp[{exp.name!r}]"
    if not exp.DeformMethods:
        raise RegNetError(f"{where}.DeformMethods is empty: list at least one of {', '.join(METHODS)} "
                          "(dsmooth d uses DeformMethods[d % len]).")
    for key in ("MaxDeform", "NextIm_MaxDeform"):
        if getattr(exp, key) > MAX_DEFORM_LIMIT_MM:
            raise RegNetError(f"{where}.{key} must be at most {MAX_DEFORM_LIMIT_MM:g} mm, got {getattr(exp, key)!r} "
                              "(RegNet's presets use 7 to 20 mm).")
    counts = {m: exp.DeformMethods.count(m) for m in METHODS}
    per_number = {
        "single_frequency": ("SingleFrequency_BSplineGridSpacing", "SingleFrequency_SetGridBorderToZero",
                             "SingleFrequency_MaxDeformRatio"),
        "mixed_frequency": ("MixedFrequency_BSplineGridSpacing", "MixedFrequency_Np"),
        "respiratory_motion": ("RespiratoryMotion_BSplineGridSpacing", "RespiratoryMotion_SetGridBorderToZero"),
        "translation": ("Translation_MaxDeformRatio",),
    }
    for method, keys in per_number.items():
        for key in keys:
            n = len(getattr(exp, key))
            if n < counts[method]:
                raise RegNetError(f"{where}.{key} has {n} entries but DeformMethods uses "
                                  f"{method} {counts[method]} times: one entry per deform number.")
    for key in ("SingleFrequency_BSplineGridSpacing", "MixedFrequency_BSplineGridSpacing",
                "RespiratoryMotion_BSplineGridSpacing"):
        for i, spacing in enumerate(getattr(exp, key)):
            if len(spacing) != 3 or min(spacing) <= 0:
                raise RegNetError(f"{where}.{key}[{i}] must be three positive grid spacings (x, y, z) in mm, "
                                  f"got {spacing}")
    for key in ("MixedFrequency_SigmaRange", "RespiratoryMotion_DeltaRange", "Sponge_JacobianClip",
                "Sponge_ScaleRange", "Occlusion_IntensityRange", "RespiratoryMotion_t0Range",
                "RespiratoryMotion_s0Range"):
        lo_hi = getattr(exp, key)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise RegNetError(f"{where}.{key} must be [low, high] with low <= high, got {lo_hi}")
    for key in ("Sponge_JacobianClip", "Sponge_ScaleRange"):
        if getattr(exp, key)[0] <= 0:
            raise RegNetError(f"{where}.{key} must be [low, high] with 0 < low <= high (density is multiplied by "
                              f"it), got {getattr(exp, key)}")
    if not exp.DeformedImExt or exp.DeformedImExt[0] != "Clean":
        raise RegNetError(f"{where}.DeformedImExt must start with 'Clean', got {exp.DeformedImExt}")


def dsmooth_list_for(exp: DeformExp, ag_mode: str) -> list[int]:
    """Training dsmooth numbers for an AGMode: every slot of DeformMethods whose method it uses."""
    methods = AG_MODE_TABLE[ag_mode][0]
    return [d for d, m in enumerate(exp.DeformMethods) if m in methods]


# ------------------------------------------------------------------ entry point
def load_settings(settings: dict | str | Path) -> Settings:
    """Validate a settings dict (or a JSON/TOML file holding one) into :class:`Settings`."""
    if isinstance(settings, (str, Path)):
        settings = _read_settings_file(Path(settings))
    if not isinstance(settings, dict):
        raise RegNetError(f"Settings must be a dict, got {type(settings).__name__}")
    values = dict(settings)
    values.pop("deform_exps", None)  # a resolved settings.json read back in
    kwargs = validate(Settings, values)
    if not kwargs.get("DataExpDict"):
        raise RegNetError("DataExpDict must list at least one dataset entry.")
    stage = kwargs.get("stage", 1)
    ag_mode = kwargs.get("AGMode", "Resp")
    for key in ("NetworkTraining", "NetworkValidation"):
        run = kwargs.get(key, NetworkRun())
        defaults = dict(zip(("NumberOfImagesPerChunk", "SamplesPerImage", "BatchSize", "MaxQueueSize"),
                            STAGE_DEFAULTS[key][stage]))
        kwargs[key] = dataclasses.replace(run, **{k: v for k, v in defaults.items() if getattr(run, k) is None})
    user_exps = kwargs.get("DeformExpOverrides", {})
    deform_exps = {}
    entries = []
    for i, entry in enumerate(kwargs["DataExpDict"]):
        name = entry.deform_exp
        if name not in deform_exps:
            deform_exps[name] = load_deform_exp(name, user_exps)
        exp = deform_exps[name]
        if entry.TrainingDSmoothList is None:
            entry = dataclasses.replace(entry, TrainingDSmoothList=dsmooth_list_for(exp, ag_mode))
        if entry.ValidationDSmoothList is None:
            entry = dataclasses.replace(entry, ValidationDSmoothList=list(AG_MODE_TABLE[ag_mode][1]))
        for key in ("TrainingDSmoothList", "ValidationDSmoothList"):
            bad = [d for d in getattr(entry, key) if d < 0]
            if bad:
                raise RegNetError(f"DataExpDict[{i}].{key} must hold non-negative ints, got {bad}")
        entries.append(entry)
    kwargs["DataExpDict"] = entries
    return Settings(**kwargs, deform_exps=deform_exps)


def _read_settings_file(path: Path) -> dict:
    if not path.is_file():
        raise RegNetError(f"{path}: no such settings file.")
    if path.suffix not in (".toml", ".json"):
        raise RegNetError(f"{path}: settings files are .json or .toml.")
    return read_toml_or_json(path, "settings")


def read_toml_or_json(path: Path, what: str):
    """Parse a TOML or JSON file; a syntax error names the file, line and column."""
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        return json.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RegNetError(f"{path}: not a valid TOML {what} file ({err}).") from None
    except json.JSONDecodeError as err:
        raise RegNetError(f"{path}: not a valid JSON {what} file ({err.msg} at line {err.lineno}, column "
                          f"{err.colno}).") from None
    except UnicodeDecodeError as err:
        raise RegNetError(f"{path}: not a text {what} file ({err.reason} at byte {err.start}).") from None
