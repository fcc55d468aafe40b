"""The offline job: files, resume after SIGKILL, and identical output for any jobs/backend."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from regnet.generate import run
from regnet.settings import load_settings

SETTINGS = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                     "TrainingTypeImList": [0], "TrainingDSmoothList": [0, 5, 10],
                     "ValidationCNList": [], "ValidationDSmoothList": []}],
    "stage": 2,
}


def settings_for(out, **extra):
    return load_settings({**SETTINGS, "OutputFolder": str(out), **extra})


def tree(root: Path) -> dict:
    """Every file's bytes; settings.json names its own output folder, so that key is dropped."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    settings = json.loads(files.pop("settings.json"))
    settings.pop("OutputFolder")
    return {**files, "settings.json": settings}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    results = run(settings_for(out), jobs=1, progress=False)
    return out, results


def test_layout_of_outputs_and_statistics(reference):
    out, results = reference
    assert [r["method"] for r in results] == ["respiratory_motion", "single_frequency", "mixed_frequency"]
    pair = out / "3D_max15_D14_K" / "Phantom" / "T00" / "1" / "stage2"
    for name in ("Original/Image.mha", "Original/Lung.mha", "Dsmooth0/DNext5/NextIm.mha",
                 "Dsmooth5/single_frequency_D1/DeformedImage_Clean_Sponge_Noise.mha",
                 "Dsmooth5/single_frequency_D1/DeformedDVF.mha", "Dsmooth10/mixed_frequency_D1/Jac.mha"):
        assert (pair / name).is_file(), name
    saved = json.loads((out / "settings.json").read_text())
    assert saved["stage"] == 2 and saved["deform_exps"]["3D_max15_D14_K"]["MaxDeform"] == 15
    image = sitk.ReadImage(str(pair / "Original" / "Image.mha"))
    assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    for r in results:
        assert r["max_abs_component_mm"] <= (18.0 if r["method"] == "respiratory_motion" else 15.0) + 1e-4
        assert r["folded_fraction_in_torso"] < 0.01


def test_written_pair_is_reproduced_by_simpleitk(tmp_path):
    """With the 'Clean' chain, DeformedImage must be SimpleITK's own warp of the base image by the
    written DVF (DisplacementFieldTransform, cubic B-spline)."""
    settings = settings_for(tmp_path, DeformExp={"3D_max15_D14_K": {"DeformedImExt": ["Clean"]}})
    run(settings, jobs=1, progress=False)
    stage = tmp_path / "3D_max15_D14_K" / "Phantom" / "T00" / "1" / "stage2"
    for base, pair in (("Original/Image.mha", "Dsmooth0/respiratory_motion_D0"),
                       ("Dsmooth0/DNext5/NextIm.mha", "Dsmooth5/single_frequency_D1")):
        moving = sitk.ReadImage(str(stage / base))
        dvf = sitk.ReadImage(str(stage / pair / "DeformedDVF.mha"))
        transform = sitk.DisplacementFieldTransform(sitk.Cast(dvf, sitk.sitkVectorFloat64))
        expected = sitk.Resample(moving, dvf, transform, sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)
        written = sitk.ReadImage(str(stage / pair / "DeformedImage_Clean.mha"))
        assert written.GetDirection() == moving.GetDirection()
        diff = np.abs(sitk.GetArrayFromImage(written) - sitk.GetArrayFromImage(expected))
        assert diff.max() <= 0.5 + 1e-3, pair                    # int16 rounding only
        assert np.abs(sitk.GetArrayFromImage(dvf)).max() > 1.0


def test_resume_skips_and_two_workers_give_identical_files(reference, tmp_path):
    out, _ = reference
    again = run(settings_for(out), jobs=1, progress=False)
    assert all(r["skipped"] for r in again)
    run(settings_for(tmp_path), jobs=2, progress=False)
    assert tree(tmp_path) == tree(out)


def test_dask_local_cluster_gives_identical_files(reference, tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is a test extra")
    out, _ = reference
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        run(settings_for(tmp_path), backend="dask", scheduler=cluster.scheduler_address, progress=False)
    assert tree(tmp_path) == tree(out)


def test_sigkill_then_rerun_gives_the_uninterrupted_files(reference, tmp_path):
    out, _ = reference
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({**SETTINGS, "OutputFolder": str(tmp_path / "out")}))
    command = [sys.executable, "-m", "regnet", "generate", str(settings_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").rglob("done.json")):
        time.sleep(0.05)
    # kill at once: the next pair is under way (a pair of this phantom takes ~0.1 s since issue 14)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((tmp_path / "out").rglob("done.json")))
    assert finished < 3, "the job finished before it could be killed"
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == tree(out)


def test_generator_runs_on_mr_without_lungs(tmp_path, monkeypatch):
    """Nothing lung-only: an MR volume through a user's own layout file (modality MR: Otsu body
    mask, no lung), single- and mixed-frequency fields, float intensities kept."""
    from tests.conftest import shared_file

    source = shared_file("mr", "nilearn_mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    data = tmp_path / "data"
    data.mkdir()
    (data / "brain.nii.gz").symlink_to(source)
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    (layouts / "MyMR.toml").write_text('name = "MyMR"\nroot = "{DataFolder}"\nmodality = "MR"\n'
                                       'types = ["t1"]\ncases = "auto"\nimage = "{cn}.nii.gz"\n'
                                       'default_pixel_value = 0\n')
    monkeypatch.setenv("REGNET_LAYOUTS_PATH", str(layouts))
    settings = load_settings({"DataExpDict": [{"data": "MyMR", "deform_exp": "3D_max15_D14_K",
                                               "TrainingCNList": ["brain"], "TrainingDSmoothList": [5, 9],
                                               "ValidationDSmoothList": []}],
                              "stage": 2, "DataFolder": str(data), "OutputFolder": str(tmp_path / "out")})
    results = run(settings, jobs=1, progress=False)
    assert [r["method"] for r in results] == ["single_frequency", "mixed_frequency"]
    for r in results:
        assert 0.1 < r["max_abs_component_mm"] <= 15.0 + 1e-4
    stage = tmp_path / "out" / "3D_max15_D14_K" / "MyMR" / "t1" / "brain" / "stage2"
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(stage / "Original" / "Lung.mha"))).any()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(stage / "Original" / "Torso.mha"))).mean() > 0.1
