"""Run RegNet end to end on the built-in data: the settings dict in RegNet's own vocabulary ->
synthetic pairs -> a trained network -> a held-out pair registered and evaluated -> DIR/report.html.

    python RunRegNet3D.py [--out DIR] [--quick] [--paper] [--steps N] [--jobs N]

The data is the procedural chest-CT phantom (data 'Phantom': cases are seeds), so nothing is
downloaded. The built-in SETTINGS train a narrow unet1 at stage 4 (4 mm voxels) and finish in about
ten minutes on a 2-core CPU (``--quick``: about two). ``--paper`` switches to the paper's stage-1
configuration (crop4_connection, 101^3 -> 21^3 patches, batch 15): a job for a GPU. Re-running the
same command resumes: finished pairs are kept and training continues from its last checkpoint.
To run on your own images, point 'data' at a data layout (DIR-Lab_4D, POPI, Folder, ... in
regnet/data_layouts/) and 'DataFolder' at your files, and use `regnet generate` / `regnet train`.
"""
import argparse
import copy

from regnet import RegNetError
from regnet.demo import DEMO_SETTINGS, QUICK_STEPS, run_demo

SETTINGS = copy.deepcopy(DEMO_SETTINGS)

#: The paper's stage-1 configuration (Sokooti et al. 2019), on the same built-in data.
PAPER_SETTINGS = {
    "DataExpDict": [{
        "data": "Phantom",
        "deform_exp": "3D_max7_D14_K",
        "TrainingCNList": [1, 2, 3, 4, 5, 6],
        "TrainingTypeImList": [0, 1],
        "TrainingDSmoothList": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        "ValidationCNList": [9],
        "ValidationTypeImList": [0],
        "ValidationDSmoothList": [0, 4, 9],
    }],
    "stage": 1,
    "NetworkDesign": "crop4_connection",     # R 50, Ry 10: 101^3 -> 21^3
    "NetworkTraining": {"NumberOfImagesPerChunk": 16, "SamplesPerImage": 50, "BatchSize": 15,
                        "MaxQueueSize": 20, "LearningRate": 1e-3, "MaxIterations": 100000,
                        "ValidationEvery": 1000, "CheckpointEvery": 1000},
    "NetworkValidation": {"NumberOfImagesPerChunk": 10, "SamplesPerImage": 500, "BatchSize": 50},
    "Jobs": 2,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./output", help="output folder (default ./output)")
    parser.add_argument("--quick", action="store_true", help=f"train {QUICK_STEPS} steps only")
    parser.add_argument("--paper", action="store_true", help="the paper's stage-1 configuration (for a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="train up to this step (default: MaxIterations)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel workers for the pairs (default: Jobs)")
    args = parser.parse_args(argv)
    values = copy.deepcopy(PAPER_SETTINGS if args.paper else SETTINGS)
    if args.jobs is not None:
        values["Jobs"] = args.jobs  # 0 or less is refused by the settings check, not taken as "default"
    try:
        run_demo(args.out, values, steps=args.steps or (QUICK_STEPS if args.quick else None))
    except RegNetError as err:
        print(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
