"""Evaluate a registration: landmark TRE, plausibility of the DVF, error against a known DVF.

Why not RegNet's way (spec §6): it sampled the DVF at the nearest voxel, ignored the direction
cosines when turning landmarks into indices, and paired Jacobian components with the wrong
axes. Here a landmark ``p`` (physical mm, LPS) is mapped to ``p + u(p)`` with ``u`` sampled
**trilinearly in physical space** (through spacing, origin and direction, exactly as ITK's
``DisplacementFieldTransform.TransformPoint``); the nearest-voxel variant stays available
(``sampling="nearest"``) for comparison with RegNet's numbers. The Jacobian comes from
:func:`regnet.deform.field.jacobian_determinant` (component k along physical axis k).

SDlogJ follows Learn2Reg (MDL-UzL/L2R ``evaluation/evaluation.py``): J is clipped to
[1e-9, 1e9] before the log, then the standard deviation is taken (inside the mask). That script
also adds 3 to J before clipping (questioned in MDL-UzL/L2R issue #7, unanswered); we do not copy
that offset, so a smooth field gives std(log J) as the name says.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError, __version__
from regnet.deform.field import jacobian_determinant, magnitude_class_edges
from regnet.geometry import Geometry, require_same_geometry
from regnet.io import check_image, read_image

CLI_HELP = "landmark TRE, Jacobian (folding, SDlogJ) and DVF error of a registration; figures and report.html"

#: Learn2Reg's clip of the Jacobian determinant before the log (SDlogJ).
LOG_J_CLIP = (1e-9, 1e9)
SAMPLING = ("linear", "nearest")
OUTSIDE = ("error", "exclude")


# ------------------------------------------------------------------ inputs
def load_dvf(dvf, name: str = "DVF") -> sitk.Image:
    """A DVF image (path or sitk.Image) checked for 3 components and finite values."""
    if not isinstance(dvf, sitk.Image):

        return read_image(Path(dvf), vector=True)  # 3 components and finite values checked on reading
    check_image(dvf, name, vector=True)
    return dvf


def _points(points, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise RegNetError(f"{name}: landmarks must be an (N, 3) array of points in mm, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise RegNetError(f"{name}: landmarks contain NaN or infinite coordinates.")
    return array


def mask_array(mask, dvf: sitk.Image, name: str = "mask") -> np.ndarray:
    """A boolean (z, y, x) mask on the DVF's grid; refuses other grids and empty masks."""
    g = Geometry.of(dvf)
    if isinstance(mask, (str, Path)):

        name = str(mask)
        mask = read_image(mask)
    if isinstance(mask, sitk.Image):
        require_same_geometry(mask, dvf, f"{name} and DVF")
        array = sitk.GetArrayViewFromImage(mask) > 0
    else:
        array = np.asarray(mask) > 0
        if array.shape != g.shape:
            raise RegNetError(f"{name}: shape {array.shape} does not match the DVF grid (z, y, x) {g.shape}.")
    if not array.any():
        raise RegNetError(f"{name} is empty (no voxel > 0 on the DVF grid): nothing to evaluate. "
                          "Check the mask file, or leave it out to use the whole grid.")
    return array


# ------------------------------------------------------------------ sampling and TRE
def inside_grid(geometry: Geometry, points_mm) -> np.ndarray:
    """Which points ITK would sample: continuous index in [-0.5, n - 0.5) on every axis."""
    idx = geometry.physical_to_index(np.asarray(points_mm, float).reshape(-1, 3))
    n = np.asarray(geometry.size, float)
    return np.all((idx >= -0.5) & (idx < n - 0.5), axis=1)


