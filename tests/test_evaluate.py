"""Evaluation: TRE, Jacobian statistics, DVF error, Wilcoxon, and the evaluate/compare commands.

Every number is checked against analytic truth or an independent implementation (SimpleITK's
DisplacementFieldTransform, SciPy's map_coordinates and wilcoxon, hand computation).
"""
import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import wilcoxon

from regnet import RegNetError
from regnet.cli import main
from regnet.deform.field import magnitude_class_edges
from regnet.evaluate import (
    dvf_error,
    evaluate,
    inverse_consistency,
    jacobian_stats,
    landmark_errors,
    load_dvf,
    sample_dvf,
    wilcoxon_p,
)
from regnet.geometry import Geometry
from regnet.io import dvf_to_image, write_dvf, write_image
from regnet.landmarks import landmark_distances, read_landmarks, write_landmarks
from regnet.layouts import load_layout
from regnet.phantom import PhantomSpec, make_phantom
from tests.conftest import shared_file
from tests.test_layouts import PUBLISHED_MEAN_MM


def _grid_points(g: Geometry) -> np.ndarray:
    """Physical (x, y, z) of every voxel, shape (z, y, x, 3)."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in g.shape), indexing="ij")
    return g.index_to_physical(np.stack([xx, yy, zz], axis=-1))


def _field(g: Geometry, function) -> sitk.Image:
    return dvf_to_image(function(_grid_points(g)).astype(np.float32), g)


def _smooth_random_dvf(g: Geometry, seed=0, amplitude=4.0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.normal(size=g.shape), 2.0) for _ in range(3)], axis=-1)
    return dvf_to_image((amplitude * u / np.abs(u).max()).astype(np.float32), g)


def _points_inside(g: Geometry, n, seed=1, margin=-0.45) -> np.ndarray:
    """Random physical points whose continuous index lies in [margin, size - 1 - margin]."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(margin, np.asarray(g.size) - 1 - margin, size=(n, 3))
    return g.index_to_physical(idx)


@pytest.fixture
def rotated(rotated_image):
    return Geometry.of(rotated_image)


