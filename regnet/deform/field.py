"""DVF maths, the one place that touches it: warp, Jacobian determinant, composition, magnitude.

Convention (fixed): a DVF lives on the fixed grid, components (x, y, z) in mm, and pulls:
``warped(x) = moving(x + u(x))`` -- ITK's ``DisplacementFieldTransform`` / ``WarpImageFilter``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform import kernels
from regnet.geometry import Geometry
from regnet.io import INTERPOLATORS, _is_integer, dvf_to_image, image_from_array, round_array, round_image

__all__ = ["warp", "warp_masks", "bspline_coefficients", "jacobian_determinant", "compose", "invert", "magnitude",
           "as_dvf_image"]


def as_dvf_image(dvf, reference=None) -> sitk.Image:
    """Accept a DVF image or a (z, y, x, 3) array (with ``reference`` for its geometry)."""
    if isinstance(dvf, sitk.Image):
        return dvf
    if reference is None:
        raise RegNetError("A DVF given as an array needs a reference image or Geometry for its grid.")
    return dvf_to_image(np.asarray(dvf, dtype=np.float32), reference)


def bspline_coefficients(image: sitk.Image) -> sitk.Image:
    """Cubic B-spline coefficients of an image (float32, its grid), for :func:`warp` (``coefficients=``).
    Computing them separately lets a caller overlap this step with other work. Same recursion and
    boundary as SimpleITK's ``BSplineDecomposition``, compiled (:mod:`regnet.deform.kernels`)."""
    out = sitk.GetImageFromArray(kernels.bspline_coefficients_array(sitk.GetArrayViewFromImage(image)))
    out.CopyInformation(image)
    return out


def warp(image: sitk.Image, dvf, interpolator: str = "bspline", default: float = 0.0,
         reference=None, coefficients: sitk.Image | None = None) -> sitk.Image:
    """``image(x + u(x))`` on the DVF's grid. ``image`` may live on any grid (physical space).

    B-spline is cubic: a compiled kernel (:mod:`regnet.deform.kernels`, SimpleITK's numbers to
    ~1e-3) for scalar images, from ``coefficients`` (:func:`bspline_coefficients` of ``image``)
    when given. Other interpolators and vector images: SimpleITK's ``WarpImageFilter`` / ``Resample``.
    Integer images come back rounded (not truncated) to their own type.
    """
    field = as_dvf_image(dvf, reference)
    g = Geometry.of(field)
    try:
        kind = INTERPOLATORS[interpolator]
    except KeyError:
        raise RegNetError(f"Unknown interpolator {interpolator!r}; choose one of {sorted(INTERPOLATORS)}.") from None
    if image.GetNumberOfComponentsPerPixel() > 1:
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        return sitk.Resample(image, list(g.size), transform, kind, g.origin, g.spacing, g.direction,
                             float(default), image.GetPixelID())
    pixel_id = image.GetPixelID()
    if _zero_on_own_grid(field, image):  # every interpolator gives the samples back (the zero method)
        return sitk.Image(image)
    if interpolator == "bspline":
        coefficients = bspline_coefficients(image) if coefficients is None else coefficients
        array = kernels.warp_cubic(sitk.GetArrayViewFromImage(coefficients), Geometry.of(image), field, default)
        if _is_integer(pixel_id):
            array = round_array(array, sitk.GetArrayViewFromImage(image).dtype)
        elif pixel_id == sitk.sitkFloat64:
            array = array.astype(np.float64)
        return image_from_array(array, g)
    work = image if interpolator == "nearest" else sitk.Cast(image, sitk.sitkFloat32)
    warper = sitk.WarpImageFilter()
    warper.SetInterpolator(kind)
    warper.SetOutputParameteresFromImage(field)
    warper.SetEdgePaddingValue(float(default))
    out = warper.Execute(work, field)  # a float32 field is used as is: no 64-bit copy
    if out.GetPixelID() != pixel_id:
        out = round_image(out, pixel_id) if _is_integer(pixel_id) else sitk.Cast(out, pixel_id)
    return out


def _zero_on_own_grid(field: sitk.Image, image: sitk.Image) -> bool:
    """A zero displacement on the image's own grid. Every 4099th value first: a non-zero field is
    told at once; only a zero one (or one zero at every sample) is read whole."""
    if not Geometry.of(image).close_to(Geometry.of(field), tol=1e-6):
        return False
    u = sitk.GetArrayViewFromImage(field).reshape(-1)
    return not u[::4099].any() and not u.any()


def warp_masks(torso: sitk.Image, lung: sitk.Image, dvf, reference=None) -> tuple[sitk.Image, sitk.Image]:
    """Warp two binary masks in one nearest-neighbour pass (packed as bits of one label image)."""
    field = as_dvf_image(dvf, reference)
    g = Geometry.of(field)
    packed = (sitk.GetArrayViewFromImage(torso) > 0).view(np.uint8)
    packed = packed | ((sitk.GetArrayViewFromImage(lung) > 0).view(np.uint8) << 1)
    moved = packed if _zero_on_own_grid(field, torso) else kernels.warp_nearest(packed, Geometry.of(torso), field)
    return image_from_array(moved & 1, g), image_from_array(moved >> 1, g)


