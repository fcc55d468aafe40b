"""Benchmark: seconds and peak memory per synthetic-DVF method for one pair on a real chest CT.

    python bench/generate.py [--image ../shared/data/ct/popi_phase00_ct.nii.gz] [--no-baseline]

The POPI CT is resampled (cubic, anti-aliased) to a 1 mm grid of 256 x 256 x 200 voxels centred
on the lungs; masks come from regnet.masks. Each method runs in a fresh process (so the peak
resident memory is its own) and makes what the job makes: DVF, deformed image (cubic),
deformed masks, Jacobian, intensity chain, files. Targets: <= 5 s and <= 4 GiB per method.
The baseline, timed in the same run, is RegNet's route to a single-frequency field: SimpleITK
BSplineTransform + TransformToDisplacementField.
"""
import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "popi_phase00_ct.nii.gz"
SIZE = (256, 256, 200)


def prepare(path: Path, folder: Path):
    from scipy import ndimage

    from regnet.geometry import Geometry
    from regnet.io import read_image, resample_to_geometry, write_image
    from regnet.masks import compute_masks

    image = read_image(path)
    masks = compute_masks(image)
    g = Geometry.of(image)
    centre_index = np.asarray(ndimage.center_of_mass(sitk.GetArrayViewFromImage(masks["lung"])))[::-1]
    centre = g.index_to_physical(centre_index)
    half = (np.asarray(SIZE) - 1) / 2.0
    origin = centre - g.matrix @ half
    target = Geometry(SIZE, (1.0, 1.0, 1.0), tuple(origin), g.direction)
    paths = {}
    for name, img, interp, default in (("image", image, "bspline", -1024), ("torso", masks["torso"], "nearest", 0),
                                       ("lung", masks["lung"], "nearest", 0)):
        paths[name] = write_image(resample_to_geometry(img, target, interp, default), folder / f"{name}.mha")
    return paths


def one_method(dsmooth: int, folder: str, queue):
    """Run one pair through the job's own function in this (fresh) process."""
    from regnet.generate import generate_pair
    from regnet.settings import load_settings
    from regnet.store import ImageId, PairId, PairStore
    from regnet.timing import recording

    settings = load_settings({"DataExpDict": [{"data": "Folder", "deform_exp": "3D_max7_D14_K"}],
                              "DataFolder": folder, "OutputFolder": str(Path(folder) / "out"), "stage": 1})
    store = PairStore(settings)
    pair = PairId(ImageId("3D_max7_D14_K", "Folder", "image", 0, 1), dsmooth)
    original = store.original_dir(pair.image)
    original.mkdir(parents=True, exist_ok=True)
    for name, target in (("image", "Image"), ("torso", "Torso"), ("lung", "Lung")):
        link = original / f"{target}.mha"
        if not link.exists():
            link.symlink_to(Path(folder) / f"{name}.mha")
    t0 = time.perf_counter()
    with recording() as steps:
        stats = generate_pair(pair, store)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    queue.put((dsmooth, stats, total, dict(steps), peak))


def baseline_sitk_field(folder: Path) -> float:
    """RegNet's route: a B-spline transform evaluated densely by SimpleITK."""
    image = sitk.ReadImage(str(folder / "image.mha"))
    dummy = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    tx = sitk.BSplineTransformInitializer(dummy, [round(s / 20) for s in image.GetSize()], 3)
    rng = np.random.default_rng(0)
    tx.SetParameters(rng.uniform(-28, 28, tx.GetNumberOfParameters()).tolist())
    t0 = time.perf_counter()
    sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, image.GetSize(), (0, 0, 0), (1, 1, 1))
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=SHARED)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--dsmooth", type=int, nargs="*", default=[0, 4, 8, 9, 12, 13],
                        help="dsmooth numbers to time (default: RM D0, SF D0, SF D4, MF D0, MF D3, zero)")
    args = parser.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: pass --image with a chest CT in HU")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        prepare(args.image, folder)
        print(f"{args.image.name} -> 1 mm grid {SIZE} with masks in {time.perf_counter() - t0:.1f} s")
        ctx = mp.get_context("spawn")
        for d in args.dsmooth:
            queue = ctx.Queue()
            proc = ctx.Process(target=one_method, args=(d, str(folder), queue))
            proc.start()
            dsmooth, stats, total, steps, peak = queue.get()
            proc.join()
            base = steps.get("next image", 0.0)
            pair_seconds = total - base
            verdict = "OK" if pair_seconds <= 5.0 and peak <= 4.0 else "OVER TARGET"
            next_note = f" + next image (base for dsmooth > 0) {base:.2f} s" if base else ""
            print(f"\ndsmooth {dsmooth:>2} {stats['method']}_D{stats['deform_number']}: pair {pair_seconds:5.2f} s"
                  f"{next_note}, "
                  f"peak RSS {peak:.2f} GiB  [{verdict}]  max|u| {stats['max_magnitude_mm']:.2f} mm, "
                  f"J [{stats['jacobian_min']:.2f}, {stats['jacobian_max']:.2f}], "
                  f"folded {100 * stats['folded_fraction_in_torso']:.4f}% of torso")
            for name, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
                print(f"    {name:<26} {seconds:6.2f} s")
        if not args.no_baseline:
            seconds = baseline_sitk_field(folder)
            print(f"\nbaseline: SimpleITK TransformToDisplacementField for one B-spline field: {seconds:.1f} s "
                  "(RegNet's route; ours is the 'B-spline field' step above)")


if __name__ == "__main__":
    main()
