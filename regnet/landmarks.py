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
def read_landmarks(path, geometry: Geometry | None = None, fmt: str | None = None,
                   flip_z: bool = False) -> np.ndarray:
    """Read landmarks as physical points (N, 3) in mm.

    ``geometry`` converts voxel indices (DIR-Lab, elastix ``index``); ``flip_z`` says DIR-Lab z
    indices count from the other end of the volume (index = n_z - z instead of z - 1).
    """
    path = Path(path)
    if not path.is_file():
        raise RegNetError(f"{path}: no such landmark file.")
    fmt = fmt or detect_format(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        points = _READERS[fmt](text, geometry, flip_z)
    except KeyError:
        raise RegNetError(f"Unknown landmark format {fmt!r}; choose one of {', '.join(FORMATS)}.") from None
    except (ValueError, IndexError) as err:
        raise RegNetError(f"{path}: not a valid {fmt} landmark file ({err}).") from None
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if not np.isfinite(points).all():
        raise RegNetError(f"{path}: landmarks contain NaN or infinite coordinates.")
    return points


def _numeric_rows(lines) -> np.ndarray:
    rows = [[float(v) for v in line.replace(",", " ").split()[:3]] for line in lines if line.strip()]
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _read_dirlab(text, geometry, flip_z):
    g = _need(geometry, "DIR-Lab")
    idx = _numeric_rows(text.splitlines())
    idx = idx - np.array([1.0, 1.0, 1.0])
    if flip_z:
        idx[:, 2] = (g.size[2] - 1) - idx[:, 2]  # 1-based z counted from the other end: n_z - z
    return g.index_to_physical(idx)


def _read_elastix(text, geometry, flip_z, kind):
    lines = [line for line in text.splitlines() if line.strip()]
    count = int(float(lines[1].split()[0]))
    values = _numeric_rows(lines[2:2 + count])
    if len(values) != count:
        raise ValueError(f"header says {count} points, found {len(values)}")
    return values if kind == "point" else _need(geometry, "elastix index").index_to_physical(values)


def _read_transformix(text, geometry, flip_z):
    rows = re.findall(r"OutputPoint\s*=\s*\[\s*([^\]]+)\]", text)
    return _numeric_rows(rows)


def _read_csv(text, geometry, flip_z):
    reader = csv.DictReader(_io.StringIO(text))
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    if not {"x", "y", "z"} <= set(fields):
        raise ValueError("a header with columns x, y, z (mm) is required")
    return [[float(row[fields[a]]) for a in "xyz"] for row in reader]


def _read_fcsv(text, geometry, flip_z):
    ras = True  # Slicer's historical default
    columns = ["id", "x", "y", "z"]
    points = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                ras = value.upper() in ("RAS", "0")
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        if line.strip():
            row = dict(zip(columns, next(csv.reader([line]))))
            points.append([float(row["x"]), float(row["y"]), float(row["z"])])
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    return points * [-1, -1, 1] if ras else points


def _read_mrk_json(text, geometry, flip_z):
    doc = json.loads(text)
    points = []
    for markup in doc.get("markups", []):
        sign = [-1, -1, 1] if markup.get("coordinateSystem", "LPS").upper() == "RAS" else [1, 1, 1]
        for cp in markup.get("controlPoints", []):
            points.append(np.asarray(cp["position"], dtype=float) * sign)
    return points


def _read_mps(text, geometry, flip_z):
    doc = xmltodict.parse(text, force_list=("point", "time_series"))
    series = doc["point_set_file"]["point_set"]["time_series"][0]
    points = np.asarray([[float(p["x"]), float(p["y"]), float(p["z"])] for p in series.get("point") or []])
    geom = series.get("Geometry3D")
    if geom and "IndexToWorld" in geom:  # points are stored in the point set's own frame
        m = geom["IndexToWorld"]
        matrix = np.array([[float(m[f"@m_{r}_{c}"]) for c in range(3)] for r in range(3)])
        offset = np.array([float(geom["Offset"][f"@{a}"]) for a in "xyz"]) if "Offset" in geom else 0.0
        points = points.reshape(-1, 3) @ matrix.T + offset
    return points


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
    points = np.asarray(points_mm, dtype=float).reshape(-1, 3)
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
