"""The job never keeps stale pairs and names every failure (issue 15 items 1 and 9, raw tracebacks)."""
import errno
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

import regnet.generate as generate
from regnet import RegNetError
from regnet.cli import main
from regnet.generate import GenerateFailed, run
from regnet.settings import load_settings

ONE_PAIR = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                     "TrainingTypeImList": [0], "TrainingDSmoothList": [5],
                     "ValidationCNList": [], "ValidationDSmoothList": []}],
    "stage": 2,
}


def settings_for(out, **extra):
    return load_settings({**ONE_PAIR, "OutputFolder": str(out), **extra})


def test_changed_settings_stop_the_rerun_until_overwrite(tmp_path):
    """Made with MaxDeform 15, re-run with 2: today '0 made, 1 already there' and a 15 mm field."""
    first = run(settings_for(tmp_path), jobs=1, progress=False)
    done = tmp_path / "3D_max15_D14_K/Phantom/T00/1/stage2/Dsmooth5/single_frequency_D1/done.json"
    record = json.loads(done.read_text())["made_from"]
    assert record["parameters"]["deform_exp.MaxDeform"] == 15.0 and record["parameters"]["stage"] == 2
    assert first[0]["max_abs_component_mm"] > 2.0
    changed = settings_for(tmp_path, DeformExp={"3D_max15_D14_K": {"MaxDeform": 2}})
    with pytest.raises(RegNetError, match=r"1 of 1 finished pairs under .* were made from other settings; differing "
                                          r"keys: deform_exp\.MaxDeform \(e\.g\. .*deform_exp\.MaxDeform 15\.0 -> "
                                          r"2\.0\)\. Re-run with --overwrite .* or choose a new OutputFolder"):
        run(changed, jobs=1, progress=False)
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved["deform_exps"]["3D_max15_D14_K"]["MaxDeform"] == 15.0  # not rewritten by the refused run
    again = run(changed, jobs=1, progress=False, overwrite=True)
    assert not again[0]["skipped"]
    assert 0.1 < again[0]["max_abs_component_mm"] <= 2.0 + 1e-4
    dvf = sitk.GetArrayFromImage(sitk.ReadImage(str(done.parent / "DeformedDVF.mha")))
    assert np.abs(dvf).max() == pytest.approx(again[0]["max_abs_component_mm"], abs=1e-5)  # the file, not the record
    assert json.loads((tmp_path / "settings.json").read_text())["deform_exps"]["3D_max15_D14_K"]["MaxDeform"] == 2.0
    assert run(changed, jobs=1, progress=False)[0]["skipped"]  # same settings: resumes as before

    # a done.json from before the record: cannot be shown to match, so it is refused the same way
    legacy = json.loads(done.read_text())
    legacy.pop("made_from")
    done.write_text(json.dumps(legacy))
    with pytest.raises(RegNetError, match=r"done\.json has no 'made_from' record .* --overwrite"):
        run(changed, jobs=1, progress=False)


def ct_like(size=24, spacing=2.0):
    """Body (0 HU) in air with two lung blocks (-850 HU): masks given as files, none computed."""
    array = np.full((size,) * 3, -1000, np.int16)
    array[2:-2, 3:-3, 3:-3] = 0
    lung = np.zeros_like(array, np.uint8)
    lung[5:-5, 6:-6, 5:11] = lung[5:-5, 6:-6, 13:19] = 1
    array[lung > 0] = -850
    images = [sitk.GetImageFromArray(a) for a in (array, lung, (array > -900).astype(np.uint8))]
    for image in images:
        image.SetSpacing((spacing,) * 3)
    return images