def sample_dvf(dvf: sitk.Image, points_mm, sampling: str = "linear") -> np.ndarray:
    """u at physical points, (N, 3) mm, components (x, y, z).

    ``linear``: trilinear in index space after mapping the points through the direction matrix,
    neighbours clamped at the border (as ITK's linear interpolator). ``nearest``: the voxel
    whose centre is nearest (RegNet's choice, but through the direction matrix). Points
    outside the grid (see :func:`inside_grid`) get NaN.
    """
    if sampling not in SAMPLING:
        raise RegNetError(f"Unknown DVF sampling {sampling!r}; choose one of {', '.join(SAMPLING)}.")
    g = Geometry.of(dvf)
    u = sitk.GetArrayViewFromImage(dvf)  # (z, y, x, 3), no copy
    points = np.asarray(points_mm, float).reshape(-1, 3)
    out = np.full(points.shape, np.nan)
    ok = inside_grid(g, points)
    if not ok.any():
        return out
    idx = g.physical_to_index(points[ok])  # (x, y, z) continuous indices
    hi = np.asarray(g.size) - 1
    if sampling == "nearest":
        i = np.clip(np.floor(idx + 0.5).astype(int), 0, hi)
        out[ok] = u[i[:, 2], i[:, 1], i[:, 0]]
        return out
    base = np.floor(idx).astype(int)
    frac = idx - base
    acc = np.zeros((len(idx), 3))
    for corner in range(8):
        offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        weight = np.prod(np.where(offset, frac, 1.0 - frac), axis=1)
        j = np.clip(base + offset, 0, hi)
        acc += weight[:, None] * u[j[:, 2], j[:, 1], j[:, 0]]
    out[ok] = acc
    return out


@dataclass
class LandmarkErrors:
    """Per-landmark result: points in mm; excluded landmarks (outside the DVF) have NaN mapped."""

    fixed: np.ndarray
    moving: np.ndarray
    mapped: np.ndarray
    inside: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """Signed error mapped - moving per axis (x, y, z), mm."""
        return self.mapped - self.moving

    @property
    def tre(self) -> np.ndarray:
        return np.linalg.norm(self.error, axis=1)

    @property
    def initial(self) -> np.ndarray:
        return np.linalg.norm(self.fixed - self.moving, axis=1)


def landmark_errors(dvf: sitk.Image, fixed_mm, moving_mm, sampling: str = "linear",
                    outside: str = "error", names=("fixed landmarks", "moving landmarks")) -> LandmarkErrors:
    """TRE_i = |p_fixed + u(p_fixed) - p_moving|, with u sampled as :func:`sample_dvf` says.

    Fixed landmarks outside the DVF grid raise an error listing each of them
    (``outside="error"``), or are kept in the result with ``inside=False`` and left out of
    the statistics (``outside="exclude"``); never dropped silently.
    """
    if outside not in OUTSIDE:
        raise RegNetError(f"Unknown outside policy {outside!r}; choose one of {', '.join(OUTSIDE)}.")
    fixed, moving = _points(fixed_mm, names[0]), _points(moving_mm, names[1])
    if len(fixed) != len(moving):
        raise RegNetError(f"{names[0]} has {len(fixed)} points but {names[1]} has {len(moving)}: "
                          "they must correspond one to one (same count, same order).")
    if len(fixed) == 0:
        raise RegNetError(f"{names[0]} holds no landmarks.")
    u = sample_dvf(dvf, fixed, sampling)
    inside = np.isfinite(u).all(axis=1)
    if not inside.all() and outside == "error":
        raise RegNetError(f"{int((~inside).sum())} of {len(fixed)} {names[0]} lie outside the DVF grid: "
                          + outside_report(fixed, inside, Geometry.of(dvf))
                          + ". Check that the landmarks belong to the fixed image, or pass outside='exclude' "
                            "(CLI: --outside exclude) to evaluate the others and list these.")
    return LandmarkErrors(fixed, moving, fixed + u, inside)


def outside_report(points: np.ndarray, inside: np.ndarray, geometry: Geometry, limit: int = 20) -> str:
    """'#12 at (x, y, z) mm = index (i, j, k)' for the landmarks outside (1-based numbers)."""
    bad = np.flatnonzero(~inside)
    idx = geometry.physical_to_index(points[bad]) if len(bad) else np.zeros((0, 3))
    items = [f"#{k + 1} at ({', '.join(f'{v:.1f}' for v in points[k])}) mm = index "
             f"({', '.join(f'{v:.1f}' for v in i)})" for k, i in zip(bad[:limit], idx[:limit])]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return "; ".join(items) + more + f" (grid size {geometry.size})"


