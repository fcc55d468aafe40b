"""Figures and a static ``report.html`` for an evaluation, and ``regnet compare`` over methods.

Everything is drawn with matplotlib's Agg backend (no display needed) into PNGs beside a plain
HTML page with relative links, so the output folder opens in any browser, can be zipped or
mailed. Output folders are built in a temporary sibling and swapped in whole (see
:func:`result_folder`), so a folder never mixes an old and a new result.
"""
from __future__ import annotations

import csv
import html
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError, __version__
from regnet.figures import orthogonal_views, pyplot, save_png
from regnet.geometry import Geometry

CLI_HELP = "compare evaluations of several methods on the same pairs (table, Wilcoxon p-values, box plots)"

#: Files that mark a folder as an earlier result of ``regnet evaluate`` / ``regnet compare``.
RESULT_MARKERS = ("metrics.json", "compare.json")


# ------------------------------------------------------------------ output folder
@contextmanager
def result_folder(out):
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out`` whole.

    ``out`` may be missing, empty, or an earlier result (it holds metrics.json or compare.json):
    the old folder is renamed aside, the new one renamed in, then the old one deleted, so
    ``out`` is always either the complete old or the complete new result (stale files of the
    old run never survive). A non-empty folder that is not a result is refused, not deleted.
    On failure the temporary folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise RegNetError(f"--out {out} is a file; give a folder.")
        if any(out.iterdir()) and not any((out / m).is_file() for m in RESULT_MARKERS):
            raise RegNetError(f"--out {out} exists and is not an earlier regnet evaluate/compare result "
                              f"(no {' or '.join(RESULT_MARKERS)}); refusing to replace it. "
                              "Choose a new or empty folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{time.time_ns()}"
    tmp = out.with_name(f".{out.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        old = out.with_name(f".{out.name}.old-{tag}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ figures
def _save(fig, path: Path) -> str:
    return save_png(fig, path).name


def _window(image: sitk.Image) -> tuple[float, float]:
    a = sitk.GetArrayViewFromImage(image)
    step = max(1, a.size // 2_000_000)
    lo, hi = np.percentile(a.ravel()[::step], [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _on_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    from regnet.io import resample_like

    if Geometry.of(image).close_to(Geometry.of(reference)):
        return sitk.Cast(image, sitk.sitkFloat32)
    lo = float(sitk.GetArrayViewFromImage(image).min())
    return resample_like(sitk.Cast(image, sitk.sitkFloat32), reference, "linear", lo, antialias=False)


def _unit(a, window):
    return np.clip((np.asarray(a, np.float32) - window[0]) / (window[1] - window[0]), 0.0, 1.0)


def overlay_png(fixed: sitk.Image, before: sitk.Image, after: sitk.Image, path: Path) -> str:
    """Fixed in magenta, moving in green (grey where they agree): before and after, three views."""
    plt = pyplot()
    window = _window(fixed)
    views_f = orthogonal_views(fixed)
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.6))
    for row, (label, moving) in enumerate((("before", before), ("after", after))):
        for ax, (name, f, aspect, origin), (_, m, _, _) in zip(axes[row], views_f, orthogonal_views(moving)):
            f, m = _unit(f, window), _unit(m, window)
            ax.imshow(np.stack([f, m, f], axis=-1), aspect=aspect, origin=origin, interpolation="nearest")
            ax.set_title(f"{name}, {label}")
            ax.set_axis_off()
    fig.suptitle("fixed (magenta) vs moving (green); grey = aligned")
    fig.tight_layout()
    return _save(fig, path)


def checkerboard_png(fixed: sitk.Image, after: sitk.Image, path: Path, squares: int = 8) -> str:
    """Alternating blocks of the fixed and the warped moving image (edges should continue)."""
    plt = pyplot()
    board = sitk.CheckerBoard(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(after, sitk.sitkFloat32), [squares] * 3)
    window = _window(fixed)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, (name, cut, aspect, origin) in zip(axes, orthogonal_views(board)):
        ax.imshow(cut, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin,
                  interpolation="nearest")
        ax.set_title(f"{name}: checkerboard fixed / warped moving")
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def map_png(image: sitk.Image, path: Path, title: str, cmap: str, vmin: float, vmax: float, label: str) -> str:
    """A scalar map (|u|, Jacobian) in three views with a colour bar."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    shown = None
    for ax, (name, cut, aspect, origin) in zip(axes, orthogonal_views(image)):
        shown = ax.imshow(cut, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, origin=origin, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label=label)
    fig.suptitle(title)
    return _save(fig, path)


def deformed_grid_png(dvf: sitk.Image, path: Path, lines: int = 24, background: sitk.Image | None = None) -> str:
    """Where the fixed grid's lines land in the moving image (p + u(p)), in-plane components.

    Drawn on the LPS-oriented grid; for oblique volumes the in-plane axes are the nearest
    physical ones, which is what the picture is for (seeing folds and shears), not measuring.
    """
    plt = pyplot()
    oriented = sitk.DICOMOrient(dvf, "LPS")
    u = sitk.GetArrayViewFromImage(oriented)
    sx, sy, sz = oriented.GetSpacing()
    nz, ny, nx = u.shape[:3]
    cuts = [("axial", u[nz // 2], (0, sx), (1, sy), sy / sx, "upper"),
            ("coronal", u[:, ny // 2, :], (0, sx), (2, sz), sz / sx, "lower"),
            ("sagittal", u[:, :, nx // 2], (1, sy), (2, sz), sz / sy, "lower")]
    backgrounds = orthogonal_views(background) if background is not None else [None] * 3
    window = _window(background) if background is not None else None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, (name, cut, (cc, cs), (rc, rs), aspect, origin), bg in zip(axes, cuts, backgrounds):
        rows, cols = cut.shape[:2]
        if bg is not None:
            ax.imshow(bg[1], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin, alpha=0.5)
        else:
            ax.imshow(np.ones((rows, cols)), cmap="gray", vmin=0, vmax=1, aspect=aspect, origin=origin)
        col_pos = np.arange(cols)[None, :] + cut[..., cc] / cs
        row_pos = np.arange(rows)[:, None] + cut[..., rc] / rs
        step_r, step_c = max(1, rows // lines), max(1, cols // lines)
        for r in range(0, rows, step_r):
            ax.plot(col_pos[r], row_pos[r] * np.ones(cols), color="tab:blue", lw=0.6)
        for c in range(0, cols, step_c):
            ax.plot(col_pos[:, c], row_pos[:, c], color="tab:blue", lw=0.6)
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim((rows - 0.5, -0.5) if origin == "upper" else (-0.5, rows - 0.5))
        ax.set_title(f"{name}: deformed grid")
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def tre_boxplot_png(samples: dict, path: Path, title: str = "target registration error") -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(samples) + 2), 4.6))
    data = [np.asarray(v, float)[np.isfinite(v)] for v in samples.values()]
    ax.boxplot(data, notch=True, showmeans=True)
    ax.set_xticks(range(1, len(samples) + 1), list(samples), rotation=20)
    ax.set_ylabel("mm")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def tre_scatter_png(initial, tre, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.scatter(initial, tre, s=10, alpha=0.7)
    top = float(np.nanmax(np.concatenate([initial, tre, [1.0]])))
    ax.plot([0, top], [0, top], color="gray", lw=0.8, ls="--", label="TRE = initial")
    ax.set_xlabel("initial distance (mm)")
    ax.set_ylabel("TRE after registration (mm)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_evaluation_report(out: Path, metrics: dict, errors, dvf: sitk.Image, jac: np.ndarray,
                            fixed: sitk.Image | None = None, moving: sitk.Image | None = None,
                            figures: bool = True) -> list[str]:
    """All PNGs of one evaluation and ``report.html`` into ``out``; returns the PNG names.

    Without ``fixed`` and ``moving`` the image figures (overlay, checkerboard) are left out;
    ``figures=False`` writes the page with the tables only.
    """
    from regnet.deform.field import magnitude, warp
    from regnet.io import image_from_array

    out = Path(out)
    if not figures:
        (out / "report.html").write_text(evaluation_html(metrics, []), encoding="utf-8")
        return []
    g = Geometry.of(dvf)
    figures = []
    fixed_on = _on_grid(fixed, dvf) if fixed is not None else None
    if fixed is not None and moving is not None:
        lo = float(sitk.GetArrayViewFromImage(moving).min())
        before = _on_grid(moving, dvf)
        after = warp(sitk.Cast(moving, sitk.sitkFloat32), dvf, "linear", default=lo)
        figures.append(overlay_png(fixed_on, before, after, out / "overlay.png"))
        figures.append(checkerboard_png(fixed_on, after, out / "checkerboard.png"))
    mag = magnitude(dvf)
    figures.append(map_png(image_from_array(mag, g), out / "dvf_magnitude.png", "DVF magnitude |u|", "viridis",
                           0.0, float(max(np.percentile(mag, 99.9), 1e-3)), "mm"))
    figures.append(map_png(image_from_array(np.asarray(jac, np.float32), g), out / "jacobian.png",
                           "Jacobian determinant (blue < 1 compression, red > 1 expansion, J <= 0 folding)",
                           "RdBu_r", 0.0, 2.0, "det(I + du/dp)"))
    figures.append(deformed_grid_png(dvf, out / "deformed_grid.png", background=fixed_on))
    if errors is not None:  # landmarks given
        ok = errors.inside
        figures.append(tre_boxplot_png({"initial": errors.initial[ok], "after": errors.tre[ok]},
                                       out / "tre_boxplot.png"))
        figures.append(tre_scatter_png(errors.initial[ok], errors.tre[ok], out / "tre_vs_initial.png"))
    (out / "report.html").write_text(evaluation_html(metrics, figures), encoding="utf-8")
    return figures


# ------------------------------------------------------------------ HTML
_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}code{background:#f4f4f4}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e5 else f"{v:.3g}"
    return html.escape(str(v))


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts)
            + f"\n<p><small>regnet {html.escape(__version__)}</small></p></body></html>\n")


def _stats_rows(named: dict) -> list:
    keys = ("mean", "std", "median", "p95", "max", "n")
    return [[name, *(stats.get(k) for k in keys)] for name, stats in named.items()]


CAPTIONS = {
    "overlay.png": "Fixed (magenta) over moving (green) before and after registration: grey where they agree.",
    "checkerboard.png": "Checkerboard of the fixed and the warped moving image: edges should run on across squares.",
    "dvf_magnitude.png": "Magnitude of the DVF (mm).",
    "jacobian.png": "Jacobian determinant: 1 keeps volume, < 1 compresses, > 1 expands, <= 0 folds.",
    "deformed_grid.png": "The fixed grid mapped into the moving image (p + u(p)), in-plane components.",
    "tre_boxplot.png": "Landmark distances before (initial) and after registration (TRE).",
    "tre_vs_initial.png": "TRE against the initial distance of each landmark; points under the line improved.",
}


def evaluation_html(metrics: dict, figures: list[str], *, title: str | None = None, intro=(), prefix: str = "") -> str:
    """The evaluation page; ``intro``: HTML parts put first, ``prefix``: where the figures and files are
    relative to the page (the demo's report.html sits one folder above its evaluation)."""
    parts = [*intro]
    if "tre_mm" in metrics:
        parts += ["<h2>Landmarks (mm)</h2>", _table(["", "mean", "std", "median", "p95", "max", "n"],
                                                     _stats_rows({"TRE": metrics["tre_mm"],
                                                                  "initial": metrics["initial_mm"]}))]
        axis = metrics["per_axis_mm"]
        parts.append(_table(["signed error after", "x", "y", "z"],
                            [[k, *(axis[a][k] for a in "xyz")] for k in ("mean", "std", "mae")]))
    outside = metrics.get("landmarks", {}).get("outside_dvf")
    if outside:
        parts.append(f"<p>{len(outside)} landmark(s) outside the DVF grid, excluded from the statistics:</p>")
        parts.append(_table(["landmark", "fixed x", "fixed y", "fixed z"],
                            [[o["number"], *o["fixed_mm"]] for o in outside]))
    jac = metrics["jacobian"]
    parts += [f"<h2>Plausibility ({html.escape(jac['region'])})</h2>",
              _table(["folding %", "SDlogJ", "min J", "max J", "mean J", "voxels"],
                     [[jac["folding_percent"], jac["sdlogj"], jac["min"], jac["max"], jac["mean"], jac["n_voxels"]]])]
    if "inverse_consistency_mm" in metrics:
        parts += ["<h3>Inverse consistency (mm)</h3>", _table(["", "mean", "std", "median", "p95", "max", "n"],
                                                            _stats_rows({"|u + v(x+u)|":
                                                                         metrics["inverse_consistency_mm"]}))]
    if "dvf_error_mm" in metrics:
        e = metrics["dvf_error_mm"]
        rows = _stats_rows({"all": e})
        for c in e.get("classes", []):
            lo, hi = c["truth_mm"]
            rows += _stats_rows({f"|u_true| in [{lo:g}, {'inf' if hi is None else f'{hi:g}'})": c})
        parts += ["<h2>End-point error against the true DVF (mm)</h2>",
                  _table(["", "mean", "std", "median", "p95", "max", "n"], rows)]
    parts.append("<h2>Figures</h2>")
    for name in figures:
        parts.append(f"<figure><img src=\"{html.escape(prefix + name)}\" alt=\"{html.escape(name)}\">"
                     f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>")
    settings = {"sampling": metrics.get("sampling"), "classes_mm": metrics.get("classes_mm"),
                **(metrics.get("inputs") or {})}
    parts += ["<h2>Settings</h2>", _table(["setting", "value"], [[k, v] for k, v in settings.items() if v is not None]),
              (f"<p>Per-landmark values: <a href=\"{prefix}landmarks.csv\">landmarks.csv</a>; " if "tre_mm" in metrics
               else "<p>") + f"All numbers: <a href=\"{prefix}metrics.json\">metrics.json</a>.</p>"]
    return _page(title or f"Registration evaluation: {metrics.get('pair', '')}", parts)


# ------------------------------------------------------------------ compare
def load_result(folder) -> dict:
    """{pair: {"metrics": dict, "landmarks": columns}} of one method's evaluate output(s).

    ``folder`` is one ``regnet evaluate`` output, or a folder of them (one sub-folder per pair).
    """
    from regnet.evaluate import read_landmarks_csv

    folder = Path(folder)
    if (folder / "metrics.json").is_file():
        found = [folder]
    else:
        found = sorted(p.parent for p in folder.glob("*/metrics.json")) if folder.is_dir() else []
    if not found:
        raise RegNetError(f"{folder}: no metrics.json in it or its sub-folders; give folders written by "
                          "regnet evaluate.")
    out = {}
    for d in found:
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        pair = d.name if d != folder else metrics.get("pair") or d.name
        if not (d / "landmarks.csv").is_file():
            raise RegNetError(f"{d}: evaluated without landmarks (no landmarks.csv); compare needs TRE per "
                              "landmark, so evaluate with --fixed-landmarks and --moving-landmarks.")
        out[pair] = {"metrics": metrics, "landmarks": read_landmarks_csv(d / "landmarks.csv")}
    return out


def compare(folders, names=None) -> dict:
    """Pooled TRE per method over the shared pairs/landmarks and Wilcoxon p-values per pair of methods."""
    from regnet.evaluate import summary, wilcoxon_p

    folders = [Path(f) for f in folders]
    names = list(names) if names else [f.name or str(f) for f in folders]
    if len(names) != len(folders):
        raise RegNetError(f"--names gives {len(names)} names for {len(folders)} folders.")
    if len(set(names)) != len(names):
        raise RegNetError(f"Method names repeat ({names}); name them with --names.")
    if len(folders) < 2:
        raise RegNetError("compare needs at least two evaluation folders (one per method).")
    results = {n: load_result(f) for n, f in zip(names, folders)}
    pairs = sorted(results[names[0]])
    for n in names[1:]:
        if sorted(results[n]) != pairs:
            raise RegNetError(f"Methods were evaluated on different pairs: {names[0]} has {pairs}, "
                              f"{n} has {sorted(results[n])}. Compare results on the same pairs.")
    pooled = {n: [] for n in names}
    initial, per_pair = [], {n: {} for n in names}
    for pair in pairs:
        ref = results[names[0]][pair]["landmarks"]
        fixed_ref = np.stack([ref[f"fixed_{a}"] for a in "xyz"], axis=1)
        common = np.ones(len(fixed_ref), bool)
        for n in names:
            lm = results[n][pair]["landmarks"]
            fixed = np.stack([lm[f"fixed_{a}"] for a in "xyz"], axis=1)
            if fixed.shape != fixed_ref.shape or not np.allclose(fixed, fixed_ref, atol=1e-3):
                raise RegNetError(f"Pair {pair!r}: {n} and {names[0]} were evaluated on different landmarks; "
                                  "compare only results of the same landmark files.")
            common &= lm["inside_dvf"] > 0
        for n in names:
            tre = results[n][pair]["landmarks"]["tre_mm"][common]
            pooled[n].append(tre)
            per_pair[n][pair] = float(tre.mean()) if len(tre) else None
        initial.append(ref["initial_mm"][common])
    pooled = {n: np.concatenate(v) for n, v in pooled.items()}
    initial = np.concatenate(initial)
    table = [{"method": "initial", **summary(initial), "per_pair": {}}]
    for n in names:
        jac = [results[n][p]["metrics"].get("jacobian", {}) for p in pairs]
        table.append({"method": n, **summary(pooled[n]), "per_pair": per_pair[n],
                      "folding_percent": float(np.mean([j.get("folding_percent", np.nan) for j in jac])),
                      "sdlogj": float(np.mean([j.get("sdlogj", np.nan) for j in jac]))})
    pvalues = [{"a": a, "b": b, "p": wilcoxon_p(pooled[a], pooled[b]), "n": len(pooled[a])}
               for i, a in enumerate(names) for b in names[i + 1:]]
    return {"tool": "regnet compare", "version": __version__, "pairs": pairs, "methods": names,
            "folders": [str(f) for f in folders], "table": table, "wilcoxon": pvalues,
            "test": "scipy.stats.wilcoxon, two-sided, zero_method='zsplit', paired by landmark",
            "_pooled": {"initial": initial, **pooled}}


def compare_html(result: dict, figures: list[str]) -> str:
    pairs = result["pairs"]
    header = ["method", "mean", "std", "median", "p95", "max", "n", "folding %", "SDlogJ"]
    rows = [[r["method"], r["mean"], r["std"], r["median"], r["p95"], r["max"], r["n"],
             r.get("folding_percent"), r.get("sdlogj")] for r in result["table"]]
    parts = [(f"<p>{len(result['methods'])} methods on {len(pairs)} pair(s); TRE in mm pooled over the landmarks "
             "evaluated by every method.</p>"), _table(header, rows)]
    if len(pairs) > 1:
        parts += ["<h2>Mean TRE per pair (mm)</h2>",
                  _table(["method", *pairs], [[r["method"], *(r["per_pair"].get(p) for p in pairs)]
                                              for r in result["table"][1:]])]
    parts += [f"<h2>Wilcoxon signed-rank p-values</h2><p>{html.escape(result['test'])}.</p>",
              _table(["method A", "method B", "p", "n"],
                     [[w["a"], w["b"], w["p"], w["n"]] for w in result["wilcoxon"]])]
    for name in figures:
        parts.append(f"<figure><img src=\"{html.escape(name)}\" alt=\"{html.escape(name)}\"></figure>")
    parts += ["<h2>Inputs</h2>", _table(["method", "folder"], list(zip(result["methods"], result["folders"]))),
              "<p>All numbers: <a href=\"compare.json\">compare.json</a>, <a href=\"compare.csv\">compare.csv</a>.</p>"]
    return _page("Comparison of registration methods", parts)


def add_arguments(p) -> None:
    p.add_argument("folders", nargs="+", type=Path, help="regnet evaluate outputs, one per method "
                   "(or one folder per method holding one sub-folder per pair)")
    p.add_argument("--names", nargs="+", default=None, help="method names (default: folder names)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced as a whole if it holds a result)")


def compare_command(args) -> int:
    result = compare(args.folders, args.names)
    pooled = result.pop("_pooled")
    with result_folder(args.out) as tmp:
        figures = [tre_boxplot_png(pooled, tmp / "tre_boxplot.png", "TRE per method (pooled over pairs)")]
        with open(tmp / "compare.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["method", "mean", "std", "median", "p95", "max", "n", "folding_percent", "sdlogj",
                             *[f"mean_{p}" for p in result["pairs"]]])
            for r in result["table"]:
                writer.writerow([r["method"], r["mean"], r["std"], r["median"], r["p95"], r["max"], r["n"],
                                 r.get("folding_percent", ""), r.get("sdlogj", ""),
                                 *[r["per_pair"].get(p, "") for p in result["pairs"]]])
        (tmp / "report.html").write_text(compare_html(result, figures), encoding="utf-8")
        (tmp / "compare.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for r in result["table"]:
        print(f"{r['method']:>20}: TRE {r['mean']:.2f} +- {r['std']:.2f} mm (median {r['median']:.2f}, n {r['n']})")
    for w in result["wilcoxon"]:
        print(f"  Wilcoxon {w['a']} vs {w['b']}: p = {w['p']:.3g}")
    print(f"  {args.out / 'report.html'}")
    return 0
