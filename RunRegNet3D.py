"""Run RegNet on the built-in data: the settings dict in RegNet's own vocabulary -> synthetic pairs.

    python RunRegNet3D.py [--jobs N] [--out DIR]

Uses the procedural chest-CT phantom (data 'Phantom': cases are seeds), so nothing is
downloaded. Point 'data' at another data layout (DIR-Lab_4D, POPI, Folder, ... in regnet/data_layouts/)
and 'DataFolder' at your files to run on real images. Re-running resumes: finished pairs are
skipped. The resolved settings are written to OUT/settings.json.
"""
import argparse

from regnet.generate import run
from regnet.settings import load_settings

SETTINGS = {
    "DataExpDict": [{
        "data": "Phantom",
        "deform_exp": "3D_max7_D14_K",
        "TrainingCNList": [1, 2],
        "TrainingTypeImList": [0],
        "TrainingDSmoothList": [0, 4, 9, 13],   # respiratory, single- and mixed-frequency, zero
        "ValidationCNList": [3],
        "ValidationTypeImList": [0],
        "ValidationDSmoothList": [5],
    }],
    "NetworkTraining": {"NumberOfImagesPerChunk": 16, "SamplesPerImage": 50, "BatchSize": 15,
                        "MaxQueueSize": 20, "LearningRate": 1e-3, "MaxIterations": 100000},
    "NetworkValidation": {"NumberOfImagesPerChunk": 10, "SamplesPerImage": 500, "BatchSize": 50},
    "stage": 1,
    "NetworkDesign": "crop4_connection",
    "AGMode": "Resp",
    "OutputFolder": "./output",
    "Jobs": 2,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--out", default=None, help="output root (default ./output)")
    args = parser.parse_args()
    values = dict(SETTINGS)
    if args.out:
        values["OutputFolder"] = args.out
    settings = load_settings(values)
    results = run(settings, jobs=args.jobs if args.jobs is not None else settings.Jobs)  # 0 is an error, not "default"
    print(f"\n{len(results)} synthetic pairs in {settings.OutputFolder} "
          f"(settings: {settings.OutputFolder}/settings.json)")
    for r in results:
        state = "kept" if r["skipped"] else f"{r['seconds']:.1f} s"
        print(f"  case {r['case']} dsmooth {r['dsmooth']:>2} {r['method']:<19} max|u| {r['max_magnitude_mm']:5.2f} mm"
              f"  Jacobian [{r['jacobian_min']:.2f}, {r['jacobian_max']:.2f}]  ({state})")


if __name__ == "__main__":
    main()
