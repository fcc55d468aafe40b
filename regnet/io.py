"""Read and write images, masks and DVFs in physical space, and resample between grids.

Everything is a ``SimpleITK.Image``, so spacing, origin and direction travel with the voxels.
Reading checks what later stages rely on (3D, finite values) and fails with a message that
says what to do; writing is atomic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from regnet import RegNetError
from regnet.files import atomic_path, full_suffix
from regnet.geometry import Geometry
from regnet.image_integrity import MET_DTYPES, check_file_complete, check_slice_positions, metaimage_header

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".img", ".hdr")
WRITE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")

INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


@dataclass(frozen=True)
class RawSpec:
    """How to read a headerless raw volume (e.g. DIR-Lab ``.img``): the header lives in the layout.

    ``flip_z`` reverses the slice order on reading, so that the z index increases cranially with
    an identity direction (DIR-Lab files store the top slice first).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str = "<i2"
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flip_z: bool = False
    intensity_offset: float = 0.0
    min_value: float | None = None


def read_raw(path: Path, spec: RawSpec) -> sitk.Image:
    nx, ny, nz = spec.size
    data = np.fromfile(path, dtype=np.dtype(spec.dtype))
    if data.size != nx * ny * nz:
        raise RegNetError(f"{path}: {data.size} voxels of {spec.dtype} on disk, but the layout says "
                          f"{nx}x{ny}x{nz} = {nx * ny * nz}. Check the size table or the dtype.")
    array = data.reshape(nz, ny, nx)
    if spec.flip_z:
        array = array[::-1]
    array = array.astype(np.int16 if np.dtype(spec.dtype).kind in "iu" else np.float32)
    if spec.intensity_offset:
        array = array + np.int16(spec.intensity_offset) if array.dtype == np.int16 else array + spec.intensity_offset
    if spec.min_value is not None:
        array = np.maximum(array, array.dtype.type(spec.min_value))
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spec.spacing))
    image.SetOrigin(tuple(float(o) for o in spec.origin))
    return image


def read_dicom_series(folder: Path, series_id: str | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise RegNetError(f"{folder}: a folder, but no DICOM series was found in it.")
    if series_id is None:
        if len(ids) > 1:
            raise RegNetError(f"{folder} holds {len(ids)} DICOM series {list(ids)}; choose one with series_id=.")
        series_id = ids[0]
    elif series_id not in ids:
        raise RegNetError(f"{folder}: no DICOM series {series_id!r}; found {list(ids)}.")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # slice positions, to catch a missing slice ITK would paper over
    image = reader.Execute()
    positions = []
    for i in range(len(files)):
        value = reader.GetMetaData(i, "0020|0032") if reader.HasMetaDataKey(i, "0020|0032") else ""
        try:
            positions.append(tuple(float(v) for v in value.split("\\")))
        except ValueError:
            positions.append(None)
    positions = [p if p is not None and len(p) == 3 else None for p in positions]
    if image.GetDimension() == 3:
        check_slice_positions(folder, list(files), positions, np.asarray(image.GetDirection()).reshape(3, 3)[:, 2])
    return image


def read_image(path, *, raw: RawSpec | None = None, volume: int | None = None,
               series_id: str | None = None, vector: bool = False) -> sitk.Image:
    """Read a 3D image (mha/mhd, nii/nii.gz, nrrd, DICOM file or series folder, raw ``.img``).

    ``volume`` picks one 3D volume out of a 4D file; ``vector=True`` accepts vector pixels (DVFs).
    """
    path = Path(path)
    if not path.exists():
        raise RegNetError(f"{path}: no such file or folder.")
    try:
        if path.is_dir():
            image = read_dicom_series(path, series_id)
        elif raw is not None:
            image = read_raw(path, raw)
        elif full_suffix(path).lower() == ".img" and not path.with_suffix(".hdr").exists():
            raise RegNetError(f"{path}: a headerless raw volume; its size and spacing come from a data "
                              "layout (e.g. DIR-Lab_4D) or a RawSpec.")
        else:
            check_file_complete(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise RegNetError(f"{path}: SimpleITK cannot read this file ({first}).") from None
    image = _select_3d(image, path, volume)
    check_image(image, path, vector=vector)
    return image


def _select_3d(image: sitk.Image, path: Path, volume: int | None) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 4:
        n = image.GetSize()[3]
        if volume is None:
            raise RegNetError(f"{path} is 4D ({'x'.join(map(str, image.GetSize()))}): RegNet registers 3D "
                              f"volumes. Pick one with volume=0..{n - 1} (CLI: --volume K).")
        if not 0 <= volume < n:
            raise RegNetError(f"{path}: volume {volume} out of range 0..{n - 1}.")
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, volume])
    if volume not in (None, 0):
        raise RegNetError(f"{path} is {dim}D; volume={volume} only applies to 4D files.")
    return image