# ------------------------------------------------------------------ sampling and TRE
def test_trilinear_sampling_agrees_with_simpleitk_transform_point(rotated):
    dvf = _smooth_random_dvf(rotated)
    points = _points_inside(rotated, 200)  # includes points up to half a voxel outside the centres
    transform = sitk.DisplacementFieldTransform(sitk.Cast(dvf, sitk.sitkVectorFloat64))
    mapped_sitk = np.array([transform.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(points + sample_dvf(dvf, points), mapped_sitk, atol=1e-4)
    # and with SciPy's trilinear interpolation (clamped at the border like ITK)
    u = sitk.GetArrayFromImage(dvf)
    idx = rotated.physical_to_index(points)[:, ::-1].T
    scipy_u = np.stack([ndimage.map_coordinates(u[..., c], idx, order=1, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(sample_dvf(dvf, points), scipy_u, atol=1e-5)
    # TRE of landmarks mapped by SimpleITK: the same numbers
    moving = points + np.random.default_rng(2).normal(0, 2.0, points.shape)
    errors = landmark_errors(dvf, points, moving)
    np.testing.assert_allclose(errors.tre, np.linalg.norm(mapped_sitk - moving, axis=1), atol=1e-4)


def test_nearest_sampling_takes_the_voxel_simpleitk_calls_nearest(rotated_image):
    g = Geometry.of(rotated_image)
    dvf = _smooth_random_dvf(g, seed=3)
    points = _points_inside(g, 100, seed=4, margin=0.1)
    expected = [dvf.GetPixel(rotated_image.TransformPhysicalPointToIndex(p.tolist())) for p in points]
    np.testing.assert_allclose(sample_dvf(dvf, points, "nearest"), expected, atol=1e-6)


def test_landmarks_through_a_non_identity_direction(tmp_path, rotated):
    """Index landmarks on a rotated anisotropic grid, an affine field: trilinear TRE is exact."""
    a = np.array([[0.05, -0.02, 0.01], [0.03, 0.04, -0.02], [-0.01, 0.02, 0.06]])
    b = np.array([1.5, -2.0, 0.7])
    dvf = _field(rotated, lambda p: p @ a.T + b)
    idx = np.random.default_rng(5).uniform(1, np.asarray(rotated.size) - 2, size=(30, 3))
    path = tmp_path / "fixed_index.txt"
    path.write_text("index\n30\n" + "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in idx))
    fixed = read_landmarks(path, rotated)
    np.testing.assert_allclose(fixed, [rotated_image_point(rotated, i) for i in idx], atol=1e-6)
    moving = fixed + fixed @ a.T + b
    assert landmark_errors(dvf, fixed, moving).tre.max() < 1e-3
    # RegNet's rule (index = round((p - origin) / spacing), direction ignored) lands elsewhere
    regnet_index = np.round((fixed - rotated.origin) / rotated.spacing).astype(int)
    inside = np.all((regnet_index >= 0) & (regnet_index < rotated.size), axis=1)
    u = sitk.GetArrayViewFromImage(dvf)
    r = regnet_index[inside]
    wrong = np.linalg.norm(fixed[inside] + u[r[:, 2], r[:, 1], r[:, 0]] - moving[inside], axis=1)
    assert inside.sum() >= 10 and wrong.mean() > 0.1  # 100x the trilinear bound above


def rotated_image_point(g: Geometry, index):
    image = g.apply_to(sitk.Image(list(g.size), sitk.sitkUInt8))
    return image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])


def test_zero_dvf_gives_raw_distances_and_the_published_dirlab_means():
    root = shared_file("landmarks", "dirlab4dct")
    layout = load_layout("DIR-Lab_4D", root=root)
    means = []
    for cn in layout.cases():
        g = layout.geometry(cn)
        t00, t50 = layout.read_landmarks(cn, "T00", g), layout.read_landmarks(cn, 5, g)
        extent = (np.asarray(g.size) - 1) * np.asarray(g.spacing)
        coarse = Geometry(tuple(int(n) for n in np.ceil(extent / 10.0) + 2), (10.0, 10.0, 10.0),
                          tuple(np.asarray(g.origin) - 5.0))  # a zero field needs no fine grid
        zero = dvf_to_image(np.zeros(coarse.shape + (3,), np.float32), coarse)
        for sampling in ("linear", "nearest"):
            errors = landmark_errors(zero, t00, t50, sampling)
            np.testing.assert_allclose(errors.tre, landmark_distances(t00, t50), atol=1e-9)
        means.append(errors.tre.mean())
    np.testing.assert_allclose(means, PUBLISHED_MEAN_MM, atol=0.01)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(seed=3, spacing=3.0))


def test_the_phantoms_own_exhale_field_maps_its_landmarks(phantom):
    g = phantom["geometry"]
    dvf = dvf_to_image(phantom["exhale_dvf"], g)
    # fixed = exhale (T50, where the DVF lives), moving = inhale (T00)
    metrics, _, _ = evaluate(dvf, phantom["exhale_landmarks"], phantom["landmarks"], mask=phantom["exhale_lung"],
                                  truth=dvf, classes=[2, 7])
    assert metrics["tre_mm"]["n"] == len(phantom["landmarks"]) > 20
    assert metrics["tre_mm"]["max"] < 0.1
    assert metrics["initial_mm"]["mean"] > 2.0
    assert metrics["dvf_error_mm"]["max"] == 0.0
    assert metrics["jacobian"]["folding_percent"] == 0.0


# ------------------------------------------------------------------ Jacobian
@pytest.mark.parametrize("a", [0.5, -0.3, -1.4])
def test_jacobian_of_a_linear_stretch_on_a_rotated_anisotropic_grid(rotated, a):
    stats = jacobian_stats(_field(rotated, lambda p: np.stack([a * p[..., 0], 0 * p[..., 1], 0 * p[..., 2]], -1)))
    assert stats["min"] == pytest.approx(1 + a, abs=1e-4) and stats["max"] == pytest.approx(1 + a, abs=1e-4)
    assert stats["folding_percent"] == (100.0 if 1 + a <= 0 else 0.0)
    assert stats["sdlogj"] == pytest.approx(0.0, abs=1e-4)  # constant J (clipped or not): no spread


def test_jacobian_of_a_rotation_is_one_on_a_rotated_anisotropic_grid(rotated):
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)],
                                                                  [0, np.sin(0.2), np.cos(0.2)]])
    centre = rotated.index_to_physical((np.asarray(rotated.size) - 1) / 2)
    stats = jacobian_stats(_field(rotated, lambda p: (p - centre) @ (rot - np.eye(3)).T))
    assert stats["min"] == pytest.approx(1.0, abs=1e-4) and stats["max"] == pytest.approx(1.0, abs=1e-4)


