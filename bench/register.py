"""Benchmark: `regnet register` on a chest CT pair of about 256^3 voxels, step by step, with peak
memory, against SimpleITK's own B-spline registration of the same pair in the same run.

    python bench/register.py [--stages 4 2 1] [--width 1.0] [--max-patch N] [--bspline-iterations 10]

The pair: a real 1 mm chest CT resampled to ~1.3 mm (about 273 x 214 x 234) is the moving image;
the fixed image is it warped by a known smooth field after a known affine, so the end-point error
of each method can be printed too. RegNet's networks here are *untrained* crop4 models built by
``regnet.networks`` (realistic cost, meaningless answer); a stand-in of no cost when Keras is
missing. Each registration runs in its own process, so its peak memory (ru_maxrss) is its own.
Default stages 4 2 keep the run to a few minutes on a 2-core CPU; stage 1 at width 1 costs ~10x
stage 2 (the per-stage voxel rate printed lets you extrapolate). With KERAS_BACKEND=jax on a GPU the
same script measures the GPU.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

CT = (Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
      / "tcia_nsclc_radiogenomics_R01-001_chest_ct_1mm.nii.gz")


def make_pair(ct: Path, spacing: float, folder: Path) -> dict:
    """moving = the CT at ``spacing`` mm; fixed = moving(A(x + u(x))) with u a smooth random field."""
    import numpy as np
    import SimpleITK as sitk

    from regnet.deform.bspline import dense_field, random_coefficients
    from regnet.deform.field import warp
    from regnet.geometry import Geometry
    from regnet.io import dvf_to_image, read_image, resample_isotropic, write_dvf, write_image
    from regnet.register import fold_affine

    paths = {k: folder / f"{k}.mha" for k in ("fixed", "moving", "truth")}
    if all(p.exists() for p in paths.values()):
        return paths
    moving = resample_isotropic(read_image(ct), spacing, "bspline", -1024.0)
    g = Geometry.of(moving)
    u = dvf_to_image(dense_field(random_coefficients(g, (50, 50, 50), 6.0, 1, 1.0, np.random.default_rng(3)), g), g)
    a = sitk.Euler3DTransform()
    a.SetCenter(g.index_to_physical((np.asarray(g.size) - 1) / 2).tolist())
    a.SetRotation(*np.deg2rad([2.0, -1.5, 3.0]))
    a.SetTranslation((4.0, -3.0, 5.0))
    truth = fold_affine(u, a, g)
    fixed = warp(moving, truth, "bspline", -1024.0, reference=g)
    write_image(moving, paths["moving"])
    write_image(fixed, paths["fixed"])
    write_dvf(truth, paths["truth"], g)
    return paths


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_regnet(paths, out, stages, width, max_patch, stand_in, queue):
    t0 = time.perf_counter()
    try:
        if stand_in:
            raise ImportError("stand-in requested")
        from regnet.networks import build
        from regnet.register import KerasStageModel

        models = [KerasStageModel.from_network(build("crop4_connection", input_size=None, width=width), s)
                  for s in stages]
        kind = f"untrained crop4_connection, width {width}"
    except ImportError as err:
        import numpy as np

        from regnet.register import FunctionStageModel

        def zero(x):
            return np.zeros((x.shape[0],) + tuple(n - 80 for n in x.shape[1:4]) + (3,), np.float32)

        models = [FunctionStageModel(s, 50, 10, zero, bytes_per_voxel=576.0) for s in stages]
        kind = f"zero stand-in with crop4's sizes ({err}): predict costs nothing, everything else is real"
    build_s = time.perf_counter() - t0
    from regnet.register import register

    result = register(paths["fixed"], paths["moving"], models, affine="affine", max_patch=max_patch, progress=False)
    result.write(out)
    queue.put({"seconds": result.seconds, "stages": result.info["stages"], "build_models": build_s, "kind": kind,
               "peak_mib": _peak_mib()})


def run_bspline(paths, out, iterations, queue):
    """SimpleITK's B-spline registration: a 40 mm mesh, Mattes MI (5% samples), LBFGSB, two levels."""
    import SimpleITK as sitk

    from regnet.io import write_dvf

    t0 = time.perf_counter()
    fixed = sitk.Cast(sitk.ReadImage(str(paths["fixed"])), sitk.sitkFloat32)
    moving = sitk.Cast(sitk.ReadImage(str(paths["moving"])), sitk.sitkFloat32)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mesh = [max(1, int(round(n * s / 40.0))) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    initial = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5)
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2, 1])
    reg.SetInitialTransform(initial, inPlace=True)
    transform = reg.Execute(fixed, moving)
    register_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                              fixed.GetSpacing(), fixed.GetDirection())
    write_dvf(field, Path(out) / "dvf.mha")
    queue.put({"seconds": {"read": read_s, "register": register_s, "dvf+write": time.perf_counter() - t0},
               "iterations": reg.GetOptimizerIteration(), "peak_mib": _peak_mib(), "mesh": mesh})


