"""Atomic file writing: a killed job leaves either the old file or the complete new one."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

_MULTI_SUFFIXES = (".nii.gz", ".mrk.json", ".tar.gz")


def full_suffix(path: Path) -> str:
    """The extension that decides the file format ('.nii.gz', not '.gz')."""
    name = path.name.lower()
    for suffix in _MULTI_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same format suffix); rename over ``path`` on success.

    Writers that pick the format from the extension (SimpleITK, NumPy) keep working, and the
    rename is atomic on POSIX, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
