"""The regnet command, run as a user would."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from regnet.io import write_dvf


def run(*args):
    return subprocess.run([sys.executable, "-m", "regnet", *map(str, args)], capture_output=True, text=True)


def test_info_json_matches_simpleitk(tmp_path, rotated_image):
    path = tmp_path / "im.nii.gz"
    sitk.WriteImage(rotated_image, str(path))
    out = run("info", path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["size"] == list(rotated_image.GetSize())
    np.testing.assert_allclose(info["direction"], rotated_image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(info["spacing"], rotated_image.GetSpacing(), atol=1e-6)
    array = sitk.GetArrayFromImage(rotated_image)
    assert info["min"] == pytest.approx(array.min()) and info["max"] == pytest.approx(array.max())


def test_info_on_a_dvf_reports_displacement(tmp_path, rotated_image):
    dvf = np.zeros((*sitk.GetArrayFromImage(rotated_image).shape, 3), np.float32)
    dvf[2, 3, 4] = [3.0, 4.0, 0.0]
    write_dvf(dvf, tmp_path / "dvf.mha", reference=rotated_image)
    out = run("info", tmp_path / "dvf.mha")
    assert out.returncode == 0, out.stderr
    assert "|u| max     5.000 mm" in out.stdout


def test_errors_are_one_clear_line(tmp_path):
    out = run("info", tmp_path / "missing.mha")
    assert out.returncode == 1
    assert out.stderr.strip() == f"regnet info: error: {tmp_path / 'missing.mha'}: no such file or folder."


def test_generate_reports_a_bad_settings_file_in_one_line(tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text('stage = 1\n[NetworkTraining]\nBatchSize = "15"\n'
                        '[[DataExpDict]]\ndata = "Phantom"\ndeform_exp = "3D_max7_D14_K"\n')
    out = run("generate", settings)
    assert out.returncode == 1
    assert out.stderr.strip() == "regnet generate: error: NetworkTraining.BatchSize must be a positive int, got '15'"