def _child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def epe(dvf_path, truth_path, mask=None):
    import numpy as np
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(dvf_path)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
    e = np.sqrt(((a.astype(np.float64) - b) ** 2).sum(-1))
    return float(e[mask].mean()) if mask is not None else float(e.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=CT)
    parser.add_argument("--spacing", type=float, default=1.3, help="mm; 1.3 gives about 256^3 for the default CT")
    parser.add_argument("--stages", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--width", type=float, default=1.0, help="crop4 channel multiplier (1 = paper)")
    parser.add_argument("--max-patch", type=int, default=None)
    parser.add_argument("--bspline-iterations", type=int, default=10)
    parser.add_argument("--stand-in", action="store_true",
                        help="a zero predictor with crop4's sizes: time and memory of everything but the network")
    parser.add_argument("--no-bspline", action="store_true", help="skip the SimpleITK B-spline comparison")
    parser.add_argument("--work", type=Path, default=Path("/tmp/regnet_bench_register"))
    args = parser.parse_args()
    if not args.ct.exists():
        raise SystemExit(f"{args.ct} not found (../shared/data is absent); give --ct")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = make_pair(args.ct, args.spacing, args.work)
    print(f"pair ready in {time.perf_counter() - t0:.1f} s: {paths['fixed']}")
    import numpy as np
    import SimpleITK as sitk

    from regnet.masks import compute_masks

    fixed = sitk.ReadImage(str(paths["fixed"]))
    body = sitk.GetArrayFromImage(compute_masks(fixed)["torso"]).astype(bool)
    print(f"fixed {fixed.GetSize()} voxels at {fixed.GetSpacing()[0]} mm, {os.cpu_count()} CPU cores, "
          f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}")

    ours = _child(run_regnet, paths, args.work / "regnet", args.stages, args.width, args.max_patch, args.stand_in)
    print(f"\nregnet register ({ours['kind']}; models built in {ours['build_models']:.1f} s):")
    for k, v in ours["seconds"].items():
        print(f"  {k:<20} {v:8.2f} s")
    total = sum(v for k, v in ours["seconds"].items() if "." not in k)
    print(f"  {'total':<20} {total:8.2f} s   peak memory {ours['peak_mib'] / 1024:.2f} GiB")
    for st in ours["stages"]:
        voxels = np.prod(st["grid_size"])
        rate = voxels / ours["seconds"][f"stage{st['stage']}.predict"] / 1e3
        print(f"  stage {st['stage']}: grid {st['grid_size']}, {st['tiles']} tiles of {st['tile_input'][0]}^3 -> "
              f"{st['tile_output'][0]}^3 (batch {st['batch_size']}), {rate:.0f} k output voxels/s")
    ours_epe = epe(args.work / "regnet" / "dvf.mha", paths["truth"], body)
    zero = float(np.sqrt((sitk.GetArrayFromImage(sitk.ReadImage(str(paths["truth"]))) ** 2).sum(-1))[body].mean())
    if args.no_bspline:
        print(f"\nmean end-point error in the body (mm): zero field {zero:.2f}, regnet {ours_epe:.2f}")
        return
    theirs = _child(run_bspline, paths, args.work, args.bspline_iterations)
    print(f"\nSimpleITK B-spline (mesh {theirs['mesh']}, MI, LBFGSB {theirs['iterations']} iterations at the last "
          "level, shrink 4 2, after no affine step):")
    for k, v in theirs["seconds"].items():
        print(f"  {k:<20} {v:8.2f} s")
    print(f"  {'total':<20} {sum(theirs['seconds'].values()):8.2f} s   peak memory {theirs['peak_mib'] / 1024:.2f} GiB")
    print(f"\nmean end-point error in the body (mm): zero field {zero:.2f}, regnet with untrained networks "
          f"{ours_epe:.2f}, SimpleITK B-spline {epe(args.work / 'dvf.mha', paths['truth'], body):.2f}")
    (args.work / "bench.json").write_text(json.dumps({"regnet": ours, "bspline": theirs}, indent=2, default=str))


if __name__ == "__main__":
    main()
