"""Is an image file complete? Checks that SimpleITK does not make.

ITK reads a ``.nii``/``.nii.gz`` cut short as valid (the missing slices come back as zeros),
reports a truncated ``.mha`` or an ``.mhd`` without its ``.raw`` as "No such file or directory",
and spaces a DICOM series with a missing slice uniformly (only printing a warning). A model
trained on such data shows nothing until its numbers are bad, so :func:`check_file_complete`
compares the bytes on disk with what the header promises (reading a gzip stream to its end,
which also verifies its CRC) and :func:`check_slice_positions` checks the slice spacing of a
DICOM series. Both raise :class:`~regnet.RegNetError` naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from regnet import RegNetError
from regnet.files import full_suffix

#: NumPy types of MetaImage element types (their sizes are MetaIO's MET_ValueTypeSize).
MET_DTYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
              "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
              "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}
_CUT = "the file was cut short (an interrupted copy or download?); copy it again"


def check_file_complete(path) -> None:
    """Raise when the file holds fewer voxel bytes than its header promises (or its data file is gone)."""
    path = Path(path)
    suffix = full_suffix(path).lower()
    if suffix in (".mha", ".mhd"):
        _check_metaimage(path)
    elif suffix == ".nii":
        with open(path, "rb") as fh:
            _check_nifti(path, fh.read(540), path.stat().st_size)
    elif suffix == ".nii.gz":
        head, size = _read_gzip_to_end(path)
        _check_nifti(path, head, size)


# ---------------------------------------------------------------- NIfTI
def _read_gzip_to_end(path: Path) -> tuple[bytes, int]:
    """The first 540 bytes and the length of the decompressed stream; raises if the stream is cut or corrupt."""
    head, size = b"", 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                if len(head) < 540:
                    head += chunk[:540 - len(head)]
                size += len(chunk)
    except EOFError:
        raise RegNetError(f"{path}: truncated: the gzip stream ends after {size} bytes, before its end marker; "
                          f"{_CUT}.") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise RegNetError(f"{path}: corrupt gzip data ({err}); {_CUT}.") from None
    return head, size


def _check_nifti(path: Path, head: bytes, size: int) -> None:
    for order in "<>":
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348:  # NIfTI-1
            dim = struct.unpack(f"{order}8h", head[40:56])
            bitpix = struct.unpack(f"{order}h", head[72:74])[0]
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540:  # NIfTI-2
            bitpix = struct.unpack(f"{order}h", head[14:16])[0]
            dim = struct.unpack(f"{order}8q", head[16:80])
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            break
    else:
        return  # not a header we know; SimpleITK will say what it thinks
    ndim = dim[0] if 1 <= dim[0] <= 7 else 0
    voxels = int(np.prod([max(int(n), 1) for n in dim[1:ndim + 1]], dtype=np.int64)) if ndim else 0
    expected = max(offset, 348) + voxels * max(int(bitpix), 0) // 8
    if size < expected:
        raise RegNetError(f"{path}: truncated: the NIfTI header promises {expected} bytes "
                          f"({'x'.join(str(n) for n in dim[1:ndim + 1])} voxels of {bitpix} bits), the file holds "
                          f"{size} ({100 * size / expected:.0f}%); {_CUT}.")


# ---------------------------------------------------------------- MetaImage
def metaimage_header(source) -> tuple[dict[str, str], int] | None:
    """The key = value lines of a MetaImage header up to ``ElementDataFile`` and the byte offset
    right after it (where LOCAL voxel data start); None when the file has no such header.
    ``source``: a path, or a binary file open at its start."""
    if hasattr(source, "read"):
        blob = source.read(1 << 16)
    else:
        with open(source, "rb") as fh:
            blob = fh.read(1 << 16)
    header = {}
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\n|\r|$)", blob):
        key, sep, value = match.group(1).decode("latin-1").partition("=")
        if not sep:
            continue
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return (header, match.end()) if "DimSize" in header else None
    return None


def _check_metaimage(path: Path) -> None:
    parsed = metaimage_header(path)
    if parsed is None:
        return  # not a header we understand; SimpleITK decides
    header, data_start = parsed
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    element = MET_DTYPES.get(header.get("ElementType", ""))
    element = np.dtype(element).itemsize if element else None
    compressed = header.get("CompressedData", "False").lower() == "true"
    expected = int(header["CompressedDataSize"]) if compressed and "CompressedDataSize" in header else (
        None if compressed or element is None else int(np.prod(dims, dtype=np.int64)) * channels * element)
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        holds = path.stat().st_size - data_start
        where = path
    elif data_file.upper() == "LIST" or "%" in data_file or " " in data_file:
        return  # a list or pattern of slice files: SimpleITK checks those
    else:
        raw = (path.parent / data_file) if not Path(data_file).is_absolute() else Path(data_file)
        if not raw.is_file():
            raise RegNetError(f"{path}: its voxel data file {raw} (ElementDataFile = {data_file}) is missing; keep "
                              f"the {Path(data_file).suffix or 'data'} file beside the header.")
        skip = int(header.get("HeaderSize", "0") or 0)
        holds = raw.stat().st_size - max(skip, 0)
        where = raw
    if expected is not None and holds < expected:
        what = "compressed bytes" if compressed else f"bytes ({'x'.join(map(str, dims))} x {channels} x {element})"
        raise RegNetError(f"{where}: truncated: the header {'of ' + path.name + ' ' if where != path else ''}"
                          f"promises {expected} {what} of voxel data, the file holds {holds} "
                          f"({100 * holds / expected:.0f}%); {_CUT}.")


# ---------------------------------------------------------------- DICOM series
def check_slice_positions(folder, files: list[str], positions: list[tuple[float, float, float] | None],
                          normal) -> None:
    """Slices of a series must be evenly spaced along the slice normal: a gap is a missing slice.

    ``positions`` are ImagePositionPatient of each file (None where absent: no check), in the
    series order; ``normal`` is the slice direction (third column of the image direction)."""
    if len(files) < 3 or any(p is None for p in positions):
        return
    along = np.asarray(positions, dtype=float) @ np.asarray(normal, dtype=float)
    steps = np.diff(along)
    typical = float(np.median(np.abs(steps)))
    bad = np.flatnonzero(np.abs(np.abs(steps) - typical) > max(0.1 * typical, 0.01))
    if typical == 0 or np.abs(steps).min() < 1e-3:
        i = int(np.argmin(np.abs(steps)))
        raise RegNetError(f"{folder}: DICOM slices {Path(files[i]).name} and {Path(files[i + 1]).name} lie at the same "
                          f"position ({along[i]:.3f} mm along the slice normal): two acquisitions in one series? "
                          "Separate them into their own folders.")
    if bad.size:
        i = int(bad[0])
        missing = round(abs(steps[i]) / typical) - 1
        what = (f"{missing} slice(s) missing" if missing >= 1 and abs(abs(steps[i]) - (missing + 1) * typical)
                <= max(0.1 * typical, 0.01) else "uneven slice spacing")
        raise RegNetError(f"{folder}: DICOM slices are {typical:g} mm apart, but there is a {abs(steps[i]):g} mm gap "
                          f"between {Path(files[i]).name} ({along[i]:g} mm) and {Path(files[i + 1]).name} "
                          f"({along[i + 1]:g} mm): {what} ({bad.size} irregular step(s) in {len(files)} slices). "
                          "Read as one volume it would be spaced uniformly and wrongly; restore the missing "
                          "files.")
