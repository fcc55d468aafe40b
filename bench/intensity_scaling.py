"""Raw HU (RegNet) against a fixed HU window as the network's input scaling, on a tiny regression.

Synthetic pairs: a smooth random HU volume (padded with -2048 like RegNet's masked images) and a
smooth random DVF (max 2-5 mm); fixed = moving(x + u(x)). A narrow unet1 is trained for a few hundred
steps on each setting and the validation end-point error (mm) is printed next to the zero-prediction
error. CPU, about a minute per setting:

    python bench/intensity_scaling.py --steps 300
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import regnet.networks as nets  # noqa: E402
from regnet.losses import RegNetLoss  # noqa: E402


def make_pairs(count: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.empty((count, size, size, size, 2), np.float32)
    y = np.empty((count, size, size, size, 3), np.float32)
    grid = np.indices((size,) * 3, dtype=np.float64)
    for i in range(count):
        tissue = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 2.0)
        moving = -600.0 + 500.0 * tissue / tissue.std()
        moving[:3], moving[-3:], moving[:, :3], moving[:, -3:], moving[:, :, :3], moving[:, :, -3:] = (-2048,) * 6
        u = np.stack([ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 5.0) for _ in range(3)], -1)
        u *= rng.uniform(2.0, 5.0) / np.abs(u).max()                       # (x, y, z) components, mm, 1 mm grid
        coords = grid + np.stack([u[..., 2], u[..., 1], u[..., 0]])        # (z, y, x) + (u_z, u_y, u_x)
        fixed = ndimage.map_coordinates(moving, coords, order=1, mode="nearest")
        x[i, ..., 0], x[i, ..., 1], y[i] = moving, fixed, u
    return x, y


def end_point_error(y_true, y_pred, margin: int = 4):
    c = slice(margin, -margin)
    return float(np.linalg.norm(y_true[:, c, c, c] - y_pred[:, c, c, c], axis=-1).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=37, help="unet1 input side (21 + 8k)")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    x_train, y_train = make_pairs(48, args.size, 0)
    x_val, y_val = make_pairs(12, args.size, 1)
    zero = end_point_error(y_val, np.zeros_like(y_val))
    print(f"unet1 width {args.width}, {args.size}^3, batch {args.batch}, {args.steps} steps; "
          f"validation EPE of a zero prediction {zero:.3f} mm")
    settings = [("raw HU + BN (RegNet)", {"mode": "raw"}, True), ("window [-1000,1000] + BN", None, True),
                ("raw HU, no BN", {"mode": "raw"}, False), ("window, no BN", None, False)]
    for label, intensity, batch_norm in settings:
        keras.utils.set_random_seed(0)
        options = {"width": args.width, "batch_norm": batch_norm, "seed": 0}
        if intensity:
            options["intensity"] = intensity
        model = nets.build("unet1", input_size=args.size, **options)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=RegNetLoss(delta=1.0, bending_weight=0.1))
        rng = np.random.default_rng(2)
        start = time.perf_counter()
        curve = []
        for step in range(1, args.steps + 1):
            pick = rng.integers(0, len(x_train), args.batch)
            model.train_on_batch(x_train[pick], y_train[pick])
            if step % (args.steps // 3) == 0 or step == args.steps:
                curve.append(end_point_error(y_val, model.predict(x_val, verbose=0)))
        minutes = (time.perf_counter() - start) / 60
        print(f"{label:<28} EPE by third: {', '.join(f'{e:.3f}' for e in curve)} mm "
              f"(ratio to zero {curve[-1] / zero:.2f}; {minutes:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
