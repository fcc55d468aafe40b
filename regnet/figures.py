"""Figures people look at: three orthogonal slices of a volume, with mask outlines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet.files import atomic_path


def pyplot():
    """matplotlib.pyplot drawing without a display (Agg). Lazy: matplotlib costs ~0.3 s to import
    and only the commands that draw need it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, dpi: int = 90) -> Path:
    """Write a figure as PNG atomically (temporary name, then rename) and free it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def orthogonal_slices_png(image: sitk.Image, path, overlays: dict | None = None, window=(-1000, 400),
                          title: str | None = None, center_xyz=None) -> Path:
    """Axial, coronal and sagittal slices through the centre (or ``center_xyz`` indices), drawn
    with physical aspect ratios in radiological view (patient right on the left, anterior up)."""
    plt = pyplot()
    image = sitk.DICOMOrient(image, "LPS")  # display in one orientation whatever the direction
    overlays = {k: sitk.DICOMOrient(m, "LPS") for k, m in (overlays or {}).items()}
    array = sitk.GetArrayViewFromImage(image)
    sx, sy, sz = image.GetSpacing()
    nz, ny, nx = array.shape
    cx, cy, cz = center_xyz if center_xyz is not None else (nx // 2, ny // 2, nz // 2)
    views = [("axial", lambda a: a[cz], sy / sx, False), ("coronal", lambda a: a[:, cy, :], sz / sx, True),
             ("sagittal", lambda a: a[:, :, cx], sz / sy, True)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    colors = ["tab:red", "tab:cyan", "tab:green", "tab:orange"]
    for ax, (name, cut, aspect, flip) in zip(axes, views):
        ax.imshow(cut(array), cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect,
                  origin="lower" if flip else "upper", interpolation="nearest")
        for (label, mask), color in zip((overlays or {}).items(), colors):
            m = cut(sitk.GetArrayViewFromImage(mask))
            if m.any():
                ax.contour(m > 0, levels=[0.5], colors=color, linewidths=0.8)  # same data coords as imshow
                ax.plot([], [], color=color, label=label)
        ax.set_title(name)
        ax.set_axis_off()
    if overlays:
        axes[0].legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def orthogonal_views(image: sitk.Image, center_xyz=None) -> list[tuple]:
    """``[(name, slice, aspect, origin)]`` for axial, coronal and sagittal cuts of ``image``
    (scalar or vector) in radiological display (LPS, as :func:`orthogonal_slices_png`), ready for
    ``imshow(slice, aspect=aspect, origin=origin)``. ``center_xyz`` indexes the LPS-oriented grid."""
    oriented = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayViewFromImage(oriented)
    sx, sy, sz = oriented.GetSpacing()
    nz, ny, nx = array.shape[:3]
    cx, cy, cz = center_xyz if center_xyz is not None else (nx // 2, ny // 2, nz // 2)
    # copies: the view's buffer belongs to ``oriented``, which dies with this function
    return [("axial", np.array(array[cz]), sy / sx, "upper"), ("coronal", np.array(array[:, cy, :]), sz / sx, "lower"),
            ("sagittal", np.array(array[:, :, cx]), sz / sy, "lower")]