# ------------------------------------------------------------------ statistics
def summary(values) -> dict:
    """{mean, std, median, p95, max, n} of the finite values (None when there are none)."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "median": None, "p95": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max()), "n": int(v.size)}


def per_axis(vectors) -> dict:
    """Signed mean, std and mean absolute error per physical axis (x, y, z)."""
    v = np.asarray(vectors, float).reshape(-1, 3)
    v = v[np.isfinite(v).all(axis=1)]
    return {axis: {"mean": float(v[:, k].mean()), "std": float(v[:, k].std()), "mae": float(np.abs(v[:, k]).mean())}
            if len(v) else {"mean": None, "std": None, "mae": None} for k, axis in enumerate("xyz")}


def jacobian_stats(dvf: sitk.Image, mask=None, jacobian: np.ndarray | None = None) -> dict:
    """Folding (% of voxels with J <= 0), SDlogJ (Learn2Reg clip), min, max, mean of J in the mask."""

    jac = jacobian_determinant(dvf) if jacobian is None else jacobian
    inside = np.ones(jac.shape, bool) if mask is None else mask_array(mask, dvf)
    j = jac[inside].astype(np.float64)
    log_j = np.log(np.clip(j, *LOG_J_CLIP))
    return {"folding_percent": float(100.0 * np.mean(j <= 0)), "sdlogj": float(log_j.std()),
            "min": float(j.min()), "max": float(j.max()), "mean": float(j.mean()), "n_voxels": int(j.size)}


def inverse_consistency(forward: sitk.Image, backward: sitk.Image, mask=None) -> dict:
    """|x + u(x) + v(x + u(x)) - x| on the forward grid (u fixed->moving, v moving->fixed), mm.

    Only voxels whose image x + u(x) falls inside v's grid count (v is unknown elsewhere).
    """
    forward, backward = load_dvf(forward, "forward DVF"), load_dvf(backward, "inverse DVF")
    g = Geometry.of(forward)
    u = sitk.GetArrayViewFromImage(forward)
    inside = np.ones(g.shape, bool) if mask is None else mask_array(mask, forward)
    zz, yy, xx = np.nonzero(inside)
    points = g.index_to_physical(np.stack([xx, yy, zz], axis=1)) + u[zz, yy, xx]
    v = sample_dvf(backward, points, "linear")
    residual = np.linalg.norm(u[zz, yy, xx] + v, axis=1)
    out = summary(residual)
    out["outside_inverse_grid"] = int(np.sum(~np.isfinite(residual)))
    return out


def dvf_error(pred, truth, mask=None, classes=None) -> dict:
    """End-point error |pred - truth| (mm) inside ``mask``, overall and per class of |truth|.

    ``pred``/``truth``: DVF images on one grid (or (z, y, x, 3) arrays of one shape; ``mask`` then
    an array too). ``classes``: ClassBalanced thresholds, e.g. ``[2, 7]`` or
    ``load_deform_exp('3D_max7_D14_K').class_balanced()``. Classes use the Euclidean magnitude
    of the truth rather than RegNet's "every component in the band" rule, which dropped voxels
    whose components fall in different bands (spec §2, §8.4).
    """
    if isinstance(pred, sitk.Image) or isinstance(truth, sitk.Image):
        pred, truth = load_dvf(pred, "predicted DVF"), load_dvf(truth, "true DVF")
        require_same_geometry(pred, truth, "predicted and true DVFs")
        inside = None if mask is None else mask_array(mask, truth)
        p, t = sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(truth)
    else:
        p, t = np.asarray(pred), np.asarray(truth)
        if p.shape != t.shape or p.ndim != 4 or p.shape[-1] != 3:
            raise RegNetError(f"Predicted and true DVF arrays must both be (z, y, x, 3); got {p.shape} and {t.shape}.")
        for name, a in (("predicted DVF", p), ("true DVF", t)):
            if not np.isfinite(a).all():
                raise RegNetError(f"{name} contains NaN or infinite values.")
        inside = None
        if mask is not None:
            inside = np.asarray(mask) > 0
            if inside.shape != p.shape[:3]:
                raise RegNetError(f"mask shape {inside.shape} does not match the DVF grid {p.shape[:3]}.")
            if not inside.any():
                raise RegNetError("mask is empty (no voxel > 0): nothing to evaluate.")
    if inside is None:
        d, tt = (p - t).reshape(-1, 3), t.reshape(-1, 3)
    else:
        d, tt = p[inside] - t[inside], t[inside]
    epe = np.sqrt(np.einsum("ij,ij->i", d, d, dtype=np.float64))
    size = None if classes is None else np.sqrt(np.einsum("ij,ij->i", tt, tt, dtype=np.float64))
    return error_summary(epe, size, classes)


def error_summary(epe: np.ndarray, size: np.ndarray | None = None, classes=None) -> dict:
    """Statistics of per-voxel errors, overall and per class of the true magnitude ``size`` (mm)."""
    out = summary(epe)
    if classes is not None:
        out["classes"] = []
        for lo, hi in magnitude_class_edges(classes):  # the classes the reader balances
            sel = (size >= lo) & (size < hi)
            out["classes"].append({"truth_mm": [lo, None if np.isinf(hi) else hi], **summary(epe[sel])})
    return out


def wilcoxon_p(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (scipy.stats.wilcoxon).

    ``zero_method='zsplit'`` as RegNet's evaluation did (ties at zero split between ranks);
    identical samples give 1.0.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise RegNetError(f"Paired samples differ in size: {a.shape} vs {b.shape}.")
    if np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b, zero_method="zsplit").pvalue)


# ------------------------------------------------------------------ one evaluation
def evaluate(dvf, fixed_mm=None, moving_mm=None, *, mask=None, truth=None, inverse=None, classes=None,
             sampling: str = "linear", outside: str = "error",
             names=("fixed landmarks", "moving landmarks")) -> tuple[dict, LandmarkErrors | None, np.ndarray]:
    """All metrics of one registration: (metrics dict, per-landmark errors, Jacobian map).

    Landmarks are optional (a synthetic pair has its true DVF instead): without them the errors
    are None and the metrics hold no TRE."""
    if (fixed_mm is None) != (moving_mm is None):
        raise RegNetError(f"Give both {names[0]} and {names[1]}, or neither.")
    timings = {}
    t0 = time.perf_counter()
    dvf = load_dvf(dvf)
    inside_mask = None if mask is None else mask_array(mask, dvf)
    metrics = {"tool": "regnet evaluate", "version": __version__, "sampling": sampling}
    errors = None
    if fixed_mm is not None:
        errors = landmark_errors(dvf, fixed_mm, moving_mm, sampling, outside, names)
        timings["tre"] = time.perf_counter() - t0
        ok = errors.inside
        metrics.update({
            "tre_mm": summary(errors.tre[ok]), "initial_mm": summary(errors.initial[ok]),
            "per_axis_mm": per_axis(errors.error[ok]),
            "initial_per_axis_mm": per_axis((errors.fixed - errors.moving)[ok]),
            "landmarks": {"n": len(ok), "evaluated": int(ok.sum()),
                          "outside_dvf": [{"number": int(k + 1), "fixed_mm": errors.fixed[k].tolist()}
                                          for k in np.flatnonzero(~ok)]},
        })
    t0 = time.perf_counter()
    jac = jacobian_determinant(dvf)
    metrics["jacobian"] = jacobian_stats(dvf, inside_mask, jacobian=jac)
    metrics["jacobian"]["region"] = "mask" if mask is not None else "whole DVF grid"
    timings["jacobian"] = time.perf_counter() - t0
    if truth is not None:
        t0 = time.perf_counter()
        metrics["dvf_error_mm"] = dvf_error(dvf, load_dvf(truth, "true DVF"), inside_mask, classes)
        timings["dvf_error"] = time.perf_counter() - t0
    if inverse is not None:
        t0 = time.perf_counter()
        metrics["inverse_consistency_mm"] = inverse_consistency(dvf, inverse, inside_mask)
        timings["inverse_consistency"] = time.perf_counter() - t0
    metrics["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return metrics, errors, jac


LANDMARK_COLUMNS = ["number", "fixed_x", "fixed_y", "fixed_z", "moving_x", "moving_y", "moving_z",
                    "mapped_x", "mapped_y", "mapped_z", "error_x", "error_y", "error_z", "tre_mm",
                    "initial_mm", "inside_dvf"]


def write_landmarks_csv(errors: LandmarkErrors, path) -> Path:
    """One row per landmark (mm); landmarks outside the DVF have empty mapped/error cells."""
    from regnet.files import atomic_path

    def cell(v):
        return "" if not np.isfinite(v) else repr(round(float(v), 6))

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(LANDMARK_COLUMNS)
        for k in range(len(errors.fixed)):
            writer.writerow([k + 1, *map(cell, errors.fixed[k]), *map(cell, errors.moving[k]),
                             *map(cell, errors.mapped[k]), *map(cell, errors.error[k]), cell(errors.tre[k]),
                             cell(errors.initial[k]), int(errors.inside[k])])
    return path


def read_landmarks_csv(path) -> dict[str, np.ndarray]:
    """The columns of a landmarks.csv written by :func:`write_landmarks_csv` (empty cells -> NaN)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(LANDMARK_COLUMNS) - set(rows[0]):
        raise RegNetError(f"{path}: not a landmarks.csv written by regnet evaluate (columns {LANDMARK_COLUMNS}).")
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in LANDMARK_COLUMNS}


