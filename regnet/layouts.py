"""Data layouts: a declarative TOML file per dataset -> concrete cases, images, masks, landmarks.

Why TOML: it is readable and commentable by people who do not write Python, tables map
naturally onto "per case" and "per type" values, and Python reads it with the standard library
(``tomllib``), so adding a dataset needs a new file, never new code or a new dependency.

A layout names its ``root`` (``{DataFolder}`` is the settings' data folder), its image
``types`` (``type_im`` indexes this list), its ``cases`` (a list, or ``"auto"`` to discover
them from the image template), and path templates relative to the root for ``image``,
``lung``, ``torso`` and ``landmarks``. Templates use ``{cn}``, ``{type}`` and any key of the
case's ``[case.N]`` or the type's ``[type.T]`` table; ``*`` and ``**`` are globs that must
match exactly one file. Headerless raw images take size/spacing from ``[case.N]`` and the
rest from ``[raw]``. ``source = "phantom"`` makes the built-in phantom the images.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from regnet import RegNetError
from regnet.files import full_suffix
from regnet.geometry import Geometry
from regnet.io import IMAGE_SUFFIXES, RawSpec, read_image
from regnet.landmarks import read_landmarks
from regnet.phantom import phantom_case
from regnet.settings import read_toml_or_json, toml_files

TEMPLATE_KEYS = ("image", "lung", "torso", "landmarks")
LAYOUT_KEYS = {"name", "description", "root", "types", "cases", "raw", "case", "type", "source",
               "phantom", "landmark_format", "landmark_flip_z", "default_pixel_value", "modality",
               *TEMPLATE_KEYS}


def layout_dirs() -> list[Traversable]:
    """Where layouts are looked up: $REGNET_LAYOUTS_PATH entries, then the layouts shipped inside
    the package (package data, so a wheel or ``pip install .`` has them too)."""
    extra = [Path(p) for p in os.environ.get("REGNET_LAYOUTS_PATH", "").split(os.pathsep) if p]
    return [*extra, resources.files("regnet") / "data_layouts"]


def available_layouts() -> list[str]:
    return sorted({name for d in layout_dirs() for name in toml_files(d)})


@dataclass
class Layout:
    name: str
    root: Path
    types: list[str]
    templates: dict[str, str]
    case_list: list | str = "auto"
    description: str = ""
    raw: dict | None = None
    case_table: dict = field(default_factory=dict)
    type_table: dict = field(default_factory=dict)
    source: str = "files"
    phantom: dict = field(default_factory=dict)
    landmark_format: str | None = None
    landmark_flip_z: bool = False
    default_pixel_value: float = -2048.0
    modality: str = "CT"

    # -------------------------------------------------------- cases and types
    def type_name(self, type_im: int | str) -> str:
        if isinstance(type_im, str):
            if type_im not in self.types:
                raise RegNetError(f"{self.name}: unknown image type {type_im!r}; types are {self.types}.")
            return type_im
        if not 0 <= type_im < len(self.types):
            raise RegNetError(f"{self.name}: type_im {type_im} out of range; types are {self.types} "
                              f"(0..{len(self.types) - 1}).")
        return self.types[type_im]

    def cases(self) -> list:
        if self.case_list != "auto":
            return list(self.case_list)
        if self.source == "phantom":
            raise RegNetError(f"{self.name}: phantom cases are seeds; list them in the settings.")
        pattern = _template_regex(self.templates["image"], self.types[0])
        found = set()
        for path in self.root.rglob("*") if self.root.is_dir() else []:
            match = pattern.fullmatch(path.relative_to(self.root).as_posix())
            if match and full_suffix(path).lower() in IMAGE_SUFFIXES:
                found.add(match.group("cn"))
        if not found:
            raise RegNetError(f"{self.name}: no images matching {self.templates['image']!r} under {self.root}.")
        return sorted(found, key=lambda c: (len(c), c))

    def _fields(self, cn, type_name: str) -> dict:
        values = {"cn": cn, "type": type_name}
        values.update({k: v for k, v in self.case_table.get(str(cn), {}).items() if not isinstance(v, list)})
        values.update({k: v for k, v in self.type_table.get(type_name, {}).items() if not isinstance(v, list)})
        return values

    # -------------------------------------------------------- paths
    def path(self, kind: str, cn, type_im, required: bool = True) -> Path | None:
        """The file of ``kind`` (image, lung, torso, landmarks) for a case and type."""
        template = self.templates.get(kind)
        if template is None:
            if required:
                raise RegNetError(f"{self.name}: the layout has no {kind!r} template.")
            return None
        type_name = self.type_name(type_im)
        try:
            relative = template.format(**self._fields(cn, type_name))
        except KeyError as err:
            raise RegNetError(f"{self.name}: template {template!r} uses {err}, which case {cn} / type "
                              f"{type_name} does not define.") from None
        if "*" not in relative:
            path = self.root / relative
            if path.exists():
                return path
            matches = []
        else:
            matches = sorted(p for p in self.root.glob(relative)
                             if kind == "landmarks" or full_suffix(p).lower() in IMAGE_SUFFIXES or p.is_dir())
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RegNetError(f"{self.name}: {kind} of case {cn} type {type_name}: {relative!r} matches "
                                  f"{len(matches)} files under {self.root}: {[str(m) for m in matches[:5]]}.")
        if required:
            raise RegNetError(f"{self.name}: {kind} of case {cn} type {type_name} not found: "
                              f"{self.root / relative}. Is the data root right (settings DataFolder)?")
        return None

    def raw_spec(self, cn) -> RawSpec | None:
        if self.raw is None:
            return None
        case = self.case_table.get(str(cn), {})
        missing = [k for k in ("size", "spacing") if k not in case and k not in self.raw]
        if missing:
            raise RegNetError(f"{self.name}: raw images need {missing} for case {cn} in [case.{cn}].")
        values = {**self.raw, **{k: case[k] for k in ("size", "spacing", "origin") if k in case}}
        return RawSpec(size=tuple(values["size"]), spacing=tuple(values["spacing"]),
                       dtype=values.get("dtype", "<i2"), origin=tuple(values.get("origin", (0, 0, 0))),
                       flip_z=bool(values.get("flip_z", False)),
                       intensity_offset=float(values.get("intensity_offset", 0)),
                       min_value=values.get("min_value"))

    def geometry(self, cn, type_im=0) -> Geometry:
        """The image grid of a case, from the raw table when there is one (no image needed)."""
        spec = self.raw_spec(cn)
        if spec is not None:
            return Geometry(tuple(spec.size), tuple(float(s) for s in spec.spacing), tuple(spec.origin))
        return Geometry.of(self.read_image(cn, type_im))

    # -------------------------------------------------------- reading
    def read_image(self, cn, type_im=0):
        if self.source == "phantom":
            return phantom_case(self, cn, self.type_name(type_im))["image"]
        return read_image(self.path("image", cn, type_im), raw=self.raw_spec(cn))

    def read_mask(self, kind: str, cn, type_im=0):
        """A lung/torso mask given by the layout, or None when the layout has none for this case."""
        if self.source == "phantom":
            return phantom_case(self, cn, self.type_name(type_im))[kind]
        path = self.path(kind, cn, type_im, required=False)
        return None if path is None else read_image(path, raw=self.raw_spec(cn))

    def read_landmarks(self, cn, type_im, geometry: Geometry | None = None):
        if self.source == "phantom":
            return phantom_case(self, cn, self.type_name(type_im))["landmarks"]
        path = self.path("landmarks", cn, type_im)
        return read_landmarks(path, geometry or self.geometry(cn, type_im), fmt=self.landmark_format,
                              flip_z=self.landmark_flip_z)


def _template_regex(template: str, type_name: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{cn\}|\{type\}|\*\*/|\*", template):
        out.append(re.escape(template[pos:m.start()]))
        token = m.group()
        out.append({"{cn}": r"(?P<cn>[^/]+?)", "{type}": re.escape(type_name),
                    "**/": r"(?:.*/)?", "*": r"[^/]*"}[token])
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _read_packaged(path: Traversable) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise RegNetError(f"{path}: not a valid TOML layout file ({err}).") from None


def _check_values(spec: dict, path) -> None:
    """Types of the layout's values, named by key (a string where a list belongs is split into letters)."""
    types_ = spec["types"]
    if not isinstance(types_, list) or not types_ or not all(isinstance(t, (str, int)) for t in types_):
        raise RegNetError(f"{path}: types must be a non-empty list of names, e.g. types = [\"image\"], got {types_!r}.")
    cases = spec.get("cases", "auto")
    if cases != "auto" and (not isinstance(cases, list) or not all(isinstance(c, (str, int)) for c in cases)):
        raise RegNetError(f"{path}: cases must be a list of case names or numbers, e.g. cases = [1, 2], or \"auto\"; "
                          f"got {cases!r}.")
    value = spec.get("default_pixel_value", -2048)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RegNetError(f"{path}: default_pixel_value must be a number (the intensity outside the image, e.g. "
                          f"-2048 for CT in HU), got {value!r}.")
    for key in ("root", "name", "modality", "source", *TEMPLATE_KEYS):
        if key in spec and not isinstance(spec[key], str):
            raise RegNetError(f"{path}: {key} must be a string, got {spec[key]!r}.")
    for key in ("case", "type", "raw", "phantom"):
        if key in spec and not isinstance(spec[key], dict):
            raise RegNetError(f"{path}: {key} must be a table ([{key}...]), got {spec[key]!r}.")


