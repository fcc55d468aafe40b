"""Affine pre-alignment through SimpleITK's registration framework (replaces RegNet's elastix call).

Mattes mutual information (so fixed and moving may differ in modality), optional fixed and moving
masks, a multi-resolution pyramid in millimetres, and the usual chain: centre initialisation ->
rigid (Euler3D) -> affine, as dipy's ``affine_registration`` does. The result is an ITK transform
mapping fixed physical points to moving ones (``x_moving = T(x_fixed)``), the same direction as
the DVF, so it composes with it directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError

KINDS = ("none", "rigid", "affine")


@dataclass(frozen=True)
class AffineOptions:
    """Pyramid levels as voxel sizes (mm): each level shrinks the images to about that spacing
    (never finer than the image) and smooths with sigma = half of it."""

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    iterations: int = 200
    bins: int = 50
    samples: int = 40000
    seed: int = 17
    strategy: str = "REGULAR"
    mask_margin_mm: float = 10.0
    #: Images finer than this (mm) are registered on an anti-aliased copy at this spacing: the finest
    #: level needs no more, and each level's smoothing then runs on a fraction of the voxels.
    working_mm: float = 2.0


def _float(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def _mask(mask, image: sitk.Image, name: str):
    if mask is None:
        return None
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise RegNetError(f"The {name} mask is empty; give a mask that covers the body, or none.")
    same = (mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
            and np.allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4)
            and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4))
    if not same:  # masks of another grid: nearest-neighbour onto the image's grid (physical space)
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return mask


def _working(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    if min(image.GetSpacing()) >= spacing_mm:
        return image
    from regnet.geometry import Geometry
    from regnet.io import resample_to_geometry

    g = Geometry.of(image)
    new = np.maximum(np.asarray(g.spacing), spacing_mm)
    size = tuple(int(n) for n in np.floor((np.asarray(g.size) - 1) * np.asarray(g.spacing) / new + 1e-6) + 1)
    return resample_to_geometry(image, Geometry(size, tuple(float(v) for v in new), g.origin, g.direction), "linear")


def _dilated(mask, margin_mm: float):
    """The mask grown by ``margin_mm`` so that the metric sees the body's outline (a strong edge)."""
    if mask is None or margin_mm <= 0:
        return mask
    radius = [max(1, round(margin_mm / s)) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, radius, sitk.sitkBall)


def _pyramid(fixed: sitk.Image, options: AffineOptions) -> tuple[list[int], list[float], list[float]]:
    """Shrink factors, smoothing sigmas (mm) and sampling fractions per level; levels finer than
    the image collapse into one at full resolution."""
    finest = min(fixed.GetSpacing())
    shrink, sigmas, fractions = [], [], []
    for level in options.levels_mm:
        s = max(1, round(level / finest))
        if shrink and s >= shrink[-1]:
            continue
        voxels = np.prod([max(1, n // s) for n in fixed.GetSize()])
        shrink.append(s)
        sigmas.append(0.5 * s * finest if s > 1 else 0.0)
        fractions.append(float(min(1.0, options.samples / voxels)))
    return shrink, sigmas, fractions


def _method(fixed, fixed_mask, moving_mask, options: AffineOptions) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(options.bins)
    shrink, sigmas, fractions = _pyramid(fixed, options)
    reg.SetMetricSamplingStrategy(getattr(reg, options.strategy))
    reg.SetMetricSamplingPercentagePerLevel(fractions, options.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=options.iterations,
                                                 relaxationFactor=0.8, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def centre_initialisation(fixed, moving, fixed_mask=None, moving_mask=None) -> sitk.Euler3DTransform:
    """Translate centre onto centre: the masks' centres of mass when both are given, else the
    images' geometric centres (intensity moments are meaningless for HU with air at -1000)."""
    if fixed_mask is not None and moving_mask is not None:
        init = sitk.CenteredTransformInitializer(_float(fixed_mask), _float(moving_mask), sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    else:
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return sitk.Euler3DTransform(init)


def affine_register(fixed: sitk.Image, moving: sitk.Image, fixed_mask=None, moving_mask=None,
                    kind: str = "affine", options: AffineOptions = AffineOptions()) -> sitk.Transform:
    """The rigid or affine transform T with ``fixed(x) ~ moving(T(x))`` (Euler3D or Affine)."""
    if kind not in ("rigid", "affine"):
        raise RegNetError(f"Unknown affine kind {kind!r}; choose one of {', '.join(KINDS)}.")
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise RegNetError(f"The {name} image must be a 3D scalar image for the affine step.")
    fixed, moving = _working(_float(fixed), options.working_mm), _working(_float(moving), options.working_mm)
    fixed_mask, moving_mask = _mask(fixed_mask, fixed, "fixed"), _mask(moving_mask, moving, "moving")

    initial = centre_initialisation(fixed, moving, fixed_mask, moving_mask)
    fixed_mask = _dilated(fixed_mask, options.mask_margin_mm)
    moving_mask = _dilated(moving_mask, options.mask_margin_mm)
    reg = _method(fixed, fixed_mask, moving_mask, options)
    reg.SetInitialTransform(initial, inPlace=True)
    rigid = _run(reg, fixed, moving, "rigid")
    rigid = sitk.Euler3DTransform(rigid.Downcast() if hasattr(rigid, "Downcast") else rigid)
    if kind == "rigid":
        return rigid
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    reg = _method(fixed, fixed_mask, moving_mask, options)
    reg.SetInitialTransform(affine, inPlace=True)
    return sitk.AffineTransform(_run(reg, fixed, moving, "affine"))


def _run(reg: sitk.ImageRegistrationMethod, fixed, moving, what: str) -> sitk.Transform:
    try:
        result = reg.Execute(fixed, moving)
    except RuntimeError as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise RegNetError(f"The {what} registration failed ({last}). The images may not overlap after centring, "
                          "or the masks leave too few samples; check the masks or use --affine none.") from None
    return result


def as_matrix(transform: sitk.Transform, center) -> tuple[np.ndarray, np.ndarray]:
    """(M, b) with ``T(p) = M p + b`` for a linear transform, measured by mapping points around
    ``center``; raises when the transform is not affine (e.g. a B-spline .tfm)."""
    c = np.asarray(center, float)
    probes = [c] + [c + 100.0 * e for e in np.eye(3)]
    mapped = [np.asarray(transform.TransformPoint(tuple(p))) for p in probes]
    m = np.stack([(mapped[k + 1] - mapped[0]) / 100.0 for k in range(3)], axis=1)
    b = mapped[0] - m @ c
    check = c + np.array([37.0, -53.0, 71.0])
    if not np.allclose(np.asarray(transform.TransformPoint(tuple(check))), m @ check + b, atol=1e-6):
        raise RegNetError(f"The transform {transform.GetName()} is not affine; an affine pre-alignment must be "
                          "a rigid, similarity or affine transform.")
    return m, b


def read_transform(path) -> sitk.Transform:
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise RegNetError(f"{path}: no such transform file.")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError:
        raise RegNetError(f"{path}: SimpleITK cannot read this transform file (.tfm/.txt/.h5 expected).") from None


def write_transform(transform: sitk.Transform, path) -> None:
    from regnet.files import atomic_path

    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
