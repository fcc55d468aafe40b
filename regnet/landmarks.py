"""Landmark files in, physical millimetres out (and back).

Every reader returns an ``(N, 3)`` float array of physical points (x, y, z) in mm, in ITK's
LPS world, converting voxel indices through the image geometry (direction included) and
RAS files (3D Slicer) by negating x and y. Writers take the same array.

Formats: DIR-Lab ``xyz`` (1-based voxel indices, optional z flip), elastix ``point``/``index``
files, transformix ``outputpoints.txt`` (read), CSV (``x,y,z`` columns in mm), 3D Slicer
``.fcsv`` and ``.mrk.json``, MITK ``.mps`` (XML via xmltodict).
"""
from __future__ import annotations

import csv
import io as _io
import json
import re
from pathlib import Path

import numpy as np
import xmltodict

from regnet import RegNetError
from regnet.files import full_suffix, write_text_atomic
from regnet.geometry import Geometry

FORMATS = ("dirlab", "elastix-point", "elastix-index", "transformix", "csv", "fcsv", "mrk.json", "mps")


def detect_format(path: Path) -> str:
    suffix = full_suffix(path).lower()
    if suffix in (".fcsv", ".mrk.json", ".mps", ".csv"):
        return suffix.lstrip(".")
    if path.exists():
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
        first = head.split(None, 1)[0].lower() if head.strip() else ""
        if "OutputPoint" in head:
            return "transformix"
        if first == "point":
            return "elastix-point"
        if first == "index":
            return "elastix-index"
    return "dirlab"


def _need(geometry, fmt):
    if geometry is None:
        raise RegNetError(f"{fmt} landmarks are voxel indices: pass the image geometry to convert them to mm.")
    return geometry


# ------------------------------------------------------------------ reading
class _RowError(ValueError):
    """A problem on one line of a landmark file (1-based line number)."""

    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")