def test_sdlogj_clips_like_learn2reg_inside_the_mask():
    """u_x = b x^2 gives J = 1 + 2 b x exactly (central differences); negative J clip to 1e-9."""
    g = Geometry((40, 6, 5), (1.5, 2.0, 2.5), (-33.3, 4.0, -1.0))
    b = 0.02
    dvf = _field(g, lambda p: np.stack([b * p[..., 0] ** 2, 0 * p[..., 0], 0 * p[..., 0]], -1))
    mask = np.zeros(g.shape, np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1  # one-sided differences at the borders are not exact
    x = _grid_points(g)[..., 0][mask > 0]
    j = 1 + 2 * b * x
    assert (j < 0).any() and (j > 0).any()
    stats = jacobian_stats(dvf, mask)
    assert stats["sdlogj"] == pytest.approx(np.std(np.log(np.clip(j, 1e-9, 1e9))), rel=1e-4)
    assert stats["folding_percent"] == pytest.approx(100 * np.mean(j <= 0))
    assert stats["min"] == pytest.approx(j.min(), abs=1e-4)


def test_inverse_consistency_of_an_exact_inverse_and_of_an_offset_one():
    g = Geometry((20, 18, 16), (2.0, 2.0, 2.5), (0.0, 0.0, 0.0))
    centre = g.index_to_physical((np.asarray(g.size) - 1) / 2)
    a = 0.1
    forward = _field(g, lambda p: a * (p - centre))
    backward = _field(g, lambda p: -a / (1 + a) * (p - centre))  # y + v(y) = x exactly
    assert inverse_consistency(forward, backward)["max"] < 1e-4
    offset = np.array([0.3, -0.4, 0.0])
    shifted = _field(g, lambda p: -a / (1 + a) * (p - centre) + offset)
    stats = inverse_consistency(forward, shifted)
    assert stats["mean"] == pytest.approx(0.5, abs=1e-4) and stats["max"] == pytest.approx(0.5, abs=1e-4)


# ------------------------------------------------------------------ DVF error
def test_dvf_error_per_magnitude_class_by_hand():
    g = Geometry((10, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    truth = np.zeros(g.shape + (3,), np.float32)
    truth[..., 0] = np.arange(10, dtype=np.float32)  # |u| = x index: 0..9 mm
    error = np.zeros_like(truth)
    error[..., 1] = 0.5
    error[:, :, 8:, 2] = 1.2  # |e| = 1.3 where |u| >= 8
    mask = np.ones(g.shape, np.uint8)
    mask[0] = 0
    pred = truth + error
    out = dvf_error(dvf_to_image(pred, g), dvf_to_image(truth, g), g.apply_to(sitk.GetImageFromArray(mask)), [2, 7])
    n_row = 2 * 4  # voxels per x value inside the mask
    assert out["n"] == 10 * n_row
    assert out["max"] == pytest.approx(1.3, abs=1e-6)
    assert out["mean"] == pytest.approx((8 * 0.5 + 2 * 1.3) / 10, abs=1e-6)
    low, high = out["classes"]  # RegNet's [2, 7]: |u| < 2 and |u| >= 2 (7 = MaxDeform, the top)
    assert (low["truth_mm"], high["truth_mm"]) == ([0, 2], [2, None])
    assert (low["n"], high["n"]) == (2 * n_row, 8 * n_row)
    assert high["mean"] == pytest.approx((6 * 0.5 + 2 * 1.3) / 8, abs=1e-6)
    # arrays work the same
    assert dvf_error(pred, truth, mask, [2, 7]) == out
    assert magnitude_class_edges([1.5, 8, 20]) == [(0, 1.5), (1.5, 8), (8, float("inf"))]


# ------------------------------------------------------------------ Wilcoxon
def test_wilcoxon_p_by_hand_and_against_scipy():
    # differences 1..5, all positive: exact two-sided p = 2 / 2^5
    assert wilcoxon_p([2, 4, 6, 8, 10], [1, 2, 3, 4, 5]) == pytest.approx(0.0625)
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 1.0, 60)
    b = a + rng.normal(0.2, 0.5, 60)
    b[:5] = a[:5]  # ties at zero: split as RegNet's zero_method='zsplit'
    assert wilcoxon_p(a, b) == pytest.approx(wilcoxon(a, b, zero_method="zsplit").pvalue)
    assert wilcoxon_p(a, a) == 1.0


# ------------------------------------------------------------------ bad input
def test_bad_input_gets_clear_errors(tmp_path, rotated):
    dvf = _smooth_random_dvf(rotated)
    points = _points_inside(rotated, 5, margin=1.0)
    with pytest.raises(RegNetError, match="has 5 points but moving landmarks has 4"):
        landmark_errors(dvf, points, points[:4])
    scalar = rotated.apply_to(sitk.GetImageFromArray(np.zeros(rotated.shape, np.float32)))
    write_image(scalar, tmp_path / "scalar.mha")
    with pytest.raises(RegNetError, match="a DVF needs 3 components per voxel, found 1"):
        load_dvf(tmp_path / "scalar.mha")
    with pytest.raises(RegNetError, match="a DVF needs 3 components per voxel, found 1"):
        load_dvf(scalar)
    bad = sitk.GetArrayFromImage(dvf)
    bad[3, 4, 5, 1] = np.nan
    write_dvf(bad, tmp_path / "nan.mha", reference=rotated)
    with pytest.raises(RegNetError, match="contains 1 NaN or infinite values"):
        load_dvf(tmp_path / "nan.mha")
    far = points.copy()
    far[1] += 1000.0
    far[3] -= 1000.0
    message = r"2 of 5 fixed landmarks lie outside the DVF grid: #2 at .*; #4 at .*--outside exclude"
    with pytest.raises(RegNetError, match=message):
        landmark_errors(dvf, far, points)
    metrics, errors, _ = evaluate(dvf, far, points, outside="exclude")
    assert [o["number"] for o in metrics["landmarks"]["outside_dvf"]] == [2, 4]
    assert metrics["tre_mm"]["n"] == 3 and list(errors.inside) == [True, False, True, False, True]
    with pytest.raises(RegNetError, match="mask is empty"):
        jacobian_stats(dvf, np.zeros(rotated.shape, np.uint8))
    with pytest.raises(RegNetError, match="must be positive and increasing"):
        magnitude_class_edges([7, 2])


# ------------------------------------------------------------------ command line
def _tiny_case(folder):
    """Blob images 24x22x20 at 2 mm, a translation DVF (1 voxel in x) and CSV landmarks."""
    g = Geometry((24, 22, 20), (2.0, 2.0, 2.0), (-20.0, -10.0, 5.0))
    p = _grid_points(g)
    centre = g.index_to_physical([12, 11, 10])
    fixed = 1000 * np.exp(-np.sum((p - centre) ** 2, -1) / 60.0) - 500
    shift = np.array([2.0, 0.0, 0.0])
    moving = 1000 * np.exp(-np.sum((p - centre - shift) ** 2, -1) / 60.0) - 500
    write_image(g.apply_to(sitk.GetImageFromArray(fixed.astype(np.float32))), folder / "fixed.mha")
    write_image(g.apply_to(sitk.GetImageFromArray(moving.astype(np.float32))), folder / "moving.mha")
    mask = np.zeros(g.shape, np.uint8)
    mask[5:15, 5:17, 5:19] = 1
    write_image(g.apply_to(sitk.GetImageFromArray(mask)), folder / "mask.mha")
    write_dvf(np.broadcast_to(shift.astype(np.float32), g.shape + (3,)).copy(), folder / "dvf.mha", reference=g)
    fixed_pts = _points_inside(g, 12, seed=7, margin=2.0)
    write_landmarks(fixed_pts, folder / "fixed.csv")
    write_landmarks(fixed_pts + shift + np.random.default_rng(8).normal(0, 0.5, fixed_pts.shape), folder / "moving.csv")
    return g


def test_cli_evaluate_and_compare_end_to_end(tmp_path, capsys):
    _tiny_case(tmp_path)
    common = ["--dvf", tmp_path / "dvf.mha", "--fixed-landmarks", tmp_path / "fixed.csv",
              "--moving-landmarks", tmp_path / "moving.csv", "--fixed", tmp_path / "fixed.mha",
              "--moving", tmp_path / "moving.mha", "--mask", tmp_path / "mask.mha", "--truth", tmp_path / "dvf.mha"]
    out_a, out_b = tmp_path / "linear", tmp_path / "nearest"
    assert main(["evaluate", *map(str, common), "--classes", "1,3", "--out", str(out_a)]) == 0
    printed = capsys.readouterr().out  # the DVF is its own truth: error 0, printed for the user too
    assert "DVF end-point error against --truth 0.00 +- 0.00 mm (median 0.00, p95 0.00," in printed
    assert "voxels in --mask)" in printed
    assert main(["evaluate", *map(str, common), "--sampling", "nearest", "--no-figures", "--out", str(out_b)]) == 0
    metrics = json.loads((out_a / "metrics.json").read_text())
    for key in ("tre_mm", "initial_mm", "per_axis_mm", "jacobian", "dvf_error_mm"):
        assert key in metrics
    assert set(metrics["tre_mm"]) == {"mean", "std", "median", "p95", "max", "n"}
    fixed = read_landmarks(tmp_path / "fixed.csv")
    moving = read_landmarks(tmp_path / "moving.csv")
    expected = np.linalg.norm(fixed + [2.0, 0, 0] - moving, axis=1)  # a translation: exact
    assert metrics["tre_mm"]["mean"] == pytest.approx(expected.mean(), abs=1e-5)
    assert metrics["initial_mm"]["mean"] == pytest.approx(landmark_distances(fixed, moving).mean(), abs=1e-5)
    assert metrics["jacobian"]["folding_percent"] == 0.0 and metrics["jacobian"]["sdlogj"] == pytest.approx(0, abs=1e-6)
    assert metrics["dvf_error_mm"]["max"] == 0.0 and len(metrics["dvf_error_mm"]["classes"]) == 2
    with open(out_a / "landmarks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and float(rows[0]["tre_mm"]) == pytest.approx(expected[0], abs=1e-5)
    assert float(rows[0]["mapped_x"]) == pytest.approx(fixed[0, 0] + 2.0, abs=1e-5)
    page = (out_a / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"overlay.png", "checkerboard.png", "dvf_magnitude.png", "jacobian.png", "deformed_grid.png",
            "tre_boxplot.png", "tre_vs_initial.png"} <= set(images)
    for name in images:
        assert (out_a / name).stat().st_size > 5000
    # overwrite: the old result is replaced whole (a stale file does not survive)
    (out_a / "stale.png").write_bytes(b"x")
    assert main(["evaluate", *map(str, common), "--no-figures", "--out", str(out_a)]) == 0
    assert not (out_a / "stale.png").exists() and not (out_a / "overlay.png").exists()
    assert (out_a / "report.html").exists() and (out_a / "metrics.json").exists()
    assert not list(tmp_path.glob(".linear.*"))  # no temporaries left
    # compare the two samplings
    assert main(["compare", str(out_a), str(out_b), "--out", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    tre = {name: np.array([float(r["tre_mm"]) for r in csv.DictReader((d / "landmarks.csv").read_text().splitlines())])
           for name, d in (("linear", out_a), ("nearest", out_b))}
    expected = wilcoxon(tre["linear"], tre["nearest"], zero_method="zsplit").pvalue
    assert result["wilcoxon"][0]["p"] == pytest.approx(expected)
    assert [r["method"] for r in result["table"]] == ["initial", "linear", "nearest"]
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert all((tmp_path / "cmp" / n).is_file() for n in re.findall(r'<img src="([^"]+)"', page))
    capsys.readouterr()


def test_cli_refuses_to_replace_a_foreign_folder_and_explains_index_landmarks(tmp_path, capsys):
    _tiny_case(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    args = ["evaluate", "--dvf", tmp_path / "dvf.mha", "--fixed-landmarks", tmp_path / "fixed.csv",
            "--moving-landmarks", tmp_path / "moving.csv"]
    assert main([*map(str, args), "--out", str(tmp_path / "mine")]) == 1
    assert "is not an earlier regnet evaluate/compare result" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    (tmp_path / "idx.txt").write_text("10 10 10\n")
    assert main(["evaluate", "--dvf", str(tmp_path / "dvf.mha"), "--fixed-landmarks", str(tmp_path / "idx.txt"),
                 "--moving-landmarks", str(tmp_path / "idx.txt"), "--out", str(tmp_path / "o")]) == 1
    assert "Pass --moving IMAGE or --layout NAME --case N" in capsys.readouterr().err


def test_cli_dirlab_index_files_with_a_layout(tmp_path, capsys):
    root = shared_file("landmarks", "dirlab4dct")
    g = load_layout("DIR-Lab_4D").geometry(1)
    extent = (np.asarray(g.size) - 1) * np.asarray(g.spacing)
    coarse = Geometry(tuple(int(n) for n in np.ceil(extent / 8.0) + 2), (8.0, 8.0, 8.0),
                      tuple(float(v) - 4.0 for v in g.origin))
    write_dvf(np.zeros(coarse.shape + (3,), np.float32), tmp_path / "zero.mha", reference=coarse)
    assert main(["evaluate", "--dvf", str(tmp_path / "zero.mha"),
                 "--fixed-landmarks", str(root / "Case1_300_T00_xyz.txt"),
                 "--moving-landmarks", str(root / "Case1_300_T50_xyz.txt"), "--layout", "DIR-Lab_4D", "--case", "1",
                 "--no-figures", "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["initial_mm"]["mean"] == pytest.approx(PUBLISHED_MEAN_MM[0], abs=0.01)
    assert metrics["tre_mm"]["mean"] == pytest.approx(metrics["initial_mm"]["mean"], abs=1e-9)
    assert metrics["tre_mm"]["n"] == 300
    capsys.readouterr()


def test_cli_evaluate_with_the_true_dvf_and_no_landmarks(tmp_path, capsys):
    _tiny_case(tmp_path)
    dvf = sitk.ReadImage(str(tmp_path / "dvf.mha"))
    half = sitk.GetArrayFromImage(dvf) * 0.5  # finds half the truth: error |u| / 2 everywhere
    found = sitk.GetImageFromArray(half, isVector=True)
    found.CopyInformation(dvf)
    sitk.WriteImage(found, str(tmp_path / "half.mha"))
    out = tmp_path / "synthetic"
    assert main(["evaluate", "--dvf", str(tmp_path / "half.mha"), "--truth", str(tmp_path / "dvf.mha"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(no landmarks)" in printed and "TRE" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert "tre_mm" not in metrics and not (out / "landmarks.csv").exists()
    expected = np.linalg.norm(half, axis=-1).mean()
    assert metrics["dvf_error_mm"]["mean"] == pytest.approx(expected, rel=1e-5)
    page = (out / "report.html").read_text()
    assert "tre_boxplot.png" not in page and "Landmarks (mm)" not in page
    # neither landmarks nor truth: nothing to measure against; one landmark file alone: both or neither
    assert main(["evaluate", "--dvf", str(tmp_path / "half.mha"), "--out", str(tmp_path / "x")]) != 0
    assert "give --fixed-landmarks and --moving-landmarks, or --truth" in capsys.readouterr().err
    assert main(["evaluate", "--dvf", str(tmp_path / "half.mha"), "--truth", str(tmp_path / "dvf.mha"),
                 "--fixed-landmarks", str(tmp_path / "fixed.csv"), "--out", str(tmp_path / "y")]) != 0
    assert "both --fixed-landmarks and --moving-landmarks, or neither" in capsys.readouterr().err
    # compare needs landmarks and says so
    assert main(["compare", str(out), str(out), "--names", "a", "b", "--out", str(tmp_path / "cmp")]) != 0
    assert "evaluated without landmarks" in capsys.readouterr().err
