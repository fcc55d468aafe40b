"""Register every synthetic pair of a settings file and score the DVF against the known truth.

``regnet evaluate-synthetic SETTINGS --model M ... --out DIR``: the pairs of one mode
(Validation by default) are read from the pair store (:mod:`regnet.store`; moving = the base
image, fixed = the deformed one, the true DVF on the fixed grid, pull convention), registered
with :func:`regnet.register.register` (no affine step: a synthetic pair has none), and the
end-point error is measured inside the fixed torso and lung masks, per magnitude class of the
true field, per deform method and overall, next to the error of a zero field ("before": the
mean |u_true|). ``--model none`` runs the zero field alone, so the "before" numbers exist
without a trained network.

Why pooled numbers come from histograms: a validation set at stage 1 holds ~10^7 torso voxels
per pair; keeping every voxel's error for the median and p95 over all pairs would cost GBs, while
mean, std, max and n are exact from running sums and the quantiles are exact to one bin
(:data:`BIN_MM`). Per-pair numbers are exact (:func:`regnet.evaluate.dvf_error`).
"""
from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError, __version__
from regnet.deform.field import magnitude_class_edges
from regnet.settings import Settings, load_settings
from regnet.store import MODES, PairId, PairStore, pair_list

CLI_HELP = ("register every synthetic pair of a settings file and report the end-point error against the true "
            "DVF (torso, lung; per method and magnitude class) -> metrics.json, pairs.csv, report.html")
REGIONS = ("torso", "lung")
#: Bin width (mm) of the histograms behind the pooled median and p95: they are exact to one bin.
BIN_MM = 0.01
#: Errors beyond this (mm) share the last bin (MaxDeform is at most 100 mm).
TOP_MM = 250.0
#: Voxels per pair kept (evenly spaced) for the box plot only.
BOX_SAMPLES = 20000