def test_one_failing_case_is_named_and_the_others_finish(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "masks").mkdir(parents=True)
    image, lung, torso = ct_like()
    sitk.WriteImage(image, str(data / "good.mha"))
    sitk.WriteImage(lung, str(data / "masks" / "good_lung.mha"))
    sitk.WriteImage(torso, str(data / "masks" / "good_torso.mha"))
    tiny = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 50, (8, 8, 8)).astype(np.int16))
    tiny.SetSpacing((6.0, 6.0, 6.0))  # 42 mm: 512 voxels made into 22^3 at 2 mm; and no air, so no masks
    sitk.WriteImage(tiny, str(data / "bad.mha"))
    settings = {"DataExpDict": [{"data": "Folder", "deform_exp": "3D_max15_D14_K", "TrainingCNList": ["bad", "good"],
                                 "TrainingDSmoothList": [5], "ValidationDSmoothList": []}],
                "stage": 2, "DataFolder": str(data), "OutputFolder": str(tmp_path / "out")}
    (tmp_path / "s.json").write_text(json.dumps(settings))
    with pytest.warns(UserWarning, match=r"bad\.mha: 8x8x8 voxels \(42 x 42 x 42 mm\) are up-sampled 21-fold to "
                                         r"22x22x22 = 0\.01 M voxels of 2 mm at stage 2"):
        assert main(["generate", str(tmp_path / "s.json")]) == 1
    err = capsys.readouterr().err
    assert "1 task(s) failed; 1 pair(s) are done" in err
    assert f"Folder case bad type image [{data / 'bad.mha'}]: This does not look like a CT" in err
    assert "--fallback" not in err and "give the layout lung and torso mask templates" in err
    done = tmp_path / "out/3D_max15_D14_K/Folder/image/good/stage2/Dsmooth5/single_frequency_D1/done.json"
    assert done.is_file()
    with pytest.warns(UserWarning), pytest.raises(GenerateFailed, match=r"Folder case bad") as failed:
        run(load_settings(settings), jobs=1, progress=False)
    assert [r["case"] for r in failed.value.results] == ["good"] and failed.value.results[0]["skipped"]


def test_bad_job_options_are_named_before_any_work(tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({**ONE_PAIR, "OutputFolder": str(tmp_path / "out")}))
    assert main(["generate", str(tmp_path / "s.json"), "--jobs", "0"]) == 1
    assert "--jobs must be a positive number of parallel workers, got 0" in capsys.readouterr().err
    with pytest.raises(RegNetError, match=r"jobs must be a positive number of parallel workers, got -1"):
        run(settings_for(tmp_path / "out"), jobs=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegNetError, match=r"OutputFolder .*file is a file, not a folder"):
        run(settings_for(tmp_path / "file"), jobs=1, progress=False)
    with pytest.raises(RegNetError, match=r"OutputFolder .*file/sub cannot be written"):
        run(settings_for(tmp_path / "file" / "sub"), jobs=1, progress=False)
    phantom_word = {**ONE_PAIR, "DataExpDict": [{**ONE_PAIR["DataExpDict"][0], "TrainingCNList": ["one"]}]}
    with pytest.raises(RegNetError, match=r"Phantom: case 'one' is not a number; phantom cases are seeds"):
        run(load_settings({**phantom_word, "OutputFolder": str(tmp_path / "p")}), jobs=1, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "p").exists()  # nothing written, no settings.json


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_named(tmp_path):
    tmp_path.joinpath("ro").mkdir(mode=0o500)
    with pytest.raises(RegNetError, match=r"OutputFolder .*ro cannot be written"):
        run(settings_for(tmp_path / "ro"), jobs=1, progress=False)


def test_unreachable_dask_scheduler_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(generate, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(RegNetError, match=r"Cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:9' within 1s"):
        run(settings_for(tmp_path), backend="dask", scheduler="tcp://127.0.0.1:9", progress=False)


def test_full_disk_stops_the_job_with_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(generate, "write_dvf", full)
    with pytest.raises(RegNetError, match=r"The disk holding .* is full \(Phantom case 1 type T00 dsmooth 5 "
                                          r"\(single_frequency D1\) \[phantom seed 1\]\); finished pairs are kept"):
        run(settings_for(tmp_path), jobs=1, progress=False)


def test_unwritable_output_folder_is_named_even_as_root(tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(RegNetError, match=r"OutputFolder .*ro cannot be written \(Permission denied\)"):
        run(settings_for(tmp_path / "ro"), jobs=1, progress=False)