# ------------------------------------------------------------------ command line
def add_arguments(p) -> None:
    p.add_argument("--dvf", type=Path, required=True, help="the DVF (on the fixed grid, pulling from the moving image)")
    p.add_argument("--fixed-landmarks", type=Path, help="landmarks in the fixed image (optional with --truth)")
    p.add_argument("--moving-landmarks", type=Path, help="corresponding landmarks in the moving image")
    p.add_argument("--fixed", type=Path, help="fixed image (figures; geometry of index landmark files)")
    p.add_argument("--moving", type=Path, help="moving image (figures; geometry of index landmark files)")
    p.add_argument("--mask", type=Path, help="mask on the DVF grid for the Jacobian and DVF error (e.g. the lung)")
    p.add_argument("--truth", type=Path, help="the true DVF (synthetic pairs): end-point error per magnitude class")
    p.add_argument("--inverse", type=Path, help="the DVF of the opposite direction: inverse consistency")
    p.add_argument("--classes", type=str, default=None,
                   help="ClassBalanced thresholds in mm, e.g. 1.5,4,15: classes |u| < 1.5, [1.5, 4), >= 4 as the "
                        "reader's (default: ClassBalanced of --deform-exp)")
    p.add_argument("--deform-exp", default="3D_max7_D14_K", help="deform experiment whose ClassBalanced to use")
    p.add_argument("--layout", help="data layout giving the geometry/format of index landmark files (DIR-Lab)")
    p.add_argument("--case", help="case of --layout (e.g. 1)")
    p.add_argument("--data-folder", type=Path, default=Path("."), help="DataFolder for --layout's root")
    p.add_argument("--landmark-format", default=None, help="landmark format (default: detected)")
    p.add_argument("--flip-z", action="store_true", help="DIR-Lab z indices count from the other end")
    p.add_argument("--sampling", choices=SAMPLING, default="linear",
                   help="DVF sampling at landmarks: trilinear (default) or RegNet's nearest voxel")
    p.add_argument("--outside", choices=OUTSIDE, default="error",
                   help="fixed landmarks outside the DVF: stop with a list (default) or exclude and list them")
    p.add_argument("--no-figures", action="store_true", help="numbers and report.html only (faster in batch runs)")
    p.add_argument("--name", default=None, help="name of this pair in reports (default: the DVF file name)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced as a whole if it holds a result)")


