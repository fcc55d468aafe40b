"""The ``regnet`` command: one subcommand per job, each a thin shell over a library function."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import SimpleITK as sitk

from regnet import RegNetError, __version__
from regnet.io import describe, read_image

#: Subcommands whose module provides CLI_HELP, add_arguments(parser) and {name}_command(args).
SUBCOMMANDS = {
    "phantom": "regnet.phantom",
    "masks": "regnet.masks",
    "generate": "regnet.generate",
    "train": "regnet.train",
    "register": "regnet.register",
    "register-series": "regnet.register",
    "evaluate": "regnet.evaluate",
    "compare": "regnet.report",
    "demo": "regnet.demo",
    "evaluate-synthetic": "regnet.evaluate_synthetic",
}


def _cmd_info(args) -> int:
    image = read_image(args.path, volume=args.volume, vector=_looks_like_dvf(args.path))
    info = {"path": str(args.path), **describe(image)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    fmt = lambda v: " x ".join(f"{x:g}" for x in v)  # noqa: E731
    print(f"{info['path']}  ({info['kind']})")
    print(f"  size        {fmt(info['size'])} voxels (x, y, z)")
    print(f"  spacing     {fmt(info['spacing'])} mm")
    print(f"  origin      {', '.join(f'{x:.3f}' for x in info['origin'])} mm")
    d = info["direction"]
    print("  direction   " + " | ".join(" ".join(f"{v:+.4f}" for v in d[r * 3:r * 3 + 3]) for r in range(3)))
    print(f"  extent      {fmt(info['physical_extent_mm'])} mm")
    print(f"  pixel type  {info['pixel_type']} ({info['components']} component(s))")
    print(f"  intensity   [{info['min']:g}, {info['max']:g}]")
    if info["kind"] == "dvf":
        print(f"  |u| max     {info['max_displacement_mm']:.3f} mm, mean {info['mean_displacement_mm']:.3f} mm")
    return 0


def _looks_like_dvf(path) -> bool:
    path = Path(path)
    if path.is_dir():
        return False
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader.GetNumberOfComponents() == 3
    except RuntimeError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regnet", description="RegNet: supervised 3D deformable registration.")
    parser.add_argument("--version", action="version", version=f"regnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="geometry, pixel type and intensity range of an image, DICOM folder or DVF")
    p.add_argument("path", type=Path)
    p.add_argument("--volume", type=int, default=None, help="volume index for a 4D file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        key = name.replace("-", "_")  # a module's second command: {KEY}_CLI_HELP, {key}_add_arguments
        p = sub.add_parser(name, help=getattr(module, f"{key.upper()}_CLI_HELP", module.CLI_HELP))
        getattr(module, f"{key}_add_arguments", module.add_arguments)(p)
        p.set_defaults(func=getattr(module, f"{key}_command"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RegNetError as err:
        print(f"regnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished files are kept, re-run to resume", file=sys.stderr)
        return 130
