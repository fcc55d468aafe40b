"""Benchmark: synthetic pairs per second on the device path (keras.ops) beside the CPU NumPy generator.

    python bench/device_generate.py                                 # POPI CT, 256x256x200 at 1 mm
    python bench/device_generate.py --prepare volume.npz            # write the volume + masks + edges (needs SimpleITK)
    KERAS_BACKEND=jax python bench/device_generate.py --volume volume.npz --no-baseline   # e.g. on a GPU machine

A pair is what the offline job makes in memory: the field of the method (and a next image for
dsmooth > 0), the cubic warp, both masks warped, the Jacobian and Clean_Sponge_Noise. "crop4
patches" cuts ``--patches`` pairs of 101^3 image patches ([moving, fixed]) and their 21^3 DVF
labels from every pair on the device. The NumPy baseline (SimpleITK, all cores) runs the same
steps on the CPU in the same process. Under JAX no TensorFlow module is imported.

``--volume`` takes a ``.npz`` from ``--prepare`` (image, torso, lung, edges, spacing, origin,
direction) or a plain ``.npy`` in HU with ``--spacing`` (masks by HU thresholds, no mixed
frequency without edges). On a GPU, TF32 matrix products are switched off (full float32) unless
``--tf32``.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "popi_phase00_ct.nii.gz"
SIZE = (256, 256, 200)
#: name -> (dsmooth, deform a next image first)
CASES = {"respiratory_motion": (0, False), "single_frequency": (4, False), "mixed_frequency": (9, False),
         "next image + single_frequency": (4, True)}
#: device cases run again with mixed frequency's dilation phases on the CPU (as before they moved)
CPU_DILATION = {"mixed_frequency, CPU dilation": "mixed_frequency"}


def prepare(path: Path, out: Path) -> Path:
    """POPI CT on a 1 mm 256x256x200 grid centred on the lungs, masks and Canny edges -> one .npz."""
    import SimpleITK as sitk
    from scipy import ndimage

    from regnet.deform.methods import canny_edges
    from regnet.geometry import Geometry
    from regnet.io import read_image, resample_to_geometry
    from regnet.masks import compute_masks
    from regnet.settings import load_deform_exp

    image = read_image(path)
    masks = compute_masks(image)
    g = Geometry.of(image)
    centre = g.index_to_physical(np.asarray(ndimage.center_of_mass(sitk.GetArrayViewFromImage(masks["lung"])))[::-1])
    origin = centre - g.matrix @ ((np.asarray(SIZE) - 1) / 2.0)
    target = Geometry(SIZE, (1.0, 1.0, 1.0), tuple(origin), g.direction)
    on = {name: resample_to_geometry(img, target, interp, default) for name, img, interp, default in
          (("image", image, "bspline", -1024), ("torso", masks["torso"], "nearest", 0),
           ("lung", masks["lung"], "nearest", 0))}
    edges = canny_edges(sitk.Cast(on["image"], sitk.sitkFloat32), load_deform_exp("3D_max7_D14_K"))
    arrays = {k: sitk.GetArrayFromImage(v) for k, v in on.items()}
    np.savez_compressed(out, image=arrays["image"].astype(np.int16), torso=arrays["torso"] > 0,
                        lung=arrays["lung"] > 0, edges=edges, spacing=target.spacing, origin=target.origin,
                        direction=target.direction)
    return out


def load_volume(path: Path, spacing):
    """(image HU float32, torso, lung, edges or None, Geometry) from a prepared .npz or a plain .npy."""
    from scipy import ndimage

    from regnet.geometry import Geometry

    if path.suffix == ".npz":
        d = np.load(path)
        grid = Geometry(tuple(int(n) for n in d["image"].shape[::-1]), tuple(map(float, d["spacing"])),
                    tuple(map(float, d["origin"])), tuple(map(float, d["direction"])))
        return d["image"].astype(np.float32), d["torso"], d["lung"], d["edges"], grid
    image = np.load(path).astype(np.float32)
    body = np.stack([ndimage.binary_fill_holes(s) for s in image > -500])  # axial slices: lungs are holes
    torso = ndimage.binary_opening(body, iterations=2)
    lung = ndimage.binary_opening((image < -400) & ndimage.binary_erosion(torso, iterations=5), iterations=2)
    return image, torso, lung, None, Geometry(tuple(int(n) for n in image.shape[::-1]), tuple(spacing))


def sync(x):
    from keras import ops

    return float(ops.convert_to_numpy(ops.sum(x)))


def cut_patches(pairs: dict, count: int, rng, r: int = 50, ry: int = 10):
    """``count`` crop4 patches per pair: [moving, fixed] (2R+1)^3 and the (2Ry+1)^3 DVF at its centre."""
    from keras import ops

    b, z, y, x = pairs["moving"].shape
    side = 2 * r + 1
    xs, ys = [], []
    for i in range(b):
        for _ in range(count):
            lo = [int(rng.integers(0, n - side + 1)) for n in (z, y, x)]
            image = ops.stack([ops.slice(pairs[k][i], lo, (side,) * 3) for k in ("moving", "fixed")], axis=-1)
            xs.append(image)
            ys.append(ops.slice(pairs["dvf"][i], [s + r - ry for s in lo] + [0], (2 * ry + 1,) * 3 + (3,)))
    return ops.stack(xs), ops.stack(ys)


def bench_device(volume, exp, batch: int, repeats: int, patches: int) -> dict:
    from keras import ops

    from regnet.deform.device import generate_pairs

    image, torso, lung, edges, grid = volume
    on_device = [ops.convert_to_tensor(np.repeat(a[None], batch, 0).astype(np.float32)) for a in (image, torso, lung)]
    edge_batch = None if edges is None else ops.convert_to_tensor(np.repeat(edges[None], batch, 0).astype(np.float32))
    results = {}
    cases = [(name, *case, "device") for name, case in CASES.items()]
    cases += [(name, *CASES[of], "cpu") for name, of in CPU_DILATION.items()]
    for name, dsmooth, use_next, dilation in cases:
        if exp.method_of(dsmooth)[0] == "mixed_frequency" and edges is None:
            continue
        times, cut_times = [], []
        for rep in range(repeats + 1):  # the first round compiles / warms up
            keys = [("bench", rep, b) for b in range(batch)]
            t0 = time.perf_counter()
            pairs = generate_pairs(*on_device, grid, exp, keys, [dsmooth] * batch, default=-1024.0, edges=edge_batch,
                                   next_images=[use_next] * batch, dilation=dilation)
            sync(pairs["fixed"])
            t1 = time.perf_counter()
            x, y = cut_patches(pairs, patches, np.random.default_rng(rep))
            sync(x) + sync(y)
            t2 = time.perf_counter()
            if rep:
                times.append(t1 - t0)
                cut_times.append(t2 - t1)
        seconds = float(np.median(times))
        results[name] = {"pairs_per_s": batch / seconds, "seconds_per_batch": seconds,
                         "crop4_patches_per_s": batch * patches / (seconds + float(np.median(cut_times))),
                         "cut_seconds_per_batch": float(np.median(cut_times))}
    return results


def bench_numpy(volume, exp, repeats: int) -> dict:
    """The CPU generator's in-memory steps for one pair (SimpleITK on all cores)."""
    import SimpleITK as sitk

    from regnet.deform.augment import intensity_chain, next_image
    from regnet.deform.field import (
        bspline_coefficients,
        jacobian_determinant,
        warp,
        warp_masks,
    )
    from regnet.deform.methods import synthetic_dvf
    from regnet.geometry import Geometry
    from regnet.io import dvf_to_image, image_from_array
    from regnet.seeding import rng_for

    image, torso, lung, edges, grid = volume
    g = Geometry(grid.size, grid.spacing, grid.origin, grid.direction)
    base = [image_from_array(a, g) for a in (image.astype(np.int16), torso.astype(np.uint8), lung.astype(np.uint8))]
    results = {}
    for name, (dsmooth, use_next) in CASES.items():
        method, number = exp.method_of(dsmooth)
        if method == "mixed_frequency" and edges is None:
            continue
        times = []
        for rep in range(repeats):
            rng = {k: rng_for("bench", rep, k) for k in ("NextDVF", "NextSponge", "NextNoise", "Sponge", "Noise",
                                                          "Occluded", method)}
            t0 = time.perf_counter()
            img, tor, lun = base
            if use_next:
                made = next_image(*base, exp, 1, rng, -1024.0)
                img, tor, lun = made["image"], made["torso"], made["lung"]
            t_arr, l_arr = sitk.GetArrayViewFromImage(tor) > 0, sitk.GetArrayViewFromImage(lun) > 0
            kwargs = {"stage": 1} if "stage" in synthetic_dvf.__code__.co_varnames else {}
            dvf = synthetic_dvf(method, g, exp, number, rng=rng[method], image=img, torso=t_arr, lung=l_arr,
                                edges=None if use_next else edges, **kwargs)
            field = dvf_to_image(dvf, g)
            deformed = warp(img, field, "bspline", -1024.0, coefficients=bspline_coefficients(img))
            dt, dl = warp_masks(tor, lun, field)
            jac = jacobian_determinant(dvf, g)
            intensity_chain(sitk.GetArrayViewFromImage(deformed), jac, sitk.GetArrayViewFromImage(dt) > 0,
                            sitk.GetArrayViewFromImage(dl) > 0, exp, rng)
            times.append(time.perf_counter() - t0)
        results[name] = {"pairs_per_s": 1 / float(np.median(times)), "seconds_per_pair": float(np.median(times))}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", type=Path, help=".npz from --prepare, or a .npy in HU (with --spacing)")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="x y z mm of a .npy volume")
    p.add_argument("--image", type=Path, default=SHARED, help="CT to prepare when no --volume is given")
    p.add_argument("--prepare", type=Path, help="write the prepared volume to this .npz and stop")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--patches", type=int, default=50, help="crop4 patches cut per pair")
    p.add_argument("--deform-exp", default="3D_max7_D14_K")
    p.add_argument("--no-baseline", action="store_true", help="skip the CPU NumPy generator (needs SimpleITK)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on a GPU")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if not args.tf32:  # before the backend is imported
        os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.prepare:
        print(f"wrote {prepare(args.image, args.prepare)}")
        return 0
    import keras

    from regnet.settings import load_deform_exp

    volume_path = args.volume
    if volume_path is None:
        volume_path = Path("/tmp") / "regnet_device_bench_volume.npz"
        if not volume_path.exists():
            prepare(args.image, volume_path)
    volume = load_volume(volume_path, args.spacing)
    exp = load_deform_exp(args.deform_exp)
    devices = keras.config.backend()
    if devices == "jax":
        devices += " " + ", ".join(str(d) for d in __import__("jax").devices())
    elif devices == "tensorflow":
        devices += " " + ", ".join(d.name for d in __import__("tensorflow").config.list_logical_devices())
    print(f"volume {volume[0].shape[::-1]} (x y z) at {volume[4].spacing} mm; backend {devices}; "
          f"batch {args.batch}; {args.patches} crop4 patches per pair; {args.deform_exp}")
    report = {"backend": devices, "size_xyz": list(volume[0].shape[::-1]), "batch": args.batch,
              "device": bench_device(volume, exp, args.batch, args.repeats, args.patches)}
    if not args.no_baseline:
        report["numpy_cpu"] = bench_numpy(volume, exp, max(1, args.repeats - 1))
    print(f"{'pair':34s} {'device pairs/s':>15s} {'crop4 patches/s':>16s} {'CPU NumPy pairs/s':>18s}")
    for name, d in report["device"].items():
        cpu = report.get("numpy_cpu", {}).get(name, {}).get("pairs_per_s")
        print(f"{name:34s} {d['pairs_per_s']:15.3f} {d['crop4_patches_per_s']:16.1f} "
              f"{'-' if cpu is None else f'{cpu:.3f}':>18s}")
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
