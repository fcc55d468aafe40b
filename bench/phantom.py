"""Benchmark: seconds and peak memory to generate the phantom at 192^3 (target: under ~10 s).

    python bench/phantom.py [--seeds 3] [--size 192]

Prints one line per run (inhale only, and inhale + exhale phase with its DVF).
"""
import argparse
import resource
import time

import numpy as np

from regnet.phantom import PhantomSpec, make_phantom


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--spacing", type=float, default=1.5)
    args = parser.parse_args()
    n = args.size
    print(f"phantom {n}^3 at {args.spacing} mm, target 10 s")
    for exhale in (False, True):
        times = []
        for seed in range(1, args.seeds + 1):
            t0 = time.perf_counter()
            make_phantom(PhantomSpec(seed=seed, spacing=args.spacing, size=(n, n, n), exhale=exhale))
            times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        label = "inhale + exhale" if exhale else "inhale only    "
        print(f"  {label}: median {np.median(times):5.2f} s  (min {min(times):.2f}, max {max(times):.2f}) "
              f"over {len(times)} seeds; peak RSS so far {peak:.2f} GiB; "
              f"{'within' if np.median(times) <= 10 else 'OVER'} the 10 s target")


if __name__ == "__main__":
    main()