def check_image(image: sitk.Image, path="image", vector: bool = False) -> None:
    """Raise for what RegNet cannot use: not 3D, a flat axis, vector pixels, NaN or inf."""
    _check_grid(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), path, vector)
    _check_finite(sitk.GetArrayViewFromImage(image), path)


def _check_grid(dimension: int, size, ncomp: int, path, vector: bool) -> None:
    if dimension != 3:
        raise RegNetError(f"{path} is {dimension}D; RegNet needs 3D volumes.")
    if min(size) < 2:
        raise RegNetError(f"{path} has size {tuple(size)}: a single slice (2D), but RegNet needs 3D volumes.")
    if vector and ncomp != 3:
        raise RegNetError(f"{path}: a DVF needs 3 components per voxel, found {ncomp}.")
    if not vector and ncomp != 1:
        raise RegNetError(f"{path} has {ncomp} components per voxel; expected a scalar image "
                          "(is this a DVF or an RGB image?).")


def _check_finite(array: np.ndarray, path) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise RegNetError(f"{path} contains {bad} NaN or infinite values; fix or mask them first.")


def map_metaimage(path, vector: bool = False) -> tuple[np.ndarray, Geometry] | None:
    """The voxels of an uncompressed one-file MetaImage (``.mha``, ``ElementDataFile = LOCAL``) mapped
    read-only from the file, (z, y, x) or (z, y, x, c), and its grid; None for any other file (read
    it with :func:`read_image`). Checked as :func:`read_image` checks (complete, 3D, finite).

    Why: the patch reader's chunks are mostly DVFs (three float32 per voxel). Mapping serves them
    from the page cache instead of allocating, filling and copying ~70 MB per stage-1 pair, and a
    patch touches only its own pages. SimpleITK reads the grid (its direction conventions), NumPy
    maps the voxels."""
    path = Path(path)
    if full_suffix(path).lower() != ".mha" or not path.is_file():
        return None
    check_file_complete(path)  # a truncated file: its own clear error
    with open(path, "rb") as fh:  # header, size and voxels from this one open file
        parsed = metaimage_header(fh)
        if parsed is None:
            return None
        header, start = parsed
        dtype = MET_DTYPES.get(header.get("ElementType", ""))
        if (dtype is None or header.get("ElementDataFile") != "LOCAL"
                or header.get("CompressedData", "False").lower() == "true"
                or header.get("BinaryData", "True").lower() != "true"):
            return None
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None  # read_image says what is wrong
        ncomp = reader.GetNumberOfComponents()
        _check_grid(reader.GetDimension(), reader.GetSize(), ncomp, path, vector)
        big_endian = header.get("BinaryDataByteOrderMSB",
                                header.get("ElementByteOrderMSB", "False")).lower() == "true"
        shape = tuple(reversed(reader.GetSize())) + ((ncomp,) if ncomp > 1 else ())
        dtype = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
        held = os.fstat(fh.fileno())
        if (os.stat(path).st_ino != held.st_ino  # replaced while we read it (regenerated): read it again
                or held.st_size - start != int(np.prod(shape)) * dtype.itemsize):
            return None
        array = np.memmap(fh, dtype=dtype, mode="r", offset=start, shape=shape)  # the map outlives the file object
    _check_finite(array, path)
    return array, Geometry.of(reader)


