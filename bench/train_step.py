"""Seconds per training step and patches/s for each network at its paper patch size.

Random inputs (HU-like) and targets, Adam + RegNet's loss (Huber 1 mm + 0.1 x bending energy),
``model.train_on_batch`` timed after a first (compiling) step. Backend from ``KERAS_BACKEND``:

    TF_ENABLE_ONEDNN_OPTS=1 python bench/train_step.py --steps 3                # TensorFlow CPU
    KERAS_BACKEND=jax python bench/train_step.py --mixed-precision bfloat16      # JAX (GPU)

Batch: RegNet's ``BatchSize`` (15 for the patch networks, 5 for the full-image unet1) unless
``--batch`` is given. Nothing here imports TensorFlow when the backend is JAX.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import regnet.networks as nets  # noqa: E402
from regnet.losses import RegNetLoss  # noqa: E402

DEFAULT_NETWORKS = ["crop4_connection", "decimation4", "unet1"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=DEFAULT_NETWORKS, help="network names (default: all three)")
    parser.add_argument("--batch", type=int, help="batch size for every network (default: 15, unet1 5)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first one (default 10)")
    parser.add_argument("--mixed-precision", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: keras policy mixed_bfloat16 (DVF head and loss stay float32)")
    parser.add_argument("--jit-compile", choices=["auto", "on", "off"], default="auto",
                        help="XLA compilation of the train step (Keras 'auto' by default)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def bench_one(name: str, batch: int, width: float, steps: int, jit_compile) -> dict:
    model = nets.build(name, width=width)
    n = model.input_shape[1]
    m = model.output_shape[1]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1000, 400, size=(batch, n, n, n, 2)).astype(np.float32)
    y = rng.normal(scale=3.0, size=(batch, m, m, m, 3)).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=RegNetLoss(delta=1.0, bending_weight=0.1),
                  jit_compile=jit_compile)
    start = time.perf_counter()
    loss = model.train_on_batch(x, y)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y)
        float(loss)                                      # wait for the device
        times.append(time.perf_counter() - start)
    per_step = float(np.median(times)) if times else float("nan")
    return {"network": name, "backend": keras.backend.backend(), "precision": keras.config.dtype_policy().name,
            "input": n, "output": m, "batch": batch, "width": width, "parameters": nets.count_parameters(model),
            "first_step_s": round(first, 2), "s_per_step": round(per_step, 3),
            "patches_per_s": round(batch / per_step, 2), "voxels_out_per_s": round(batch * m**3 / per_step),
            "loss": float(loss)}


def device_description() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return ", ".join(str(d) for d in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        cpu = platform.processor() or platform.machine()
        return f"{len(gpus)} GPU(s); CPU {cpu} x{os.cpu_count()}, oneDNN={onednn}"
    return backend


def main(argv=None):
    args = parse_args(argv)
    if args.mixed_precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
    print(f"backend {keras.backend.backend()} ({device_description()}), policy {keras.config.dtype_policy().name}, "
          f"jit_compile {args.jit_compile}, {args.steps} timed steps (median)")
    header = f"{'network':<18}{'in->out':>10}{'batch':>6}{'params':>11}{'first s':>9}{'s/step':>9}{'patches/s':>11}"
    print(header)
    rows = []
    for name in args.networks:
        batch = args.batch or (5 if nets.get_spec(name).full_image else 15)
        row = bench_one(name, batch, args.width, args.steps, jit)
        rows.append(row)
        print(f"{name:<18}{str(row['input']) + '->' + str(row['output']):>10}{batch:>6}{row['parameters']:>11}"
              f"{row['first_step_s']:>9.2f}{row['s_per_step']:>9.3f}{row['patches_per_s']:>11.2f}", flush=True)
        keras.backend.clear_session()
    if keras.backend.backend() != "tensorflow" and "tensorflow" in sys.modules:
        print("note: tensorflow was imported although the backend is", keras.backend.backend())
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
