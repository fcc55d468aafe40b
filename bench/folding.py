"""Jacobian statistics per method and experiment: how often synthetic fields fold (J <= 0).

    python bench/folding.py [--image CT] [--seeds 3]

For each deform experiment at its own stage (3D_max7 at 1 mm, 3D_max15 at 2 mm, 3D_max20 at
4 mm) and each of the 14 dsmooth slots, fields are drawn on a chest CT (POPI from
../shared/data when present, cropped as in bench/generate.py, else the built-in phantom) and the
folded fraction of torso voxels, min J and the 1st/99th percentiles of J are printed.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet.deform.field import jacobian_determinant
from regnet.deform.methods import inputs_of, synthetic_dvf
from regnet.geometry import Geometry
from regnet.io import read_image, resample_isotropic
from regnet.phantom import PhantomSpec, make_phantom
from regnet.seeding import rng_for
from regnet.settings import load_deform_exp

POPI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "popi_phase00_ct.nii.gz"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=POPI if POPI.exists() else None)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.image:
        from generate import prepare  # bench/generate.py: the 256x256x200 1 mm crop around the lungs

        folder = Path(tempfile.mkdtemp())
        paths = prepare(args.image, folder)
        image = read_image(paths["image"])
        masks = {"torso": read_image(paths["torso"]), "lung": read_image(paths["lung"])}
        name = f"{args.image.name}, 1 mm crop 256x256x200 around the lungs"
    else:
        ph = make_phantom(PhantomSpec(seed=1, spacing=1.5, exhale=False))
        image, masks, name = ph["image"], {"torso": ph["torso"], "lung": ph["lung"]}, "phantom seed 1"
    print(f"image: {name}")
    for exp_name, stage in (("3D_max7_D14_K", 1), ("3D_max15_D14_K", 2), ("3D_max20_D14_K", 4)):
        exp = load_deform_exp(exp_name)
        im = resample_isotropic(image, float(stage), "bspline", -1024)
        torso = sitk.GetArrayViewFromImage(resample_isotropic(masks["torso"], float(stage), "nearest")) > 0
        lung = sitk.GetArrayViewFromImage(resample_isotropic(masks["lung"], float(stage), "nearest")) > 0
        g = Geometry.of(im)
        print(f"\n{exp_name} at stage {stage} ({g.size} voxels):")
        for d in range(14):
            method, number = exp.method_of(d)
            if method == "zero":
                continue
            folded, jmin, p1, p99 = [], [], [], []
            for seed in range(args.seeds):
                available = {"image": im, "torso": torso, "lung": lung}
                inputs = {k: v for k, v in available.items() if k in inputs_of(method)}
                u = synthetic_dvf(method, g, exp, number, rng_for("folding", exp_name, d, seed), **inputs)
                j = jacobian_determinant(u, g)[torso]
                folded.append((j <= 0).mean())
                jmin.append(j.min())
                p1.append(np.percentile(j, 1))
                p99.append(np.percentile(j, 99))
            print(f"  dsmooth {d:>2} {method:<19} D{number}: folded {100 * np.mean(folded):.4f}% of torso "
                  f"(max over seeds {100 * np.max(folded):.4f}%), min J {np.min(jmin):+.2f}, "
                  f"J 1st-99th pct {np.mean(p1):.2f}-{np.mean(p99):.2f}")


if __name__ == "__main__":
    main()