def load_layout(name: str, data_folder: str | Path = "./Data", root: str | Path | None = None) -> Layout:
    """Load ``{name}.toml`` from the layout folders; ``root`` overrides the layout's own root."""
    for directory in layout_dirs():
        path = directory / f"{name}.toml"
        if path.is_file():
            break
    else:
        close = difflib.get_close_matches(name, available_layouts(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegNetError(f"Unknown data layout {name!r}{hint} Available: {', '.join(available_layouts())}. "
                          "For a new dataset add a TOML file to a folder named by $REGNET_LAYOUTS_PATH.")
    spec = read_toml_or_json(Path(str(path)), "layout") if isinstance(path, Path) else _read_packaged(path)
    unknown = set(spec) - LAYOUT_KEYS
    if unknown:
        raise RegNetError(f"{path}: unknown keys {sorted(unknown)}; valid keys: {sorted(LAYOUT_KEYS)}.")
    if "types" not in spec or "image" not in spec and spec.get("source") != "phantom":
        raise RegNetError(f"{path}: a layout needs 'types' and an 'image' template.")
    _check_values(spec, path)
    root_text = str(root) if root is not None else spec.get("root", "{DataFolder}")
    root_path = Path(root_text.replace("{DataFolder}", str(data_folder))).expanduser()
    return Layout(
        name=spec.get("name", name), root=root_path, types=[str(t) for t in spec["types"]],
        templates={k: spec[k] for k in TEMPLATE_KEYS if k in spec}, case_list=spec.get("cases", "auto"),
        description=spec.get("description", ""), raw=spec.get("raw"),
        case_table={str(k): v for k, v in spec.get("case", {}).items()},
        type_table={str(k): v for k, v in spec.get("type", {}).items()},
        source=spec.get("source", "files"), phantom=spec.get("phantom", {}),
        landmark_format=spec.get("landmark_format"), landmark_flip_z=bool(spec.get("landmark_flip_z", False)),
        default_pixel_value=float(spec.get("default_pixel_value", -2048)), modality=spec.get("modality", "CT"))
