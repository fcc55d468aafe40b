"""Augmentations of RegNet (regnet_spec.md sections 1.2 and 1.5): next image, sponge, noise,
occlusion, applied as an ordered chain such as ``Clean_Sponge_Noise``.

All randomness comes from the generator passed in (seeded by the stable hash), never from
the wall clock (RegNet's noise used SimpleITK's seed 0, which means "wall clock").
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from regnet.deform.bspline import random_bspline_field
from regnet.deform.field import jacobian_determinant, warp, warp_masks
from regnet.deform.methods import max_abs, voxels
from regnet.deform.sponge_rule import sponge_factor_weight
from regnet.geometry import Geometry
from regnet.io import dvf_to_image, image_from_array, round_array
from regnet.settings import DeformExp


def sponge(image: np.ndarray, jacobian: np.ndarray, torso: np.ndarray, exp: DeformExp, rng) -> np.ndarray:
    """Intensity change consistent with the local volume change (mass conservation).

    ``Deformed(x) = Image(x + u(x))``: the deformed voxel at x gathers the tissue of a region J(x)
    times its size, so its density is multiplied by J (RegNet divided by J, the wrong way round).
    Density is proportional to HU + 1000 (RegNet scaled raw HU). J is clipped to
    ``Sponge_JacobianClip``, in the torso. The random factor U(Sponge_ScaleRange) (a different
    inspiration level) changes parenchyma only: water-like tissue, fat and bone keep their HU up
    to J (:func:`sponge_factor_weight`; applied to density everywhere it moved soft tissue by
    up to 100 HU).
    """
    out = image.astype(np.float32)  # always a copy
    _sponge_in_place(out, jacobian, torso, exp, rng)
    return out


SLAB_VOXELS = 1 << 20


def _slabs(shape):
    """Slices of whole z planes of about :data:`SLAB_VOXELS` voxels: the in-place steps work slab by slab,
    so their temporaries stay a few MB instead of several whole-torso arrays (~0.4 GB at 20.8 M
    voxels, paid in first-touch page faults). Torso voxels come in the same (C) order."""
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(z, z + step) for z in range(0, shape[0], step)]


def _sponge_in_place(out: np.ndarray, jacobian: np.ndarray, torso: np.ndarray, exp: DeformExp, rng) -> None:
    """:func:`sponge` on ``out`` itself, touching torso voxels only, slab by slab."""
    factor = rng.uniform(*exp.Sponge_ScaleRange)
    for z in _slabs(out.shape):
        inside = torso[z]
        hu = out[z][inside]
        scale = sponge_factor_weight(hu)
        scale *= factor - 1.0
        scale += 1.0
        hu += 1000.0
        jac = jacobian[z][inside]  # a copy (boolean index): clipped in place
        hu *= np.clip(jac, *exp.Sponge_JacobianClip, out=jac)
        hu *= scale
        hu -= 1000.0
        out[z][inside] = hu


def noise(image: np.ndarray, torso: np.ndarray, sigma: float, average: float, rng) -> np.ndarray:
    """Gaussian noise N(mean, sigma) in the torso, mean = int(U(-average, average)) as RegNet."""
    out = image.astype(np.float32)  # always a copy
    _noise_in_place(out, torso, sigma, average, rng)
    return out


def _noise_in_place(out: np.ndarray, torso: np.ndarray, sigma: float, average: float, rng) -> None:
    mean = float(int(rng.uniform(-average, average)))
    for z in _slabs(out.shape):  # successive draws continue one stream: the same numbers as one draw
        inside = torso[z]
        draw = rng.standard_normal(int(np.count_nonzero(inside)), dtype=np.float32)  # float32: half the cost
        draw *= np.float32(sigma)
        draw += np.float32(mean)
        out[z][inside] += draw


def occlusion(image: np.ndarray, lung: np.ndarray, exp: DeformExp, rng) -> np.ndarray:
    """Dark ellipsoids (about -800 HU) placed in the eroded lung, with three soft outer shells
    (occlusion weights 0.2, 0.6, 0.9) and N(0, 10) texture inside. Semi-axes in voxels."""
    out = image.astype(np.float32).copy()
    inner = ndimage.binary_erosion(lung, np.ones((9, 9, 9), bool))
    centres = np.argwhere(inner)
    if len(centres) == 0:
        return out
    shape = np.asarray(out.shape)
    limits = np.array([exp.Occlusion_Max_c, exp.Occlusion_Max_b, exp.Occlusion_Max_a])  # (z, y, x)
    for _ in range(exp.Occlusion_NumberOfEllipse):
        centre = centres[rng.integers(len(centres))]
        axes = np.maximum(rng.uniform(0, 1, 3) * limits, 3.0)
        lo = np.maximum(centre - np.ceil(axes).astype(int) - 1, 0)
        hi = np.minimum(centre + np.ceil(axes).astype(int) + 2, shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        q = np.sqrt(((zz - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2
                    + ((xx - centre[2]) / axes[2]) ** 2)
        depth = (1.0 - q) * axes.min()                 # approximate voxels inside the surface
        weight = np.select([depth >= 3, depth >= 2, depth >= 1, depth >= 0], [1.0, 0.9, 0.6, 0.2], 0.0)
        value = float(rng.integers(int(exp.Occlusion_IntensityRange[0]), int(exp.Occlusion_IntensityRange[1])))
        texture = value + np.where(depth >= 3, rng.normal(0, 10, size=depth.shape), 0.0)
        box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[...] = box * (1 - weight) + texture * weight
    return out


def intensity_chain(clean: np.ndarray, jacobian: np.ndarray, torso: np.ndarray, lung: np.ndarray,
                    exp: DeformExp, rngs: dict) -> np.ndarray:
    """Apply ``exp.DeformedImExt`` in order ('Clean' first); ``rngs`` has one generator per step."""
    image = clean.astype(np.float32)  # the one copy; sponge and noise then work in place
    for step in exp.DeformedImExt[1:]:
        if step == "Sponge":
            _sponge_in_place(image, jacobian, torso, exp, rngs["Sponge"])
        elif step == "Noise":
            _noise_in_place(image, torso, exp.Im_NoiseSigma, exp.Im_NoiseAverage, rngs["Noise"])
        elif step == "Occluded":
            image = occlusion(image, lung, exp, rngs["Occluded"])
    return image


def next_image(image: sitk.Image, torso: sitk.Image, lung: sitk.Image, exp: DeformExp, rngs: dict,
               default: float = -2048.0) -> dict:
    """Anatomy augmentation: a freshly deformed copy of the original (single-frequency field up to
    ``NextIm_MaxDeform``, no mask-to-zero), masks warped with it, then sponge and light noise.
    Used as the base image for dsmooth > 0. Smoothing follows the image's spacing. Returns SimpleITK
    images: ``image``, ``torso``, ``lung`` and the ``field`` that made them (VectorFloat32, mm)."""
    g = Geometry.of(image)
    m = exp.NextIm_MaxDeform
    dvf = random_bspline_field(g, exp.SingleFrequency_BSplineGridSpacing[0], m,
                               exp.SingleFrequency_SetGridBorderToZero[0],
                               voxels(exp.SingleFrequency_GridSmoothingSigma, g), rngs["NextDVF"], "single")
    peak = max_abs(dvf)
    if peak > m:
        dvf *= m / peak
    field = dvf_to_image(dvf, g)
    dvf = sitk.GetArrayViewFromImage(field)  # a view: the 250 MB array of the draw is freed (peak memory)
    warped = warp(image, field, "bspline", default)
    next_torso, next_lung = warp_masks(torso, lung, field)
    torso_arr = sitk.GetArrayViewFromImage(next_torso) > 0
    arr = sponge(sitk.GetArrayViewFromImage(warped), jacobian_determinant(dvf, g), torso_arr, exp, rngs["NextSponge"])
    _noise_in_place(arr, torso_arr, exp.NextIm_SigmaN, exp.Im_NoiseAverage, rngs["NextNoise"])
    if image.GetPixelID() == sitk.sitkInt16:
        arr = round_array(arr, np.int16)
    out = image_from_array(arr, g)
    return {"image": out, "torso": next_torso, "lung": next_lung, "field": field}