# ------------------------------------------------------------------ pooled statistics
@dataclass
class Pooled:
    """Voxel errors of many pairs: exact mean, std, max and n; median and p95 to one bin."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    max: float = -np.inf
    counts: np.ndarray = field(default_factory=lambda: np.zeros(int(round(TOP_MM / BIN_MM)), np.int64))

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64).ravel()
        if v.size == 0:
            return
        self.n += v.size
        self.total += float(v.sum())
        self.total_sq += float(np.dot(v, v))
        self.max = max(self.max, float(v.max()))
        bins = np.minimum((v / BIN_MM).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(bins, minlength=len(self.counts))

    def quantile(self, q: float) -> float:
        """Linear inside the bin that holds the q-th value (exact to BIN_MM)."""
        cum = np.cumsum(self.counts)
        target = q * self.n
        k = int(np.searchsorted(cum, target, side="left"))
        below = cum[k - 1] if k else 0
        inside = (target - below) / self.counts[k] if self.counts[k] else 0.0
        return float(min((k + inside) * BIN_MM, self.max))

    def summary(self) -> dict:
        if self.n == 0:
            return {"mean": None, "std": None, "median": None, "p95": None, "max": None, "n": 0}
        mean = self.total / self.n
        return {"mean": mean, "std": float(np.sqrt(max(self.total_sq / self.n - mean * mean, 0.0))),
                "median": self.quantile(0.5), "p95": self.quantile(0.95), "max": self.max, "n": self.n}


class PooledClasses:
    """One :class:`Pooled` overall and one per magnitude class of the true field (as dvf_error)."""

    def __init__(self, classes):
        self.edges = magnitude_class_edges(classes)
        self.all = Pooled()
        self.per_class = [Pooled() for _ in self.edges]

    def add(self, epe: np.ndarray, size: np.ndarray) -> None:
        self.all.add(epe)
        for (lo, hi), pooled in zip(self.edges, self.per_class):
            pooled.add(epe[(size >= lo) & (size < hi)])

    def summary(self) -> dict:
        return {**self.all.summary(), "classes": [
            {"truth_mm": [lo, None if np.isinf(hi) else hi], **p.summary()}
            for (lo, hi), p in zip(self.edges, self.per_class)]}


class Group:
    """Everything pooled over the pairs of one deform method (or of all pairs)."""

    def __init__(self, classes):
        self.pairs = 0
        self.errors = {(r, w): PooledClasses(classes) for r in REGIONS for w in ("after", "before")}
        self.folding, self.sdlogj = [], []

    def summary(self) -> dict:
        out = {"pairs": self.pairs}
        for region in REGIONS:
            out[region] = {w: self.errors[region, w].summary() for w in ("after", "before")}
        out["jacobian"] = {"folding_percent_mean": float(np.mean(self.folding)) if self.folding else None,
                           "folding_percent_max": float(np.max(self.folding)) if self.folding else None,
                           "sdlogj_mean": float(np.mean(self.sdlogj)) if self.sdlogj else None}
        return out


# ------------------------------------------------------------------ inputs
def load_models(models) -> list:
    """Stage models from ``.keras`` paths (or StageModel objects); ``none`` = the zero field."""
    from regnet.register import load_stage_model

    if models is None:
        return []
    if isinstance(models, (str, Path)) or not isinstance(models, (list, tuple)):
        models = [models]
    if any(isinstance(m, str) and m.lower() == "none" for m in models):
        if len(models) > 1:
            raise RegNetError("--model none means the zero field (the 'before' numbers alone); do not combine it "
                              "with model files.")
        return []
    return [load_stage_model(m) if isinstance(m, (str, Path)) else m for m in models]


def select_pairs(settings: Settings, mode: str = "Validation", limit: int | None = None) -> list[PairId]:
    """The settings' pairs of ``mode`` in RegNet's order, each once (repeat lists weight sampling, not scoring)."""
    if mode not in MODES:
        raise RegNetError(f"--mode {mode!r}: choose one of {', '.join(MODES)}.")
    if limit is not None and limit < 1:
        raise RegNetError(f"--limit {limit}: give a positive number of pairs.")
    pairs = list(dict.fromkeys(pair_list(settings, mode)))
    if not pairs:
        raise RegNetError(f"The settings list no {mode} pairs (DataExpDict[*].{mode}CNList is empty); "
                          f"add cases or choose the other --mode.")
    return pairs[:limit] if limit else pairs


def check_generated(store: PairStore, pairs: list[PairId]) -> None:
    missing = [p for p in pairs if not store.is_done(p)]
    if missing:
        shown = "; ".join(str(store.pair_dir(p)) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise RegNetError(f"{len(missing)} of {len(pairs)} pairs are not generated under {store.root}: {shown}{more}. "
                          "Run `regnet generate SETTINGS` first (same settings file).")


def pair_name(store: PairStore, pair: PairId) -> str:
    return store.pair_dir(pair).relative_to(store.root).as_posix()


# ------------------------------------------------------------------ one pair
def _region_masks(store: PairStore, pair: PairId, truth: sitk.Image) -> dict:
    """{region: boolean mask on the fixed grid, or None when the mask is empty}."""
    from regnet.evaluate import mask_array

    files = store.files(pair)
    paths = {"torso": files.fixed_torso, "lung": store.pair_dir(pair) / "DeformedLung.mha"}
    masks = {}
    for region, path in paths.items():
        try:
            masks[region] = mask_array(path, truth)
        except RegNetError as err:
            if "is empty" not in str(err) or region == "torso":
                raise
            masks[region] = None  # a data set without lungs: reported as null, not an error
    return masks


def evaluate_pair(store: PairStore, pair: PairId, models: list, classes, groups: list[Group],
                  max_patch: int | None = None, box: list | None = None) -> tuple[dict, dict]:
    """Register one pair, score it, and add its voxels to ``groups``. Returns (record, registration info)."""
    from regnet.evaluate import error_summary, jacobian_stats, load_dvf
    from regnet.geometry import require_same_geometry
    from regnet.register import register

    t0 = time.perf_counter()
    files = store.files(pair)
    needed = [files.moving, files.moving_torso, files.fixed, files.fixed_torso, files.dvf,
              store.pair_dir(pair) / "DeformedLung.mha", store.pair_dir(pair) / "Jac.mha"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise RegNetError(f"{store.pair_dir(pair)}: {', '.join(missing)} missing although the pair is marked done; "
                          "regenerate it (delete its done.json and run `regnet generate SETTINGS`).")
    truth = load_dvf(files.dvf, f"true DVF {files.dvf}")
    result = register(files.fixed, files.moving, models, fixed_mask=files.fixed_torso,
                      moving_mask=files.moving_torso, affine="none", max_patch=max_patch, progress=False)
    pred = result.dvf
    require_same_geometry(pred, truth, "registered and true DVFs")
    masks = _region_masks(store, pair, truth)
    t = sitk.GetArrayViewFromImage(truth)
    p = sitk.GetArrayViewFromImage(pred)
    method, number = store.method_of(pair)
    record = {"pair": pair_name(store, pair), "data": pair.image.data, "case": pair.image.cn,
              "type_im": pair.image.type_im, "stage": pair.image.stage, "dsmooth": pair.dsmooth,
              "method": method, "deform_number": number}
    for region in REGIONS:
        mask = masks[region]
        if mask is None:
            record[region] = None
            continue
        tt = t[mask].astype(np.float64)
        size = np.sqrt(np.einsum("ij,ij->i", tt, tt))
        d = p[mask].astype(np.float64) - tt
        epe = np.sqrt(np.einsum("ij,ij->i", d, d))
        # u = 0 ("before") misses every voxel by |u_true|: one pass gives both
        record[region] = {"after": error_summary(epe, size, classes), "before": error_summary(size, size, classes)}
        for group in groups:
            group.errors[region, "after"].add(epe, size)
            group.errors[region, "before"].add(size, size)
        if region == "torso" and box is not None:
            step = max(1, epe.size // BOX_SAMPLES)
            box.append((method, epe[::step], size[::step]))
    jac = jacobian_stats(pred, masks["torso"])
    record["jacobian"] = jac
    # the generator wrote the true field's Jacobian beside it (Jac.mha): read, not recomputed
    true_jac = sitk.GetArrayFromImage(sitk.ReadImage(str(store.pair_dir(pair) / "Jac.mha")))
    record["jacobian_true"] = jacobian_stats(truth, masks["torso"], jacobian=true_jac)
    for group in groups:
        group.pairs += 1
        group.folding.append(jac["folding_percent"])
        group.sdlogj.append(jac["sdlogj"])
    record["seconds"] = {**{k: v for k, v in result.seconds.items() if "." not in k},
                         "total": round(time.perf_counter() - t0, 3)}
    return record, result.info


# ------------------------------------------------------------------ the data set
def evaluate_synthetic(settings, models, mode: str = "Validation", limit: int | None = None,
                       max_patch: int | None = None, progress: bool = True) -> tuple[dict, list]:
    """Score ``models`` on the generated pairs of ``settings``: (metrics dict, box-plot samples).

    ``settings``: a Settings object, dict or settings file (its OutputFolder holds the pairs);
    ``models``: stage models or ``.keras`` paths, or ``"none"`` for the zero field.
    """
    settings = settings if isinstance(settings, Settings) else load_settings(settings)
    models = load_models(models)
    pairs = select_pairs(settings, mode, limit)
    store = PairStore(settings)
    check_generated(store, pairs)
    classes = settings.class_balanced()
    overall, per_method = Group(classes), {}
    records, box, info = [], [], None
    iterator = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, unit="pair", desc="evaluate-synthetic")
    for pair in iterator:
        method = store.method_of(pair)[0]
        group = per_method.setdefault(method, Group(classes))
        record, info = evaluate_pair(store, pair, models, classes, [overall, group], max_patch, box)
        records.append(record)
    metrics = {
        "tool": "regnet evaluate-synthetic", "version": __version__, "mode": mode, "data_root": str(store.root),
        "stage": settings.stage, "classes_mm": classes, "models": info["models"] if info else [],
        "model": "zero field (--model none)" if not models else ", ".join(m["name"] for m in info["models"]),
        "pooled": (f"voxels of all pairs pooled; mean, std, max, n exact; median and p95 exact to {BIN_MM} mm "
                   "(histogram)"),
        "regions": {"torso": "DeformedTorso.mha (fixed grid)", "lung": "DeformedLung.mha (fixed grid)"},
        "overall": overall.summary(),
        "methods": {m: g.summary() for m, g in sorted(per_method.items())},
        "pairs": records,
    }
    return metrics, box


# ------------------------------------------------------------------ output
def _mean(stats: dict | None, key: str = "mean"):
    return None if stats is None else stats.get(key)


def pairs_csv(records: list[dict], path: Path) -> None:
    header = ["pair", "data", "case", "type_im", "stage", "dsmooth", "method", "deform_number"]
    for region in REGIONS:
        header += [f"{region}_epe_mean", f"{region}_epe_p95", f"{region}_epe_max", f"{region}_before_mean",
                   f"{region}_voxels"]
    header += ["folding_percent", "sdlogj", "true_folding_percent", "seconds"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in records:
            row = [r[k] for k in header[:8]]
            for region in REGIONS:
                e = r[region]
                row += ["", "", "", "", 0] if e is None else [e["after"]["mean"], e["after"]["p95"], e["after"]["max"],
                                                             e["before"]["mean"], e["after"]["n"]]
            row += [r["jacobian"]["folding_percent"], r["jacobian"]["sdlogj"], r["jacobian_true"]["folding_percent"],
                    r["seconds"]["total"]]
            writer.writerow(row)


def boxplot_png(box: list, path: Path) -> str:
    """End-point error in the torso per deform method (voxels subsampled evenly), after and before."""
    from regnet.report import tre_boxplot_png

    samples = {}
    for method in sorted({m for m, _, _ in box}):
        samples[f"{method} before"] = np.concatenate([s for m, _, s in box if m == method])
        samples[method] = np.concatenate([e for m, e, _ in box if m == method])
    return tre_boxplot_png(samples, path, "end-point error in the torso per deform method (mm)")


def report_html(metrics: dict, figures: list[str]) -> str:
    from regnet.report import _page, _table

    def group_rows(name, g):
        rows = []
        for region in REGIONS:
            a, b = g[region]["after"], g[region]["before"]
            rows.append([name, g["pairs"], region, a["mean"], a["std"], a["median"], a["p95"], a["max"], b["mean"],
                         a["n"], g["jacobian"]["folding_percent_mean"]])
        return rows

    header = ["method", "pairs", "region", "EPE mean", "std", "median", "p95", "max", "before (|u_true|) mean",
              "voxels", "folding % (mean)"]
    rows = group_rows("all", metrics["overall"])
    for m, g in metrics["methods"].items():
        rows += group_rows(m, g)
    parts = [f"<p>Model: {html.escape(metrics['model'])}; {metrics['mode']} pairs of "
             f"{html.escape(metrics['data_root'])} at stage {metrics['stage']}; end-point error |u_pred - u_true| "
             f"in mm on the fixed grid. {metrics['pooled']}.</p>", "<h2>End-point error (mm)</h2>",
             _table(header, rows)]
    class_header = ["method", "region", "|u_true| (mm)", "EPE mean", "p95", "before mean", "voxels"]
    class_rows = []
    for name, g in [("all", metrics["overall"]), *metrics["methods"].items()]:
        for region in REGIONS:
            for a, b in zip(g[region]["after"]["classes"], g[region]["before"]["classes"]):
                lo, hi = a["truth_mm"]
                class_rows.append([name, region, f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'})", a["mean"],
                                   a["p95"], b["mean"], a["n"]])
    parts += ["<h2>Per magnitude class of the true field</h2>", _table(class_header, class_rows)]
    for name in figures:
        parts.append(f"<figure><img src=\"{name}\" alt=\"{name}\"><figcaption>End-point error in the torso per "
                     "deform method, before (zero field) and after registration; voxels subsampled evenly."
                     "</figcaption></figure>")
    pair_rows = [[r["pair"], r["method"], _mean(r["torso"] and r["torso"]["after"]),
                  _mean(r["torso"] and r["torso"]["before"]), _mean(r["lung"] and r["lung"]["after"]),
                  _mean(r["lung"] and r["lung"]["before"]), r["jacobian"]["folding_percent"],
                  r["jacobian_true"]["folding_percent"], r["seconds"]["total"]] for r in metrics["pairs"]]
    parts += ["<h2>Pairs</h2>", _table(["pair", "method", "torso EPE", "torso before", "lung EPE", "lung before",
                                        "folding %", "true folding %", "seconds"], pair_rows),
              "<p>All numbers: <a href=\"metrics.json\">metrics.json</a>, <a href=\"pairs.csv\">pairs.csv</a>.</p>"]
    return _page("Synthetic-pair evaluation", parts)


def write_result(out, metrics: dict, box: list, figures: bool = True) -> Path:
    """metrics.json, pairs.csv, report.html (and the box plot) into ``out``, swapped in whole."""
    from regnet.report import result_folder

    out = Path(out)
    with result_folder(out) as tmp:
        names = [boxplot_png(box, tmp / "epe_boxplot.png")] if figures and box else []
        pairs_csv(metrics["pairs"], tmp / "pairs.csv")
        (tmp / "report.html").write_text(report_html(metrics, names), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------ command line
def add_arguments(p) -> None:
    p.add_argument("settings", type=Path, help="settings file (.json or .toml) whose pairs were generated")
    p.add_argument("--model", nargs="+", required=True, metavar="M",
                   help=".keras model(s), one per stage (settings.json beside each); 'none' = zero field")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced whole if it holds a result)")
    p.add_argument("--mode", choices=MODES, default="Validation", help="which pairs (default Validation)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N pairs only")
    p.add_argument("--max-patch", type=int, default=None, metavar="N",
                   help="largest network input side in voxels (default: from the memory available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def evaluate_synthetic_command(args) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise RegNetError(f"--out {args.out} is a file; give a folder.")
    metrics, box = evaluate_synthetic(args.settings, args.model, args.mode, args.limit, args.max_patch,
                                      progress=not args.quiet)
    out = write_result(args.out, metrics, box)
    for name, g in [("all", metrics["overall"]), *metrics["methods"].items()]:
        t = g["torso"]
        lung = g["lung"]["after"]["mean"]
        print(f"{name:>20} ({g['pairs']} pairs): torso EPE {t['after']['mean']:.3f} mm (before "
              f"{t['before']['mean']:.3f})" + (f", lung {lung:.3f} mm" if lung is not None else "")
              + f", folding {g['jacobian']['folding_percent_mean']:.3f} %")
    print(f"  {out / 'report.html'}")
    return 0