def _array_and_geometry(dvf, reference=None) -> tuple[np.ndarray, Geometry]:
    if isinstance(dvf, sitk.Image):
        return sitk.GetArrayViewFromImage(dvf), Geometry.of(dvf)
    if reference is None:
        raise RegNetError("A DVF given as an array needs a reference image or Geometry for its grid.")
    return np.asarray(dvf), reference if isinstance(reference, Geometry) else Geometry.of(reference)


def jacobian_determinant(dvf, reference=None) -> np.ndarray:
    """det(I + du/dp) per voxel, (z, y, x) float32, derivatives in physical units.

    Component k of u is differentiated along physical axis k: index derivatives (central
    differences, one-sided at the ends as ``np.gradient``) are mapped to physical ones through
    spacing and the direction matrix, so the result is right for anisotropic, rotated grids.
    u_x = a*x gives 1 + a. One compiled pass (:mod:`regnet.deform.kernels`): no gradient arrays.
    """
    u, g = _array_and_geometry(dvf, reference)
    if not u.any():  # the zero method: J = 1 without the pass over 9 derivatives
        return np.ones(u.shape[:3], np.float32)
    return kernels.jacobian_determinant(u, g)


def compose(u, v, reference=None) -> np.ndarray:
    """The DVF of "v, then u" for points: ``w(x) = v(x) + u(x + v(x))`` (linear interpolation).

    In the pull convention this is what a two-step registration yields: if stage 1 found
    ``u`` and the image warped by it was then registered with ``v``, the total field is
    ``compose(u, v)``. Outside ``u``'s grid, ``u`` counts as zero.
    """
    u_img = as_dvf_image(u, reference)
    v_img = as_dvf_image(v, reference if reference is not None else u_img)
    u_at = warp(sitk.Cast(u_img, sitk.sitkVectorFloat64), v_img, "linear", 0.0)
    return (sitk.GetArrayFromImage(u_at) + sitk.GetArrayViewFromImage(v_img)).astype(np.float32)


def invert(u, reference=None, iterations: int = 50, tolerance_mm: float = 1e-3) -> np.ndarray:
    """The inverse field on the same grid: ``v(x) = -u(x + v(x))``, so that composing the two gives
    zero (up to ``tolerance_mm`` where the iteration converges; folded fields have no inverse).

    SimpleITK's ``InvertDisplacementFieldImageFilter`` (fixed-point iteration, trilinear) does the work.
    """
    u_img = sitk.Cast(as_dvf_image(u, reference), sitk.sitkVectorFloat64)
    f = sitk.InvertDisplacementFieldImageFilter()
    f.SetMaximumNumberOfIterations(int(iterations))
    f.SetMeanErrorToleranceThreshold(float(tolerance_mm) / 10.0)
    f.SetMaxErrorToleranceThreshold(float(tolerance_mm))
    f.SetEnforceBoundaryCondition(False)
    return sitk.GetArrayFromImage(f.Execute(u_img)).astype(np.float32)


def magnitude(dvf) -> np.ndarray:
    """|u| per voxel in mm."""
    u = sitk.GetArrayViewFromImage(dvf) if isinstance(dvf, sitk.Image) else np.asarray(dvf)
    return np.sqrt(np.einsum("...c,...c->...", u, u, dtype=np.float32))


def to_grid_axes(dvf: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Physical components (x, y, z) -> components along the grid's own index axes: D^T u (mm).

    Networks see patches on the index grid, so what they learn and predict is displacement along
    those axes; for an identity direction this is the DVF itself (returned without a copy)."""
    d = geometry.matrix
    return dvf if np.allclose(d, np.eye(3)) else (np.asarray(dvf) @ d).astype(np.float32)


def from_grid_axes(dvf: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The inverse of :func:`to_grid_axes`: components along the index axes -> physical D v (mm)."""
    d = geometry.matrix
    return dvf if np.allclose(d, np.eye(3)) else (np.asarray(dvf) @ d.T).astype(np.float32)


def magnitude_class_edges(thresholds) -> list[tuple[float, float]]:
    """RegNet's classes of |u| from ClassBalanced thresholds [t0, ..., tK] (mm), whose last value is
    the top of the range (MaxDeform): [0, t0), [t0, t1), ..., [t(K-1), inf). K + 1 thresholds give
    K + 1 classes as in RegNet; the last one is open above so that fields a little over MaxDeform
    (respiratory motion reaches 1.2 M) keep their voxels instead of being dropped."""
    t = [float(x) for x in thresholds]
    if not t or any(x <= 0 for x in t) or any(b <= a for a, b in zip(t, t[1:])):
        raise RegNetError(f"Magnitude class thresholds must be positive and increasing (mm), got {t}.")
    return list(zip([0.0, *t[:-1]], [*t[:-1], float("inf")]))


def magnitude_class(dvf, thresholds) -> np.ndarray:
    """The class (uint8) of every voxel of a (..., 3) DVF under :func:`magnitude_class_edges`."""
    edges = magnitude_class_edges(thresholds)
    lows = np.asarray([lo for lo, _ in edges[1:]], np.float32)
    return np.searchsorted(lows, magnitude(dvf), side="right").astype(np.uint8)