def read_landmarks(path, geometry: Geometry | None = None, fmt: str | None = None,
                   flip_z: bool = False) -> np.ndarray:
    """Read landmarks as physical points (N, 3) in mm.

    ``geometry`` converts voxel indices (DIR-Lab, elastix ``index``) and rejects indices outside
    the image; ``flip_z`` says DIR-Lab z indices count from the other end of the volume
    (index = n_z - z instead of z - 1). Files are parsed row by row: a row with the wrong number
    of values is an error naming the file and line, never regrouped.
    """
    path = Path(path)
    if not path.is_file():
        raise RegNetError(f"{path}: no such landmark file.")
    fmt = fmt or detect_format(path)
    if fmt not in _READERS:
        raise RegNetError(f"Unknown landmark format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        points = _READERS[fmt](text, geometry, flip_z)
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise RegNetError(f"{path}: not a valid {fmt} landmark file ({_reason(err)}).") from None
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise RegNetError(f"{path}: landmarks contain NaN or infinite coordinates.")
    return points


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing {err}"
    return str(err)


def _numeric_rows(lines, first_line: int = 1, allow_id: bool = False) -> np.ndarray:
    """(N, 3) from rows of three numbers (comma or white space separated); blank lines skipped.

    ``allow_id``: rows of four numbers whose first column counts 0.. or 1.. (``id x y z``) lose
    that column; any other column count is an error naming the line.
    """
    rows, numbers = [], []
    for k, line in enumerate(lines, start=first_line):
        values = line.replace(",", " ").split()
        if not values:
            continue
        try:
            rows.append([float(v) for v in values])
        except ValueError:
            raise _RowError(k, f"{line.strip()!r} is not a row of numbers") from None
        numbers.append(k)
    counts = {len(r) for r in rows}
    if allow_id and counts == {4}:
        ids = np.array([r[0] for r in rows])
        if ids.size and (np.array_equal(ids, np.arange(ids.size)) or np.array_equal(ids, np.arange(1, ids.size + 1))):
            return np.array([r[1:] for r in rows], dtype=float)
        raise _RowError(numbers[0], "four columns, but the first is not a row counter (0.. or 1..), so it "
                                    "is not 'id x y z'; give three columns x y z")
    for k, row in zip(numbers, rows):
        if len(row) != 3:
            hint = " (an 'id x y z' file needs an id column counting 0.. or 1..)" if len(row) == 4 else ""
            raise _RowError(k, f"{len(row)} values, expected 3 (x y z){hint}")
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _check_indices(index: np.ndarray, geometry: Geometry, lines: list[int], one_based: bool) -> None:
    """Voxel indices (0-based here) must lie in the image (half a voxel of slack at each end)."""
    size = np.asarray(geometry.size, dtype=float)
    outside = np.flatnonzero(((index < -0.5) | (index > size - 0.5)).any(axis=1))
    if outside.size:
        i = int(outside[0])
        shown = index[i] + (1 if one_based else 0)
        raise _RowError(lines[i], f"voxel index {shown.tolist()} lies outside the image of "
                                  f"{'x'.join(str(int(n)) for n in size)} voxels "
                                  f"({'1-based' if one_based else '0-based'}); {outside.size} of {len(index)} "
                                  "points are outside: wrong image, or the wrong format?")


def _data_lines(lines, start: int = 0) -> list[int]:
    """1-based line numbers of the non-blank lines from ``start`` on (matches _numeric_rows)."""
    return [k + 1 for k in range(start, len(lines)) if lines[k].strip()]


def _read_dirlab(text, geometry, flip_z):
    g = _need(geometry, "DIR-Lab")
    lines = text.splitlines()
    idx = _numeric_rows(lines, allow_id=True) - 1.0
    _check_indices(idx, g, _data_lines(lines), one_based=True)
    if flip_z:
        idx[:, 2] = (g.size[2] - 1) - idx[:, 2]  # 1-based z counted from the other end: n_z - z
    return g.index_to_physical(idx)


def _read_elastix(text, geometry, flip_z, kind):
    lines = text.splitlines()
    content = _data_lines(lines)
    if len(content) < 2:
        raise ValueError("an elastix point file starts with 'point' or 'index' and the number of points")
    try:
        count = int(lines[content[1] - 1].split()[0])
    except ValueError:
        raise _RowError(content[1], "the second line must be the number of points") from None
    body = content[2:]  # line numbers of the point rows
    if len(body) != count:
        raise ValueError(f"header says {count} points, found {len(body)}")
    values = _numeric_rows(lines[body[0] - 1:], first_line=body[0]) if body else np.zeros((0, 3))
    if kind == "point":
        return values
    g = _need(geometry, "elastix index")
    _check_indices(values, g, body, one_based=False)
    return g.index_to_physical(values)


def _read_transformix(text, geometry, flip_z):
    rows = []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = re.search(r"OutputPoint\s*=\s*\[\s*([^\]]+)\]", line)
        if not match:
            raise _RowError(k, "no 'OutputPoint = [x y z]'")
        rows.append(_numeric_rows([match.group(1)], first_line=k)[0])
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _read_csv(text, geometry, flip_z):
    reader = csv.DictReader(_io.StringIO(text))
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    if not {"x", "y", "z"} <= set(fields):
        raise ValueError("a header with columns x, y, z (mm) is required")
    points = []
    for row in reader:
        points.append(_coordinates({a: row.get(fields[a]) for a in "xyz"}, reader.line_num))
    return points


def _coordinates(values: dict, line: int) -> list[float]:
    """x, y, z of one row as floats; a missing or non-numeric coordinate names the line."""
    out = []
    for axis in "xyz":
        value = values.get(axis)
        if value is None or str(value).strip() == "":
            raise _RowError(line, f"coordinate {axis} is missing")
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise _RowError(line, f"coordinate {axis} = {value!r} is not a number") from None
    return out


def _read_fcsv(text, geometry, flip_z):
    ras = True  # Slicer's historical default
    columns = ["id", "x", "y", "z"]
    points = []
    for k, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                ras = value.upper() in ("RAS", "0")
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        if line.strip():
            points.append(_coordinates(dict(zip(columns, next(csv.reader([line])))), k))
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    return points * [-1, -1, 1] if ras else points


def _read_mrk_json(text, geometry, flip_z):
    doc = json.loads(text)
    points = []
    for markup in doc.get("markups", []):
        sign = [-1, -1, 1] if markup.get("coordinateSystem", "LPS").upper() == "RAS" else [1, 1, 1]
        for i, cp in enumerate(markup.get("controlPoints", [])):
            position = cp.get("position")
            if not isinstance(position, list) or len(position) != 3:
                raise ValueError(f"control point {i} ({cp.get('label', cp.get('id', '?'))}): position must be "
                                 f"[x, y, z], got {position!r}")
            points.append(np.asarray(position, dtype=float) * sign)
    return points


def _read_mps(text, geometry, flip_z):
    doc = xmltodict.parse(text, force_list=("point", "time_series"))
    series = doc["point_set_file"]["point_set"]["time_series"][0]
    rows = []
    for i, p in enumerate(series.get("point") or []):
        try:
            rows.append(_coordinates(p, 0))
        except _RowError as err:
            problem = str(err).split(": ", 1)[1]
            raise ValueError(f"point {i} (id {p.get('id', '?')}, line {_mps_line(text, i)}): {problem}") from None
    points = np.asarray(rows, dtype=float).reshape(-1, 3)
    geom = series.get("Geometry3D")
    if geom and "IndexToWorld" in geom:  # points are stored in the point set's own frame
        m = geom["IndexToWorld"]
        matrix = np.array([[float(m[f"@m_{r}_{c}"]) for c in range(3)] for r in range(3)])
        offset = np.array([float(geom["Offset"][f"@{a}"]) for a in "xyz"]) if "Offset" in geom else 0.0
        points = points.reshape(-1, 3) @ matrix.T + offset
    return points


def _mps_line(text: str, i: int) -> int:
    """1-based line of the i-th <point> element (XML parsers do not keep line numbers here)."""
    starts = [m.start() for m in re.finditer(r"<point[\s>]", text)]
    return text.count("\n", 0, starts[i]) + 1 if i < len(starts) else 0


_READERS = {
    "dirlab": _read_dirlab,
    "elastix-point": lambda t, g, f: _read_elastix(t, g, f, "point"),
    "elastix-index": lambda t, g, f: _read_elastix(t, g, f, "index"),
    "transformix": _read_transformix,
    "csv": _read_csv,
    "fcsv": _read_fcsv,
    "mrk.json": _read_mrk_json,
    "mps": _read_mps,
}


# ------------------------------------------------------------------ writing
def write_landmarks(points_mm, path, geometry: Geometry | None = None, fmt: str | None = None,
                    flip_z: bool = False) -> Path:
    """Write physical points (N, 3) in mm in the format named by ``fmt`` or the extension.

    For ``.txt`` without ``fmt`` an elastix ``point`` file is written (unambiguous, in mm).
    """
    path = Path(path)
    points = np.asarray(points_mm, dtype=float)
    if points.shape == (3,):
        points = points[None]
    if points.ndim != 2 or points.shape[1] != 3:
        raise RegNetError(f"{path}: landmarks to write must be an (N, 3) array of x, y, z in mm, got shape "
                          f"{points.shape}.")
    if not np.isfinite(points).all():
        raise RegNetError(f"{path}: landmarks to write contain NaN or infinite coordinates.")
    if fmt is None:
        suffix = full_suffix(path).lower().lstrip(".")
        fmt = suffix if suffix in ("fcsv", "mrk.json", "mps", "csv") else "elastix-point"
    n = len(points)
    if fmt == "dirlab":
        g = _need(geometry, "DIR-Lab")
        idx = g.physical_to_index(points)
        if flip_z:
            idx[:, 2] = (g.size[2] - 1) - idx[:, 2]
        text = "".join("\t".join(_num(v) for v in row + 1) + "\n" for row in idx)
    elif fmt in ("elastix-point", "elastix-index"):
        values = points if fmt == "elastix-point" else _need(geometry, "elastix index").physical_to_index(points)
        text = f"{fmt.split('-')[1]}\n{n}\n" + "".join(" ".join(_num(v) for v in row) + "\n" for row in values)
    elif fmt == "csv":
        text = "label,x,y,z\n" + "".join(f"{i + 1},{_num(p[0])},{_num(p[1])},{_num(p[2])}\n"
                                          for i, p in enumerate(points))
    elif fmt == "fcsv":
        text = ("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
        text += "".join(f"{i + 1},{_num(p[0])},{_num(p[1])},{_num(p[2])},0,0,0,1,1,1,0,F-{i + 1},,\n"
                        for i, p in enumerate(points))
    elif fmt == "mrk.json":
        doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                            "controlPoints": [{"id": str(i + 1), "label": f"F-{i + 1}", "position": p.tolist(),
                                               "positionStatus": "defined"} for i, p in enumerate(points)]}]}
        text = json.dumps(doc, indent=2) + "\n"
    elif fmt == "mps":
        doc = {"point_set_file": {"file_version": "0.1", "point_set": {"time_series": {
            "time_series_id": "0",
            "point": [{"id": str(i), "specification": "0", "x": _num(p[0]), "y": _num(p[1]), "z": _num(p[2])}
                      for i, p in enumerate(points)]}}}}
        text = xmltodict.unparse(doc, pretty=True) + "\n"
    else:
        raise RegNetError(f"Cannot write landmark format {fmt!r}; choose one of {', '.join(FORMATS[:2] + FORMATS[4:])}"
                          " or 'dirlab'.")
    write_text_atomic(path, text)
    return path


def _num(value: float) -> str:
    return repr(float(value))  # shortest exact round trip


def landmark_distances(a_mm, b_mm) -> np.ndarray:
    """Euclidean distance (mm) between corresponding landmarks."""
    a, b = np.asarray(a_mm, float), np.asarray(b_mm, float)
    if a.shape != b.shape:
        raise RegNetError(f"Landmark sets differ in size: {a.shape} vs {b.shape}.")
    return np.linalg.norm(a - b, axis=1)
