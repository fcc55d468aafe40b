"""Seconds and peak memory of `regnet evaluate` on DIR-Lab-size grids (prints figures, asserts nothing).

A smooth analytic DVF on the grid of DIR-Lab case 1 (256x256x94) and case 8 (512x512x128), the
300 DIR-Lab landmarks of that case when ../shared/data has them (else 300 random points), a
box mask, and the full command: TRE, Jacobian, DVF error against a truth, figures, report.html.

    python bench/evaluate.py [--cases 1 8] [--no-figures]
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regnet.cli import main
from regnet.io import write_dvf, write_image
from regnet.landmarks import write_landmarks
from regnet.layouts import load_layout

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "landmarks" / "dirlab4dct"


def smooth_field(g) -> np.ndarray:
    nz, ny, nx = g.shape
    z = np.linspace(0, np.pi, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(0, np.pi, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(0, np.pi, nx, dtype=np.float32)[None, None, :]
    u = np.empty(g.shape + (3,), np.float32)
    u[..., 0] = 3.0 * np.sin(x) * np.sin(y) * np.sin(2 * z)
    u[..., 1] = 2.0 * np.sin(2 * x) * np.sin(y) * np.sin(z)
    u[..., 2] = -8.0 * np.sin(x) * np.sin(y) * np.sin(z)
    return u


def run_case(cn: int, folder: Path, figures: bool) -> None:
    layout = load_layout("DIR-Lab_4D", root=SHARED)
    g = layout.geometry(cn)
    t0 = time.perf_counter()
    u = smooth_field(g)
    write_dvf(u, folder / "dvf.mha", reference=g, compress=False)
    write_dvf(u * 1.05, folder / "truth.mha", reference=g, compress=False)
    mask = np.zeros(g.shape, np.uint8)
    nz, ny, nx = g.shape
    mask[nz // 6:-nz // 6, ny // 5:-ny // 5, nx // 6:-nx // 6] = 1
    write_image(g.apply_to(sitk.GetImageFromArray(mask)), folder / "mask.mha", compress=False)
    if (SHARED / f"Case{cn}_300_T00_xyz.txt").is_file():
        fixed, moving = SHARED / f"Case{cn}_300_T00_xyz.txt", SHARED / f"Case{cn}_300_T50_xyz.txt"
        extra = ["--layout", "DIR-Lab_4D", "--case", str(cn)]
    else:
        rng = np.random.default_rng(cn)
        pts = g.index_to_physical(rng.uniform(10, np.asarray(g.size) - 10, size=(300, 3)))
        write_landmarks(pts, folder / "f.csv")
        write_landmarks(pts + rng.normal(0, 3, pts.shape), folder / "m.csv")
        fixed, moving, extra = folder / "f.csv", folder / "m.csv", []
    prepare = time.perf_counter() - t0
    del u, mask
    args = ["evaluate", "--dvf", folder / "dvf.mha", "--fixed-landmarks", fixed, "--moving-landmarks", moving,
            "--mask", folder / "mask.mha", "--truth", folder / "truth.mha", *extra, "--out", folder / "out"]
    if not figures:
        args.append("--no-figures")
    t0 = time.perf_counter()
    assert main([str(a) for a in args]) == 0
    total = time.perf_counter() - t0
    import json

    seconds = json.loads((folder / "out" / "metrics.json").read_text())["seconds"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"case {cn} {g.size}: evaluate {total:.1f} s (stages {seconds}); inputs made in {prepare:.1f} s; "
          f"peak RSS so far {peak:.2f} GiB")


def main_bench() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()
    for cn in args.cases:
        with tempfile.TemporaryDirectory() as tmp:
            run_case(cn, Path(tmp), not args.no_figures)


if __name__ == "__main__":
    main_bench()
