"""regnet evaluate-synthetic: end-point error of a registration against the generator's true DVFs.

The phantom at stage 4 (50 x 41 x 45 voxels, four pairs: one per deform method) generates in a
few seconds. Expected numbers come from the pair files read with SimpleITK and NumPy here.
"""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.cli import main
from regnet.evaluate_synthetic import BIN_MM, Pooled, evaluate_synthetic
from regnet.generate import run
from regnet.register import FunctionStageModel
from regnet.settings import load_settings
from regnet.store import PairStore, pair_list

SETTINGS = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [],
                     "ValidationCNList": [1], "ValidationTypeImList": [0],
                     # respiratory_motion, single_frequency, mixed_frequency, zero; 5 repeated (scored once)
                     "ValidationDSmoothList": [0, 5, 9, 13, 5]}],
    "stage": 4,
}
METHODS = {0: "respiratory_motion", 5: "single_frequency", 9: "mixed_frequency", 13: "zero"}
#: 3D_max15_D14_K: ClassBalanced [1.5, 4, 15] -> classes [0, 1.5), [1.5, 4), [4, inf) of |u_true|.
EDGES = [(0.0, 1.5), (1.5, 4.0), (4.0, np.inf)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    settings = load_settings({**SETTINGS, "OutputFolder": str(root)})
    run(settings, progress=False)
    return settings


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def truth_and_masks(settings, pair):
    """(u_true (z, y, x, 3), torso mask, lung mask) read straight from the pair's files."""
    store = PairStore(settings)
    files = store.files(pair)
    u = read(files.dvf).astype(np.float64)
    return u, read(files.fixed_torso) > 0, read(store.pair_dir(pair) / "DeformedLung.mha") > 0


def unique_pairs(settings):
    return list(dict.fromkeys(pair_list(settings, "Validation")))


def test_zero_field_error_is_the_mean_true_displacement(data):
    metrics, _ = evaluate_synthetic(data, "none", progress=False)
    pairs = unique_pairs(data)
    assert [r["dsmooth"] for r in metrics["pairs"]] == [0, 5, 9, 13]  # the repeated 5 is scored once
    pooled = {"torso": [], "lung": []}
    for pair, record in zip(pairs, metrics["pairs"]):
        assert record["method"] == METHODS[pair.dsmooth]
        u, torso, lung = truth_and_masks(data, pair)
        size = np.linalg.norm(u, axis=-1)
        for region, mask in (("torso", torso), ("lung", lung)):
            expected = size[mask]
            pooled[region].append(expected)
            for which in ("after", "before"):  # the zero field's error is |u_true| itself
                got = record[region][which]
                assert got["mean"] == pytest.approx(expected.mean(), rel=1e-5, abs=1e-6)
                assert got["max"] == pytest.approx(expected.max(), rel=1e-5, abs=1e-6)
                assert got["n"] == mask.sum()
                for (lo, hi), c in zip(EDGES, got["classes"]):
                    assert c["n"] == np.sum((expected >= lo) & (expected < hi))
        assert record["jacobian"]["folding_percent"] == 0.0 and record["jacobian"]["sdlogj"] == pytest.approx(0.0)
    zero = metrics["methods"]["zero"]["torso"]["after"]
    assert zero["mean"] == 0.0 and zero["max"] == 0.0
    assert metrics["methods"]["respiratory_motion"]["torso"]["after"]["mean"] > 1.0  # a field that moves
    for region in ("torso", "lung"):
        everything = np.concatenate(pooled[region])
        got = metrics["overall"][region]["after"]
        assert got["n"] == everything.size
        assert got["mean"] == pytest.approx(everything.mean(), rel=1e-6)
        assert got["std"] == pytest.approx(everything.std(), rel=1e-4)
        assert got["max"] == pytest.approx(everything.max(), rel=1e-6)
        assert got["median"] == pytest.approx(np.median(everything), abs=BIN_MM)
        assert got["p95"] == pytest.approx(np.percentile(everything, 95), abs=BIN_MM)
        for (lo, hi), c in zip(EDGES, got["classes"]):
            sel = everything[(everything >= lo) & (everything < hi)]
            assert c["n"] == sel.size and (c["mean"] or 0.0) == pytest.approx(sel.mean() if sel.size else 0.0,
                                                                             rel=1e-6)


class TruthOracle:
    """A stage model that answers every pair with its TRUE field (along the grid axes, as networks
    predict): it recognises the pair by the fixed channel of its one whole-volume tile."""

    def __init__(self, settings):
        store = PairStore(settings)
        self.candidates = []
        for pair in unique_pairs(settings):
            files = store.files(pair)
            fixed = read(files.fixed).astype(np.float32)
            u = sitk.ReadImage(str(files.dvf))
            # along the grid's index axes by hand, D^T u (what the network answers), not with the code's to_grid_axes
            direction = np.array(u.GetDirection()).reshape(3, 3)
            self.candidates.append((fixed, (sitk.GetArrayFromImage(u) @ direction).astype(np.float32)))
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        seen = x[0, ..., 1]
        body = seen > -2048  # register() sets the background to the pad value
        errors = [np.abs(f[body] - seen[body]).mean() if f.shape == seen.shape else np.inf
                  for f, _ in self.candidates]
        return self.candidates[int(np.argmin(errors))][1][None]


def test_a_model_that_predicts_the_truth_scores_zero(data):
    oracle = TruthOracle(data)
    # R = Ry = 0, unit 1: a full-image "network" whose single tile is the whole stage-4 grid
    model = FunctionStageModel(stage=4, radius_in=0, radius_out=0, function=oracle, unit=1, size_base=1,
                               name="truth oracle")
    metrics, _ = evaluate_synthetic(data, [model], progress=False)
    assert oracle.calls == 4  # one tile per pair
    store = PairStore(data)
    for pair, record in zip(unique_pairs(data), metrics["pairs"]):
        u, torso, lung = truth_and_masks(data, pair)
        # the stage-4 grid is the pair's own grid: no resampling, so only float32 round-off remains
        for region, mask in (("torso", torso), ("lung", lung)):
            assert record[region]["after"]["max"] < 1e-4, (record["pair"], region)
            assert record[region]["before"]["mean"] == pytest.approx(np.linalg.norm(u, axis=-1)[mask].mean(),
                                                                     rel=1e-5, abs=1e-6)
        jac = read(store.pair_dir(pair) / "Jac.mha")  # the generator's Jacobian of the true field
        assert record["jacobian"]["folding_percent"] == pytest.approx(100.0 * np.mean(jac[torso] <= 0), abs=1e-9)
        assert record["jacobian"]["min"] == pytest.approx(float(jac[torso].min()), abs=1e-3)
    assert metrics["overall"]["torso"]["after"]["max"] < 1e-4
    assert metrics["overall"]["torso"]["before"]["mean"] > 1.0
    assert metrics["models"][0]["name"] == "truth oracle"


def test_command_writes_metrics_pairs_and_report(data, tmp_path):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({**SETTINGS, "OutputFolder": data.OutputFolder}))
    out = tmp_path / "eval"
    assert main(["evaluate-synthetic", str(settings_file), "--model", "none", "--out", str(out), "--limit", "2",
                 "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in metrics["pairs"]] == ["respiratory_motion", "single_frequency"]
    assert sorted(metrics["methods"]) == ["respiratory_motion", "single_frequency"]
    with open(out / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["dsmooth"] for r in rows] == ["0", "5"]
    u, torso, _ = truth_and_masks(data, unique_pairs(data)[1])
    assert float(rows[1]["torso_epe_mean"]) == pytest.approx(np.linalg.norm(u, axis=-1)[torso].mean(), rel=1e-5)
    page = (out / "report.html").read_text()
    assert "epe_boxplot.png" in page and "single_frequency" in page and "zero field" in page
    assert (out / "epe_boxplot.png").stat().st_size > 1000
    # a second run replaces the result whole
    assert main(["evaluate-synthetic", str(settings_file), "--model", "none", "--out", str(out), "--limit", "1",
                 "--quiet"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["pairs"]) == 1


def test_pooled_quantiles_are_exact_to_one_bin():
    values = np.random.default_rng(3).gamma(2.0, 1.5, size=50_000)
    pooled = Pooled()
    pooled.add(values[:20_000])
    pooled.add(values[20_000:])
    s = pooled.summary()
    assert s["n"] == values.size and s["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(values.std(), rel=1e-9) and s["max"] == values.max()
    for q, key in ((50, "median"), (95, "p95")):
        assert abs(s[key] - np.percentile(values, q)) <= BIN_MM


def test_bad_input_is_named(data, tmp_path):
    with pytest.raises(RegNetError, match=r"4 of 4 pairs are not generated under .*regnet generate SETTINGS"):
        evaluate_synthetic(load_settings({**SETTINGS, "OutputFolder": str(tmp_path / "empty")}), "none",
                           progress=False)
    with pytest.raises(RegNetError, match="do not combine it with model files"):
        evaluate_synthetic(data, ["none", "a.keras"], progress=False)
    with pytest.raises(RegNetError, match="no such model file"):
        evaluate_synthetic(data, [str(tmp_path / "missing.keras")], progress=False)
    with pytest.raises(RegNetError, match="list no Training pairs"):
        evaluate_synthetic(data, "none", mode="Training", progress=False)
    with pytest.raises(RegNetError, match="--mode 'Test'"):
        evaluate_synthetic(data, "none", mode="Test", progress=False)
    with pytest.raises(RegNetError, match="--limit 0"):
        evaluate_synthetic(data, "none", limit=0, progress=False)


def test_bad_out_messages(data, tmp_path, capsys):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({**SETTINGS, "OutputFolder": data.OutputFolder}))
    (tmp_path / "file").write_text("x")
    main(["evaluate-synthetic", str(settings_file), "--model", "none", "--quiet", "--out", str(tmp_path / "file")])
    assert "is a file; give a folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    main(["evaluate-synthetic", str(settings_file), "--model", "none", "--quiet", "--limit", "1",
          "--out", str(tmp_path / "busy")])
    assert "refusing to replace it" in capsys.readouterr().err


def test_a_pair_without_lungs_reports_no_lung_numbers_and_a_missing_mask_is_named(data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data.OutputFolder, root)
    settings = load_settings({**SETTINGS, "OutputFolder": str(root)})
    store = PairStore(settings)
    first = unique_pairs(settings)[0]
    lung_file = store.pair_dir(first) / "DeformedLung.mha"
    lung = sitk.ReadImage(str(lung_file))
    empty = sitk.Image(lung.GetSize(), lung.GetPixelID())
    empty.CopyInformation(lung)
    sitk.WriteImage(empty, str(lung_file))
    metrics, _ = evaluate_synthetic(settings, "none", limit=2, progress=False)
    assert metrics["pairs"][0]["lung"] is None and metrics["pairs"][0]["torso"]["after"]["n"] > 0
    _, _, lung_second = truth_and_masks(settings, unique_pairs(settings)[1])
    assert metrics["overall"]["lung"]["after"]["n"] == lung_second.sum()  # the lung-less pair adds none
    store.files(first).fixed_torso.unlink()
    (store.pair_dir(first) / "Jac.mha").unlink()
    with pytest.raises(RegNetError, match=r"respiratory_motion_D0: DeformedTorso.mha, Jac.mha missing although the "
                                          r"pair is marked done; regenerate it"):
        evaluate_synthetic(settings, "none", limit=1, progress=False)
