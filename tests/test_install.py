"""A normal (non-editable) install works: the wheel carries the deform_exp presets and data layouts,
and `regnet generate` runs on the phantom from a folder outside the source tree.

Marked ``install``: it builds the wheel and installs it into a fresh virtual environment (about
10 s, most of it the generation run), so it is slower than the unit tests. Nothing is downloaded:
the wheel is built with the setuptools/wheel already installed (``--no-build-isolation``) and
installed with ``--no-deps``; the heavy dependencies (NumPy, SimpleITK, ...) are borrowed from
this interpreter's site-packages through a ``.pth`` line. A plain path line does not run the
``.pth`` files inside that folder, so this environment's editable install of regnet (which points
at the source tree) stays invisible: the test checks that regnet is imported from the new venv.
"""
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.install

SOURCE = Path(__file__).resolve().parents[1]
SETTINGS = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                     "TrainingTypeImList": [0], "TrainingDSmoothList": [0, 4],
                     "ValidationCNList": [], "ValidationDSmoothList": []}],
    "stage": 2,
    "OutputFolder": "./out",
}


def _run(command, **kwargs):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, encoding="utf-8", **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict:
    """No path or settings leaking in from the test run (PYTHONPATH would expose the source tree)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "REGNET_SETTINGS_PATH", "REGNET_LAYOUTS_PATH", "VIRTUAL_ENV")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_wheel_installs_and_generates_outside_the_source_tree(tmp_path):
    env = _clean_env()
    # 1. build the wheel from a copy of the sources (no stale build/ folder can leak into it)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(SOURCE / name, src / name)
    shutil.copytree(SOURCE / "regnet", src / "regnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist", src], env=env)
    wheel = next((tmp_path / "dist").glob("regnet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"regnet/presets/deform_exp/_base.toml", "regnet/presets/deform_exp/3D_max15_D14_K.toml",
            "regnet/data_layouts/Phantom.toml", "regnet/data_layouts/DIR-Lab_4D.toml"} <= names

    # 2. a fresh venv with the wheel alone; the dependencies come from this interpreter's site-packages
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], env=env)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    (purelib / "_outer_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    # 3. from a folder outside the source tree: regnet, its presets and layouts all come from the venv
    work = tmp_path / "work"
    work.mkdir()
    where = json.loads(_run([python, "-c", "import json, regnet, regnet.layouts as l, regnet.settings as s; "
                                           "print(json.dumps([regnet.__file__, str(s.preset_dirs()[-1]), "
                                           "str(l.layout_dirs()[-1])]))"], cwd=work, env=env))
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), (path, venv)

    (work / "settings.json").write_text(json.dumps(SETTINGS))
    output = _run([venv / "bin" / "regnet", "generate", "settings.json"], cwd=work, env=env)
    assert "2 pairs" in output
    stage = work / "out" / "3D_max15_D14_K" / "Phantom" / "T00" / "1" / "stage2"
    for pair in ("Dsmooth0/respiratory_motion_D0", "Dsmooth4/single_frequency_D0"):
        for name in ("DeformedImage_Clean_Sponge_Noise.mha", "DeformedDVF.mha", "Jac.mha", "done.json"):
            assert (stage / pair / name).is_file(), f"{pair}/{name}"
        assert json.loads((stage / pair / "done.json").read_text())["max_magnitude_mm"] > 0.1
    assert json.loads((work / "out" / "settings.json").read_text())["deform_exps"]["3D_max15_D14_K"]["MaxDeform"] == 15
