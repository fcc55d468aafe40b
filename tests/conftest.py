"""Shared fixtures: the real data beside the project (skipped cleanly when absent)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "install: builds the wheel and installs it into a fresh venv (slower, ~10 s; "
                                       "deselect with -m 'not install')")


def run_under_jax(script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python with ``KERAS_BACKEND=jax`` on the CPU, from the repository root
    (skipped without JAX): how the tests show a module runs where TensorFlow is absent."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def shared_file(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data is absent in a plain clone)")
    return path


@pytest.fixture
def rotated_image():
    """A small float image with anisotropic spacing and a non-identity (rotated) direction."""
    angle = np.deg2rad(25.0)
    c, s = np.cos(angle), np.sin(angle)
    rot_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    direction = rot_z @ rot_x
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(12, 14, 16)).astype(np.float32))
    image.SetSpacing((0.8, 1.3, 2.1))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(direction.ravel().tolist())
    return image
