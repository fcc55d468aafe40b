"""Benchmark: lung and torso masks on every CT in ../shared/data/ct (volumes, seconds, PNGs).

    python bench/masks.py [--png-dir DIR]

Plausible adult lung volumes on a full chest CT are about 2-8 L; cropped or abdominal scans
hold less. The phantom row compares with the phantom's own masks (Dice).
"""
import argparse
import time
from pathlib import Path

from regnet.io import read_image
from regnet.masks import compute_masks, dice, mask_volume_litres
from regnet.phantom import PhantomSpec, make_phantom

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--png-dir", type=Path, default=None, help="write overlay PNGs here")
    args = parser.parse_args()
    rows = []
    for path in sorted(CT.glob("*.nii.gz")):
        image = read_image(path)
        t0 = time.perf_counter()
        masks = compute_masks(image)
        seconds = time.perf_counter() - t0
        rows.append((path.name, image.GetSize(), image.GetSpacing(), masks, seconds, None))
        if args.png_dir:
            from regnet.figures import orthogonal_slices_png

            orthogonal_slices_png(image, args.png_dir / f"{path.name.split('.')[0]}_masks.png",
                                  overlays={"lung": masks["lung"], "torso": masks["torso"]}, title=path.name)
    ph = make_phantom(PhantomSpec(seed=1, spacing=1.5, exhale=False))
    t0 = time.perf_counter()
    masks = compute_masks(ph["image"])
    rows.append(("phantom seed 1", ph["image"].GetSize(), ph["image"].GetSpacing(), masks,
                 time.perf_counter() - t0, (dice(masks["lung"], ph["lung"]), dice(masks["torso"], ph["torso"]))))
    print(f"{'image':<42} {'size':<18} {'spacing (mm)':<20} {'lung L':>7} {'torso L':>8} {'s':>6}")
    for name, size, spacing, masks, seconds, dices in rows:
        extra = f"  Dice lung {dices[0]:.3f}, torso {dices[1]:.3f}" if dices else ""
        print(f"{name:<42} {'x'.join(map(str, size)):<18} {'x'.join(f'{s:.3g}' for s in spacing):<20} "
              f"{mask_volume_litres(masks['lung']):7.2f} {mask_volume_litres(masks['torso']):8.2f} "
              f"{seconds:6.1f}{extra}")


if __name__ == "__main__":
    main()
