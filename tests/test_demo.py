"""The demo end to end (issue 12), which is also the proof that a tiny network learns (issue 9).

One quick demo run (phantom pairs, a narrow unet1 at stage 4, QUICK_STEPS steps) is checked
against numbers computed here independently of the code under test: the zero-prediction error
from the validation DVF files, the held-out DVF error with NumPy, and the landmark TRE with
SimpleITK's own DisplacementFieldTransform.
"""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("keras")

from regnet.demo import DEMO_SETTINGS, QUICK_STEPS, run_demo  # noqa: E402
from regnet.landmarks import read_landmarks  # noqa: E402

#: Conservative bounds on after / before for the quick run (measured: see README "The demo").
LEARNS_BELOW = 0.7          # validation end-point error / zero-prediction error (issue 9)
HELD_OUT_DVF_BELOW = 0.9    # held-out DVF error in the lung, after / before
HELD_OUT_TRE_BELOW = 0.9    # held-out landmark TRE, after / before


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    record = run_demo(out, steps=QUICK_STEPS, progress=False)
    return out, record


def array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def test_the_tiny_network_learns_on_phantom_pairs(demo):
    out, _ = demo
    # what val_epe would be for u = 0: mean |u| over the validation volumes padded to 2R+1 per axis
    side = 2 * DEMO_SETTINGS["R"] + 1
    dvfs = sorted((out / "pairs").glob("*/Phantom/T00/9/stage4/Dsmooth*/*/DeformedDVF.mha"))
    assert len(dvfs) == len(DEMO_SETTINGS["DataExpDict"][0]["ValidationDSmoothList"])
    zero = sum(np.linalg.norm(array(p), axis=-1).sum() for p in dvfs) / (len(dvfs) * side ** 3)
    with open(out / "training" / "history.csv", newline="") as fh:
        val = [float(row["val_epe"]) for row in csv.DictReader(fh) if row["val_epe"]]
    assert len(val) == QUICK_STEPS // DEMO_SETTINGS["NetworkTraining"]["ValidationEvery"]
    assert min(val) < LEARNS_BELOW * zero, (val, zero)


def test_the_held_out_pair_is_registered_better_than_not_at_all(demo):
    out, record = demo
    held, reg = out / "held_out", out / "registration"
    truth, found = array(held / "truth.mha"), array(reg / "dvf.mha")
    lung = array(held / "fixed_lung.mha") > 0
    before = np.linalg.norm(truth, axis=-1)[lung].mean()
    after = np.linalg.norm(found - truth, axis=-1)[lung].mean()
    assert after < HELD_OUT_DVF_BELOW * before, (after, before)
    np.testing.assert_allclose(record["dvf_error_mm"]["lung"]["after"], after, rtol=1e-4)

    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(reg / "dvf.mha")),
                                                          sitk.sitkVectorFloat64))
    fixed, moving = read_landmarks(held / "fixed_landmarks.txt"), read_landmarks(held / "moving_landmarks.txt")
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in fixed])
    tre, initial = np.linalg.norm(mapped - moving, axis=1).mean(), np.linalg.norm(fixed - moving, axis=1).mean()
    assert tre < HELD_OUT_TRE_BELOW * initial, (tre, initial)
    np.testing.assert_allclose(record["tre_mm"]["after"], tre, rtol=1e-3)


def test_the_true_field_carries_the_fixed_landmarks_onto_the_moving_ones(demo):
    """The held-out truth (``field.invert`` of the phantom's exhale field, SimpleITK's inversion)
    checked against the landmarks, which the phantom solves point by point (q + u_exhale(q) = p,
    SciPy fixed-point iteration): SimpleITK maps each fixed point p to p + truth(p), which must land
    on its moving partner q."""
    out, _ = demo
    held = out / "held_out"
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(held / "truth.mha")),
                                                          sitk.sitkVectorFloat64))
    fixed, moving = read_landmarks(held / "fixed_landmarks.txt"), read_landmarks(held / "moving_landmarks.txt")
    error = np.linalg.norm(np.array([transform.TransformPoint(tuple(p)) for p in fixed]) - moving, axis=1)
    assert error.max() < 0.05 < np.linalg.norm(fixed - moving, axis=1).mean(), error.max()


def test_the_report_and_its_files_are_there(demo):
    out, record = demo
    page = (out / "report.html").read_text()
    for name in ("training_curve.png", "evaluation/overlay.png", "evaluation/jacobian.png",
                 "training/checkpoint/model.keras", "tensorboard --logdir"):
        assert name in page
    for name in ("training_curve.png", "evaluation/overlay.png", "evaluation/metrics.json", "training/model.keras",
                 "registration/dvf.mha", "demo.json"):
        assert (out / name).is_file(), name
    assert any((out / "training" / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((out / "demo.json").read_text())["steps"] == QUICK_STEPS


def test_running_it_again_resumes_instead_of_starting_over(demo):
    out, _ = demo
    done = sorted((out / "pairs").rglob("done.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    record = run_demo(out, steps=QUICK_STEPS, progress=False)
    assert record["steps"] == QUICK_STEPS and record["steps_this_run"] == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps  # no pair made again
