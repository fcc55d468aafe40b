"""Physical-space geometry of an image grid: index <-> world (mm) through direction cosines.

ITK's rule is ``p = origin + D @ (spacing * index)`` with the index in (x, y, z) order. Every
conversion in the project goes through :class:`Geometry` so direction and anisotropic spacing
are never silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from regnet import RegNetError

if TYPE_CHECKING:  # only method calls on images here: the device path imports this without SimpleITK
    import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """Size (x, y, z), spacing (mm), origin (mm) and the 3x3 direction matrix of a grid."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """NumPy array shape (z, y, x)."""
        return tuple(reversed(self.size))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_physical(self, index_xyz) -> np.ndarray:
        """Continuous (x, y, z) indices, shape (..., 3) -> physical points in mm."""
        idx = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.matrix.T

    def physical_to_index(self, points_xyz) -> np.ndarray:
        """Physical points in mm, shape (..., 3) -> continuous (x, y, z) indices."""
        pts = np.asarray(points_xyz, dtype=float) - np.asarray(self.origin)
        return (pts @ np.linalg.inv(self.matrix).T) / np.asarray(self.spacing)

    def world_axis_of_array_axes(self) -> np.ndarray:
        """For each index axis (x, y, z), the world axis (0=x, 1=y, 2=z) it runs closest to."""
        return np.argmax(np.abs(self.matrix), axis=0)

    def close_to(self, other: Geometry, tol: float = 1e-4) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
                and np.allclose(self.origin, other.origin, atol=tol * 10, rtol=0)
                and np.allclose(self.direction, other.direction, atol=tol, rtol=0))


def world_coordinate(geometry: Geometry, axis: int) -> np.ndarray:
    """Physical coordinate ``axis`` (0=x, 1=y, 2=z) of every voxel as a broadcastable float32 array:
    only the index axes it depends on are materialised ((Z, 1, 1) for an axial volume's z)."""
    d, s, o = geometry.matrix, geometry.spacing, geometry.origin
    nx, ny, nz = (int(n) for n in geometry.size)
    shapes = ((1, 1, nx), (1, ny, 1), (nz, 1, 1))
    out = np.full((1, 1, 1), o[axis], np.float32)
    for k, (n, shape) in enumerate(zip((nx, ny, nz), shapes)):
        if d[axis, k] != 0:
            out = out + (np.float32(d[axis, k] * s[k]) * np.arange(n, dtype=np.float32)).reshape(shape)
    return out


def require_same_geometry(a: sitk.Image, b: sitk.Image, what: str = "images") -> None:
    """Raise a specific error when two images do not share one grid (where a voxelwise op needs it)."""
    ga, gb = Geometry.of(a), Geometry.of(b)
    if ga.close_to(gb):
        return
    diffs = [f"{name}: {getattr(ga, name)} vs {getattr(gb, name)}"
             for name in ("size", "spacing", "origin", "direction")
             if not np.allclose(np.asarray(getattr(ga, name), float), np.asarray(getattr(gb, name), float),
                                atol=1e-4)]
    raise RegNetError(f"The {what} are on different grids ({'; '.join(diffs)}). "
                      "Resample one onto the other first (regnet.io.resample_like).")