def write_image(image: sitk.Image, path, compress: bool = True) -> Path:
    """Write atomically; the format follows the extension (.mha, .nii.gz, .nrrd, ...)."""
    path = Path(path)
    if full_suffix(path).lower() not in WRITE_SUFFIXES:
        raise RegNetError(f"{path}: write images as one of {', '.join(WRITE_SUFFIXES)}.")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def image_from_array(array: np.ndarray, reference: sitk.Image | Geometry) -> sitk.Image:
    """A (z, y, x) array (or (z, y, x, 3) vectors) on the grid of ``reference``."""
    geometry = reference if isinstance(reference, Geometry) else Geometry.of(reference)
    is_vector = array.ndim == 4
    if array.shape[:3] != geometry.shape:
        raise RegNetError(f"Array shape {array.shape[:3]} does not match the grid (z, y, x) {geometry.shape}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    return geometry.apply_to(image)


# ---------------------------------------------------------------- DVFs
def dvf_to_image(dvf: np.ndarray, reference) -> sitk.Image:
    """(z, y, x, 3) mm array, components (x, y, z) -> a VectorFloat32 image on the fixed grid."""
    dvf = np.asarray(dvf)
    if dvf.ndim != 4 or dvf.shape[-1] != 3:
        raise RegNetError(f"A DVF array must have shape (z, y, x, 3); got {dvf.shape}.")
    return image_from_array(dvf.astype(np.float32, copy=False), reference)


def dvf_to_array(image: sitk.Image) -> np.ndarray:
    """A displacement-field image -> (z, y, x, 3) float32 array in mm, components (x, y, z)."""
    check_image(image, "DVF", vector=True)
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


def read_dvf(path) -> sitk.Image:
    return read_image(path, vector=True)


def write_dvf(dvf, path, reference=None, compress: bool = True) -> Path:
    image = dvf if isinstance(dvf, sitk.Image) else dvf_to_image(dvf, reference)
    if image.GetPixelID() != sitk.sitkVectorFloat32:
        image = sitk.Cast(image, sitk.sitkVectorFloat32)
    return write_image(image, path, compress)


# ---------------------------------------------------------------- resampling
def _interpolator(name: str) -> int:
    try:
        return INTERPOLATORS[name]
    except KeyError:
        raise RegNetError(f"Unknown interpolator {name!r}; choose one of {sorted(INTERPOLATORS)}.") from None


def isotropic_geometry(geometry: Geometry, spacing: float) -> Geometry:
    """The grid with ``spacing`` mm voxels whose centres lie inside the original extent.

    Same origin and direction, so the first voxel centre is shared and the grid maps back exactly.
    """
    extent = (np.asarray(geometry.size) - 1) * np.asarray(geometry.spacing)
    size = tuple(int(n) for n in np.floor(extent / spacing + 1e-6).astype(int) + 1)
    return Geometry(size, (float(spacing),) * 3, geometry.origin, geometry.direction)


def smooth_for_downsampling(image: sitk.Image, new_spacing) -> sitk.Image:
    """Gaussian anti-aliasing before downsampling: sigma = (s_new - s_old)/2 mm on axes that shrink."""
    old = np.asarray(image.GetSpacing())
    sigma = np.maximum(np.asarray(new_spacing, float) - old, 0.0) / 2.0
    if not np.any(sigma > 0):
        return image
    pixel_id = image.GetPixelID()
    sigma = np.maximum(sigma, 1e-3 * old)  # the filter wants sigma > 0 on every axis
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma.tolist())
    if pixel_id == sitk.sitkFloat32:
        return smoothed
    return round_image(smoothed, pixel_id) if _is_integer(pixel_id) else sitk.Cast(smoothed, pixel_id)


def round_array(array: np.ndarray, dtype) -> np.ndarray:
    """A float array as integer ``dtype``, rounded (a plain cast truncates toward zero) and clipped to
    the type's range; ``array`` itself is rounded in place (pass a copy you own)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(array, out=array), info.min, info.max, out=array).astype(dtype)


def round_image(image: sitk.Image, pixel_id: int) -> sitk.Image:
    """:func:`round_array` for a SimpleITK image: rounded, clamped to the integer type, cast."""
    info = np.iinfo(sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype)
    clamped = sitk.Clamp(sitk.Round(image), image.GetPixelID(), float(info.min), float(info.max))
    return sitk.Cast(clamped, pixel_id)


def _is_integer(pixel_id: int) -> bool:
    return pixel_id in (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16,
                        sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64)


def resample_to_geometry(image: sitk.Image, geometry: Geometry, interpolator: str = "bspline",
                         default: float = 0.0, antialias: bool = True) -> sitk.Image:
    """Resample onto ``geometry`` (identity transform, physical space); smooth first if coarser."""
    if antialias and interpolator != "nearest":
        image = smooth_for_downsampling(image, geometry.spacing)
    out = sitk.Resample(image, list(geometry.size), sitk.Transform(), _interpolator(interpolator),
                        geometry.origin, geometry.spacing, geometry.direction, float(default),
                        image.GetPixelID())
    return out


def resample_isotropic(image: sitk.Image, spacing: float = 1.0, interpolator: str = "bspline",
                       default: float = 0.0, antialias: bool = True) -> sitk.Image:
    """Resample to ``spacing`` mm voxels (1 mm at stage 1, s mm at stage s), direction kept."""
    return resample_to_geometry(image, isotropic_geometry(Geometry.of(image), spacing),
                                interpolator, default, antialias)


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator: str = "bspline",
                  default: float = 0.0, antialias: bool = True) -> sitk.Image:
    """Resample onto the grid of ``reference`` (e.g. back from the isotropic training grid)."""
    return resample_to_geometry(image, Geometry.of(reference), interpolator, default, antialias)


# ---------------------------------------------------------------- description
def describe(image: sitk.Image) -> dict:
    """Size, spacing, origin, direction, pixel type and intensity range, JSON-friendly."""
    g = Geometry.of(image)
    array = sitk.GetArrayViewFromImage(image)
    info = {
        "size": list(g.size), "spacing": list(g.spacing), "origin": list(g.origin),
        "direction": list(g.direction), "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "physical_extent_mm": [float(x) for x in np.asarray(g.size) * np.asarray(g.spacing)],
    }
    if info["components"] == 3:
        magnitude = np.linalg.norm(array.astype(np.float64), axis=-1)
        info["kind"] = "dvf"
        info["max_displacement_mm"] = float(magnitude.max())
        info["mean_displacement_mm"] = float(magnitude.mean())
    else:
        info["kind"] = "image"
    info["min"] = float(array.min())
    info["max"] = float(array.max())
    return info