def _landmarks_for(path: Path, geometry, fmt, flip_z, which: str) -> np.ndarray:
    from regnet.landmarks import read_landmarks

    try:
        return read_landmarks(path, geometry, fmt=fmt, flip_z=flip_z)
    except RegNetError as err:
        if geometry is None and "geometry" in str(err):
            raise RegNetError(f"{path}: {err} Pass --{which} IMAGE or --layout NAME --case N.") from None
        raise


def write_evaluation(out, metrics: dict, errors: LandmarkErrors | None, dvf: sitk.Image, jac: np.ndarray,
                     fixed: sitk.Image | None = None, moving: sitk.Image | None = None, figures: bool = True,
                     started: float | None = None) -> Path:
    """metrics.json, landmarks.csv, the figures and report.html into ``out``, replaced as a whole."""
    from regnet.report import result_folder, write_evaluation_report

    with result_folder(out) as tmp:
        t0 = time.perf_counter()
        metrics["figures"] = write_evaluation_report(tmp, metrics, errors, dvf, jac, fixed=fixed, moving=moving,
                                                     figures=figures)
        if errors is not None:
            write_landmarks_csv(errors, tmp / "landmarks.csv")
        metrics["seconds"]["figures_and_report"] = round(time.perf_counter() - t0, 3)
        if started is not None:
            metrics["seconds"]["total"] = round(time.perf_counter() - started, 3)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def evaluate_command(args) -> int:
    from regnet.io import read_image

    started = time.perf_counter()
    dvf = load_dvf(args.dvf)
    fixed_img = read_image(args.fixed) if args.fixed else None
    moving_img = read_image(args.moving) if args.moving else None
    fmt, flip_z = args.landmark_format, args.flip_z
    fixed_geom = Geometry.of(fixed_img) if fixed_img is not None else None
    moving_geom = Geometry.of(moving_img) if moving_img is not None else None
    if args.layout:
        from regnet.layouts import load_layout

        if args.case is None:
            raise RegNetError("--layout needs --case (which case's geometry to use).")
        layout = load_layout(args.layout, data_folder=args.data_folder)
        case = int(args.case) if str(args.case).isdigit() else args.case
        layout_geom = layout.geometry(case)
        fixed_geom, moving_geom = fixed_geom or layout_geom, moving_geom or layout_geom
        fmt = fmt or layout.landmark_format
        flip_z = flip_z or layout.landmark_flip_z
    if fixed_geom is None:
        fixed_geom = Geometry.of(dvf)  # the DVF lives on the fixed grid (convention)
    if (args.fixed_landmarks is None) != (args.moving_landmarks is None):
        raise RegNetError("Give both --fixed-landmarks and --moving-landmarks, or neither (with --truth).")
    if args.fixed_landmarks is None and args.truth is None:
        raise RegNetError("Nothing to measure the DVF against: give --fixed-landmarks and --moving-landmarks, "
                          "or --truth DVF (a synthetic pair's true field).")
    fixed_pts = moving_pts = None
    if args.fixed_landmarks is not None:
        fixed_pts = _landmarks_for(args.fixed_landmarks, fixed_geom, fmt, flip_z, "fixed")
        moving_pts = _landmarks_for(args.moving_landmarks, moving_geom, fmt, flip_z, "moving")
    classes = None
    if args.truth is not None:
        if args.classes:
            try:
                classes = [float(v) for v in args.classes.split(",")]
            except ValueError:
                raise RegNetError(f"--classes must be comma-separated numbers in mm, got {args.classes!r}.") from None
        else:
            from regnet.settings import load_deform_exp

            classes = load_deform_exp(args.deform_exp).class_balanced()
    metrics, errors, jac = evaluate(dvf, fixed_pts, moving_pts, mask=args.mask, truth=args.truth,
                                    inverse=args.inverse, classes=classes, sampling=args.sampling,
                                    outside=args.outside, names=(str(args.fixed_landmarks), str(args.moving_landmarks)))
    metrics["pair"] = args.name or Path(args.dvf).name.split(".")[0]
    metrics["inputs"] = {k: (str(v) if v is not None else None) for k, v in (
        ("dvf", args.dvf), ("fixed_landmarks", args.fixed_landmarks), ("moving_landmarks", args.moving_landmarks),
        ("fixed", args.fixed), ("moving", args.moving), ("mask", args.mask), ("truth", args.truth),
        ("inverse", args.inverse), ("layout", args.layout), ("case", args.case))}
    if classes is not None:
        metrics["classes_mm"] = classes
    write_evaluation(args.out, metrics, errors, dvf, jac, fixed_img, moving_img, figures=not args.no_figures,
                     started=started)
    jac_text = f"folding {metrics['jacobian']['folding_percent']:.3f} %, SDlogJ {metrics['jacobian']['sdlogj']:.3f}"
    if errors is not None:
        t, i = metrics["tre_mm"], metrics["initial_mm"]
        print(f"{metrics['pair']}: TRE {t['mean']:.2f} +- {t['std']:.2f} mm (median {t['median']:.2f}, "
              f"p95 {t['p95']:.2f}, max {t['max']:.2f}, n {t['n']}); initial {i['mean']:.2f} mm; {jac_text}")
    else:
        print(f"{metrics['pair']}: {jac_text} (no landmarks)")
    if "dvf_error_mm" in metrics:
        d = metrics["dvf_error_mm"]
        print(f"  DVF end-point error against --truth {d['mean']:.2f} +- {d['std']:.2f} mm (median {d['median']:.2f}, "
              f"p95 {d['p95']:.2f}, {d['n']} voxels" + (" in --mask)" if args.mask else ")"))
    if errors is not None and metrics["landmarks"]["outside_dvf"]:
        print(f"  {len(metrics['landmarks']['outside_dvf'])} landmark(s) outside the DVF grid were excluded: "
              + outside_report(errors.fixed, errors.inside, Geometry.of(dvf)))
    print(f"  {args.out / 'report.html'}")
    return 0
