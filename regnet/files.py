"""Atomic file writing: a killed job leaves either the old file or the complete new one."""
from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

_MULTI_SUFFIXES = (".nii.gz", ".mrk.json", ".tar.gz")
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)")


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
    tmp = path.with_name(f".{stem}.tmp-{_HOST}-{os.getpid()}{suffix}")
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


def remove_stale_temporaries(root) -> int:
    """Delete temporaries left by killed writers on this host (their process is gone).

    Temporaries of live processes, and of other hosts sharing the folder, are left alone."""
    removed = 0
    for path in Path(root).rglob(".*.tmp-*"):
        match = _TEMP.match(path.name)
        if not match or match["host"] != _HOST:
            continue
        try:
            os.kill(int(match["pid"]), 0)
            continue  # still running
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed += 1
        except PermissionError:
            continue
    return removed
