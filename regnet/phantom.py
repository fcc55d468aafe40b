"""A procedural chest-CT phantom in HU: the built-in data set, so nothing is ever downloaded.

Anatomy is drawn from implicit shapes in physical millimetres (LPS: +x patient left,
+y posterior, +z superior): a body with fat and muscle layers on a scanner table, two lungs
above dome-shaped diaphragms, liver below the right dome, heart, aorta, spine with discs and
canal, ribs and sternum, an airway tree from the trachea, and branching pulmonary vessel trees
(tapering radii, partial-volume edges). A light blur and noise finish it. Everything random
comes from the seed, so a seed is a reproducible "patient".

An exhale phase (T50) is made by a known smooth respiratory motion (diaphragm and liver up,
anterior chest wall in); its DVF and the vessel-bifurcation landmarks of both phases are kept.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from regnet import RegNetError
from regnet.deform.field import warp
from regnet.figures import orthogonal_slices_png
from regnet.geometry import Geometry
from regnet.io import dvf_to_image, write_dvf, write_image
from regnet.landmarks import write_landmarks
from regnet.seeding import rng_for

CLI_HELP = "write a procedural chest-CT phantom (image, lung and torso masks, exhale phase, landmarks)"

#: Physical extent (x, y, z) in mm that holds the adult-sized (scale 1) phantom.
BASE_EXTENT_MM = np.array([330.0, 270.0, 300.0])
AIR, FAT, MUSCLE, SOFT, LIVER, BLOOD, BONE, CORTEX, LUNG = -1000, -100, 50, 35, 60, 45, 300, 750, -850


@dataclass(frozen=True)
class PhantomSpec:
    seed: int = 1
    spacing: float = 1.5
    scale: float = 1.0
    size: tuple[int, int, int] | None = None  # (x, y, z); None = fit the anatomy
    noise_hu: float = 12.0
    exhale: bool = True

    def geometry(self) -> Geometry:
        size = self.size or tuple(int(n) for n in np.ceil(BASE_EXTENT_MM * self.scale / self.spacing))
        origin = tuple(float(-(n - 1) * self.spacing / 2) for n in size)
        return Geometry(tuple(int(n) for n in size), (float(self.spacing),) * 3, origin)


class _Canvas:
    """Coordinates of the grid as broadcastable (z, y, x) vectors, and the label/HU volumes."""
    def __init__(self, geometry: Geometry):
        self.g = geometry
        nx, ny, nz = geometry.size
        s = geometry.spacing[0]
        self.x = (geometry.origin[0] + s * np.arange(nx, dtype=np.float32))[None, None, :]
        self.y = (geometry.origin[1] + s * np.arange(ny, dtype=np.float32))[None, :, None]
        self.z = (geometry.origin[2] + s * np.arange(nz, dtype=np.float32))[:, None, None]
        self.hu = np.full(geometry.shape, AIR, dtype=np.float32)

    def index_box(self, lo, hi):
        """Array slices (z, y, x) covering the physical box [lo, hi] (x, y, z order)."""
        g = self.g
        i0 = np.floor((np.asarray(lo) - g.origin) / g.spacing).astype(int)
        i1 = np.ceil((np.asarray(hi) - g.origin) / g.spacing).astype(int) + 1
        i0, i1 = np.clip(i0, 0, g.size), np.clip(i1, 0, g.size)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))


def _capsule_weight(c: _Canvas, box, a, b, radius):
    """Partial-volume occupancy in [0, 1] of the capsule a-b (radius mm) inside ``box``."""
    z, y, x = c.z[box[0]], c.y[:, box[1]], c.x[:, :, box[2]]
    ab = b - a
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    d = np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
    return np.clip((radius - d) / c.g.spacing[0] + 0.5, 0.0, 1.0)


def _random_perpendicular(direction, rng):
    v = rng.normal(size=3)
    v -= direction * (v @ direction)
    return v / max(np.linalg.norm(v), 1e-9)


class _Anatomy:
    """Random proportions of one 'patient' and the implicit shapes built from them."""
    def __init__(self, spec: PhantomSpec, rng: np.random.Generator):
        s = spec.scale * rng.uniform(0.9, 1.08)
        self.s = s
        self.ax, self.ay = 140 * s * rng.uniform(0.92, 1.08), 100 * s * rng.uniform(0.9, 1.1)
        self.fat = 14 * s * rng.uniform(0.6, 1.5)
        self.muscle = 9 * s * rng.uniform(0.8, 1.2)
        h = BASE_EXTENT_MM[2] * spec.scale
        self.z_top = 0.42 * h * rng.uniform(0.95, 1.05)                       # lung apex
        self.dome = {-1: -0.06 * h * rng.uniform(0.8, 1.2), +1: -0.10 * h * rng.uniform(0.8, 1.2)}  # R, L
        self.dome_depth = 0.20 * h * rng.uniform(0.85, 1.15)
        self.lung_x = 0.50 * self.ax * rng.uniform(0.95, 1.05)
        self.lung_lx, self.lung_ly = 0.44 * self.ax, 0.90 * self.ay
        self.heart_c = np.array([0.15 * self.ax, -0.30 * self.ay, self.dome[+1] + 0.13 * h])
        self.heart_r = np.array([0.36 * self.ax, 0.42 * self.ay, 0.15 * h]) * rng.uniform(0.9, 1.1)
        self.spine_y = 0.58 * self.ay
        self.vertebra_r = 17 * s
        self.rib_pitch = 26 * s * rng.uniform(0.92, 1.08)

    def dome_height(self, x, y):
        """z of the diaphragm surface under each lung (paraboloid domes, right one higher)."""
        side = np.where(x < 0, -1, 1)
        top = np.where(side < 0, self.dome[-1], self.dome[+1])
        rx = (x - side * self.lung_x) / (self.lung_lx * 1.1)
        ry = (y - 0.0) / (self.lung_ly * 1.0)
        return top - self.dome_depth * (rx ** 2 + ry ** 2)

    def lung_inside(self, x, y, z):
        """Implicit lungs (bool) before the heart is carved out; works on arrays or points."""
        side = np.where(x < 0, -1, 1)
        zc = 0.5 * (self.z_top + self.dome[+1] - self.dome_depth)
        lz = 0.5 * (self.z_top - (self.dome[+1] - self.dome_depth)) * 1.15
        taper = np.clip((self.z_top - z) / (0.35 * (self.z_top - zc) + 1e-6), 0.35, 1.0)  # narrow apex
        r = (((x - side * self.lung_x) / (self.lung_lx * taper)) ** 2
             + ((y - 0.05 * self.ay) / (self.lung_ly * taper)) ** 2 + ((z - zc) / lz) ** 2)
        heart = (((x - self.heart_c[0]) / self.heart_r[0]) ** 2 + ((y - self.heart_c[1]) / self.heart_r[1]) ** 2
                 + ((z - self.heart_c[2]) / self.heart_r[2]) ** 2) <= 1.0
        return (r <= 1.0) & (z > self.dome_height(x, y)) & ~heart & (np.abs(x) > 0.12 * self.ax)


def _draw_tree(c: _Canvas, anatomy: _Anatomy, rng, start, direction, radius, generations, hu_range,
               weight: np.ndarray, hu: np.ndarray, inside=None, bifurcations=None, min_radius=0.6):
    """Grow a branching tree of tapering capsules that stays inside ``inside``; record bifurcations.

    Children split in one plane at 20-45 degrees and lean towards the organ's centre, and a
    branch that would leave the organ is re-aimed (up to 4 tries) or shortened, so the tree
    fills the lung the way pulmonary vessels do.
    """
    value = rng.uniform(*hu_range)
    side = 1 if start[0] >= 0 else -1
    centre = np.array([side * anatomy.lung_x, 0.05 * anatomy.ay,
                       0.5 * (anatomy.z_top + anatomy.dome[side] - anatomy.dome_depth)])
    stack = [(np.asarray(start, float), np.asarray(direction, float) / np.linalg.norm(direction), radius, 0)]
    while stack:
        a, d, r, gen = stack.pop()
        length = r * rng.uniform(7.0, 11.0)
        b = a + d * length
        if inside is not None:
            for _ in range(4):
                if inside(*b):
                    break
                to_centre = (centre - a) / max(np.linalg.norm(centre - a), 1e-6)
                d = d + 0.8 * to_centre + 0.3 * rng.normal(size=3)
                d /= np.linalg.norm(d)
                length *= 0.8
                b = a + d * length
            else:
                continue
        box = c.index_box(np.minimum(a, b) - r - 2, np.maximum(a, b) + r + 2)
        if box is not None:
            w = _capsule_weight(c, box, a, b, r)
            more = w > weight[box]
            hu[box] = np.where(more, value, hu[box])
            weight[box] = np.maximum(weight[box], w)
        if gen + 1 >= generations or r * 0.75 < min_radius:
            continue
        if bifurcations is not None and gen >= 1 and r >= 1.5 * anatomy.s:  # visible branch points only
            bifurcations.append(b.copy())
        perp = _random_perpendicular(d, rng)  # the two children split in one plane
        to_centre = (centre - b) / max(np.linalg.norm(centre - b), 1e-6)
        for sign in (-1, 1):
            angle = np.deg2rad(rng.uniform(20, 45))
            child = np.cos(angle) * d + sign * np.sin(angle) * perp + 0.25 * to_centre
            stack.append((b, child / np.linalg.norm(child), r * rng.uniform(0.72, 0.85), gen + 1))


#: Parenchymal texture (issue 15 item 5): mottling of about this many HU (1 sd) at the scale of
#: secondary lobules, and small peripheral vessels where the same random field is highest.
TEXTURE_HU, TEXTURE_SCALE_MM, SMALL_VESSEL_FRACTION, SMALL_VESSEL_HU = 50.0, 1.6, 0.04, -150.0


def _lung_texture(hu: np.ndarray, lung: np.ndarray, g: Geometry, rng) -> None:
    """Give the parenchyma what real lungs have and smooth ellipsoids lack: mottled density and
    small vessels everywhere up to the pleura, so Canny finds edges throughout the lung (the
    mixed-frequency method grows its fields from those edges). Drawn in mm from its own
    generator, so the rest of the anatomy of a seed is unchanged."""
    found = ndimage.find_objects(lung.astype(np.uint8))
    if not found:
        return
    box = found[0]
    field = ndimage.gaussian_filter(rng.standard_normal(hu[box].shape).astype(np.float32),
                                    TEXTURE_SCALE_MM / g.spacing[0], truncate=3.0)
    field /= max(float(field.std()), 1e-6)
    inside = lung[box]
    cut = float(np.quantile(field[inside], 1.0 - SMALL_VESSEL_FRACTION))
    vessel_w = np.clip((field - cut) / 0.5, 0.0, 1.0)          # soft-edged blobs, partial volume
    region = hu[box]
    textured = region + TEXTURE_HU * field
    textured = textured * (1 - vessel_w) + SMALL_VESSEL_HU * vessel_w
    region[inside] = np.minimum(textured[inside], np.maximum(region[inside], -100))  # vessels keep their HU


def make_phantom(spec: PhantomSpec = PhantomSpec()) -> dict:
    """The inhale phantom: ``image`` (Int16 HU), ``lung``/``torso`` (UInt8), ``landmarks`` (N,3 mm).

    With ``spec.exhale`` also ``exhale_image``, ``exhale_lung``, ``exhale_torso``, ``exhale_dvf``
    (on the exhale grid, pulling from inhale) and ``exhale_landmarks``.
    """
    g = spec.geometry()
    if min(g.size) < 16:
        raise RegNetError(f"Phantom grid {g.size} is too small; use a finer spacing or a larger size.")
    rng = rng_for("phantom", spec.seed)
    A = _Anatomy(spec, rng)
    c = _Canvas(g)
    x, y, z = c.x, c.y, c.z

    # Body: elliptic cross-section, fat and muscle layers by depth below the skin.
    rho = np.sqrt((x / A.ax) ** 2 + (y / A.ay) ** 2) * np.ones_like(z)
    depth = (1.0 - rho) * math.sqrt(A.ax * A.ay)
    torso = rho <= 1.0
    hu = c.hu
    hu[torso] = SOFT
    hu[torso & (depth < A.fat + A.muscle)] = MUSCLE
    hu[torso & (depth < A.fat)] = FAT
    table_y0 = A.ay + 12 * A.s
    table = (y > table_y0) & (y < table_y0 + 10 * A.s) & (np.abs(x) < 1.1 * A.ax) * np.ones_like(z, bool)
    hu[table] = 250.0

    # Abdomen below the domes: liver on the right, soft tissue elsewhere.
    below = torso & (z < A.dome_height(x, y)) & (depth > A.fat + A.muscle)
    hu[below & (x < 0.25 * A.ax)] = LIVER
    hu[below & (x >= 0.25 * A.ax)] = SOFT + 5

    # Lungs with a gravity gradient (posterior denser).
    lung = A.lung_inside(x, y, z) & torso & (depth > A.fat + A.muscle + 6 * A.s)
    hu[lung] = np.broadcast_to(LUNG + 40 * (y / A.ay), hu.shape)[lung]

    # Heart and descending aorta.
    heart = ((x - A.heart_c[0]) / A.heart_r[0]) ** 2 + ((y - A.heart_c[1]) / A.heart_r[1]) ** 2 \
        + ((z - A.heart_c[2]) / A.heart_r[2]) ** 2 <= 1.0
    hu[heart & torso] = BLOOD
    aorta = ((x - 0.12 * A.ax) ** 2 + (y - 0.30 * A.ay) ** 2 <= (11 * A.s) ** 2) & (z < A.heart_c[2] + A.heart_r[2])
    hu[aorta & torso & ~lung] = BLOOD + 5

    # Spine: vertebral bodies (cortex + trabecular), discs, canal and posterior arch.
    dv = np.sqrt(x ** 2 + (y - A.spine_y) ** 2)
    zmod = np.mod(z - 3.0, A.rib_pitch)
    disc = (zmod < 4 * A.s) * np.ones_like(dv, bool)
    body_v = dv <= A.vertebra_r
    hu[body_v & ~disc] = BONE
    hu[body_v & ~disc & (dv > A.vertebra_r - 2.5 * A.s)] = CORTEX
    hu[body_v & disc] = 90.0
    canal_y = A.spine_y + A.vertebra_r + 8 * A.s
    dc = np.sqrt(x ** 2 + (y - canal_y) ** 2)
    hu[(dc <= 12 * A.s) & (dc > 7 * A.s) & ~disc] = CORTEX
    hu[(dc <= 7 * A.s) * np.ones_like(disc)] = 15.0

    # Ribs: bands just inside the muscle layer, sloping down anteriorly, gap at the sternum.
    theta = np.arctan2(y, x) * np.ones_like(z)  # +pi/2 is posterior
    rib_rho = 1.0 - (A.fat + A.muscle + 3 * A.s) / math.sqrt(A.ax * A.ay)
    drop = 45 * A.s * (1 - np.sin(theta)) / 2
    z_rib = z + drop
    idx = np.round((z_rib - A.z_top) / A.rib_pitch)
    dz = z_rib - (A.z_top + idx * A.rib_pitch)
    z_low = min(A.dome.values()) - A.dome_depth
    ribs = (np.abs(rho - rib_rho) * math.sqrt(A.ax * A.ay) < 4.5 * A.s) & (np.abs(dz) < 5.5 * A.s) \
        & (idx <= 0) & (z_rib > z_low) & (np.abs(theta + np.pi / 2) > 0.3) & (np.abs(theta - np.pi / 2) > 0.12)
    hu[ribs & torso] = CORTEX - 100
    sternum = (np.abs(x) < 14 * A.s) & (np.abs(rho - rib_rho) * math.sqrt(A.ax * A.ay) < 6 * A.s) & (y < 0) \
        & (z < A.z_top - 20 * A.s) & (z > A.heart_c[2] - A.heart_r[2])
    hu[sternum & torso] = BONE + 100

    # Airways: trachea -> carina -> main bronchi -> a few generations inside the lungs.
    weight = np.zeros(g.shape, np.float32)
    tree_hu = np.zeros(g.shape, np.float32)
    z_hilum = A.dome[+1] + 0.45 * (A.z_top - A.dome[+1])
    carina = np.array([0.0, 0.05 * A.ay, z_hilum + 18 * A.s])
    top = np.array([0.0, -0.02 * A.ay, g.origin[2] + (g.size[2] + 2) * g.spacing[2]])
    air_w = np.zeros(g.shape, np.float32)
    air_hu = np.zeros(g.shape, np.float32)
    wall_w = np.zeros(g.shape, np.float32)
    for r_lumen, target_w in ((8.5 * A.s, air_w), (10.0 * A.s, wall_w)):
        box = c.index_box(np.minimum(top, carina) - 12 * A.s, np.maximum(top, carina) + 12 * A.s)
        if box is not None:
            target_w[box] = np.maximum(target_w[box], _capsule_weight(c, box, top, carina, r_lumen))
    inside_lung = lambda px, py, pz: bool(A.lung_inside(np.float32(px), np.float32(py), np.float32(pz)))  # noqa: E731
    for side in (-1, 1):
        hilum = np.array([side * 0.30 * A.ax, 0.05 * A.ay, z_hilum])
        for r_lumen, target_w in ((6.0 * A.s, air_w), (7.5 * A.s, wall_w)):
            box = c.index_box(np.minimum(carina, hilum) - 9 * A.s, np.maximum(carina, hilum) + 9 * A.s)
            if box is not None:
                target_w[box] = np.maximum(target_w[box], _capsule_weight(c, box, carina, hilum, r_lumen))
        direction = np.array([side * 0.6, 0.1, -0.4])
        _draw_tree(c, A, rng, hilum, direction, 4.5 * A.s, 4, (-1000, -990), air_w, air_hu, inside_lung)

    # Pulmonary vessel trees (arteries and veins) from each hilum.
    landmarks = []
    for side in (-1, 1):
        for _ in range(4):
            start = np.array([side * 0.28 * A.ax, rng.uniform(-0.15, 0.2) * A.ay,
                              z_hilum + rng.uniform(-20, 20) * A.s])
            direction = np.array([side * rng.uniform(0.4, 1.0), rng.uniform(-0.6, 0.6), rng.uniform(-0.8, 0.8)])
            _draw_tree(c, A, rng, start, direction, 5.0 * A.s, 10, (20, 90), weight, tree_hu, inside_lung,
                       bifurcations=landmarks, min_radius=0.5)
    vessels = lung & (weight > 0)
    hu[vessels] = (hu * (1 - weight) + tree_hu * weight)[vessels]
    _lung_texture(hu, lung, g, rng_for("phantom lung texture", spec.seed))
    wall = (wall_w > 0) & torso & ~lung
    hu[wall] = (hu * (1 - wall_w) + (-40.0) * wall_w)[wall]
    airway_lumen = (air_w > 0) & (lung | (wall_w > 0))  # small airways only inside the lung
    hu[airway_lumen] = (hu * (1 - air_w) + AIR * air_w)[airway_lumen]

    # Partial-volume blur and scanner noise.
    hu = ndimage.gaussian_filter(hu, sigma=0.6, truncate=3.0)
    hu += rng.normal(0.0, spec.noise_hu, size=hu.shape).astype(np.float32)
    lung_mask = lung.astype(np.uint8)  # vessels and small airways inside the lung belong to it
    torso_mask = torso.astype(np.uint8)

    def to_image(array, dtype):
        image = sitk.GetImageFromArray(array.astype(dtype) if array.dtype != dtype else array)
        return g.apply_to(image)

    out = {
        "image": to_image(np.clip(np.round(hu), -1024, 3071), np.int16),
        "lung": to_image(lung_mask, np.uint8),
        "torso": to_image(torso_mask, np.uint8),
        "landmarks": _inside(np.asarray(landmarks, float).reshape(-1, 3), lung_mask, g),
        "geometry": g,
    }
    if spec.exhale:
        out.update(_exhale(out, A, rng))
    return out


def _inside(points: np.ndarray, mask: np.ndarray, g: Geometry) -> np.ndarray:
    """The points whose nearest voxel is in ``mask``."""
    idx = np.round(g.physical_to_index(points)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(g.size)), axis=1)
    ok[ok] = mask[idx[ok, 2], idx[ok, 1], idx[ok, 0]] > 0
    return points[ok]


def _exhale(phantom: dict, A: _Anatomy, rng) -> dict:
    """A smooth respiratory motion to exhale: domes and liver up, anterior wall posterior.

    The DVF lives on the exhale grid and pulls from the inhale image (``T50(x) = T00(x + u(x))``),
    so at the diaphragm u_z < 0: an exhale point sits where, at inhale, tissue was lower.
    """
    g = phantom["geometry"]
    c = _Canvas(g)
    x, y, z = c.x, c.y, c.z
    amplitude = rng.uniform(8.0, 14.0) * A.s
    dome = A.dome_height(x, y)
    span = max(A.z_top - min(A.dome.values()), 1.0)
    above = np.clip((z - dome) / span, 0.0, 1.0)
    decay = 1.0 - np.log1p(above * 4.0) / np.log1p(4.0)       # 1 at the dome, 0 at the apex
    expansion = rng.uniform(0.04, 0.07) * decay
    u = np.zeros(g.shape + (3,), np.float32)
    u[..., 2] = -amplitude * decay * np.ones_like(x)
    u[..., 1] = (y - 0.6 * A.ay) * expansion                    # anterior points move in at exhale
    u[..., 0] = x * expansion * 0.3
    body = ndimage.gaussian_filter(sitk.GetArrayFromImage(phantom["torso"]).astype(np.float32),
                                   sigma=8.0 / g.spacing[0])
    u *= body[..., None]
    exhale_image = warp(phantom["image"], u, "bspline", default=AIR, reference=g)
    exhale_lung = warp(phantom["lung"], u, "nearest", reference=g)
    exhale_torso = warp(phantom["torso"], u, "nearest", reference=g)
    # Landmarks: solve q + u(q) = p for each inhale bifurcation p (fixed point, trilinear u).
    p = phantom["landmarks"]
    q = p.copy()
    for _ in range(30):
        idx = g.physical_to_index(q)[:, ::-1].T  # (z, y, x) rows for map_coordinates
        uq = np.stack([ndimage.map_coordinates(u[..., k], idx, order=1, mode="nearest") for k in range(3)], -1)
        q = p - uq
    return {"exhale_image": exhale_image, "exhale_lung": exhale_lung, "exhale_torso": exhale_torso,
            "exhale_dvf": u, "exhale_landmarks": q}


# ---------------------------------------------------------------- layout access
@functools.lru_cache(maxsize=4)
def _cached(spec: PhantomSpec) -> dict:
    return make_phantom(spec)


def spec_from_layout(layout, cn) -> PhantomSpec:
    params = dict(layout.phantom)
    size = params.pop("size", None)
    spacing = params.pop("spacing", 1.5)
    if isinstance(spacing, list):
        if len(set(spacing)) != 1:
            raise RegNetError(f"{layout.name}: phantom spacing must be isotropic, got {spacing}")
        spacing = spacing[0]
    try:
        seed = int(cn)
    except ValueError:
        raise RegNetError(f"{layout.name}: phantom cases are integer seeds, got {cn!r}") from None
    return PhantomSpec(seed=seed, spacing=float(spacing), size=tuple(size) if size else None, **params)


def phantom_case(layout, cn, type_name: str) -> dict:
    """Image, lung, torso and landmarks of phantom case ``cn`` (a seed); T50 is the exhale phase."""
    ph = _cached(spec_from_layout(layout, cn))
    if type_name == layout.types[0]:
        return {k: ph[k] for k in ("image", "lung", "torso", "landmarks")}
    return {"image": ph["exhale_image"], "lung": ph["exhale_lung"], "torso": ph["exhale_torso"],
            "landmarks": ph["exhale_landmarks"]}


def exhale_truth(layout, cn) -> sitk.Image:
    """The known DVF of phantom case ``cn``'s exhale phase: on the T50 grid, pulling from T00
    (``T50(x) = T00(x + u(x))``), so a registration of fixed T50 to moving T00 should find it."""
    ph = _cached(spec_from_layout(layout, cn))
    return dvf_to_image(ph["exhale_dvf"], ph["geometry"])


# ---------------------------------------------------------------- command line
def add_arguments(p) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=1, help="which 'patient' (default 1)")
    p.add_argument("--spacing", type=float, default=None, help="isotropic voxel size in mm (default 1.5)")
    p.add_argument("--scale", type=float, default=1.0, help="anatomy size factor (1 = adult)")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="grid size (default: fit the body)")
    p.add_argument("--small", action="store_true", help="a small, fast phantom for tests (3 mm voxels)")
    p.add_argument("--no-exhale", action="store_true", help="skip the exhale phase")
    p.add_argument("--png", action="store_true", help="also write axial/coronal/sagittal PNGs")


def write_phantom(ph: dict, out: Path, png: bool = False) -> list[Path]:
    written = [write_image(ph["image"], out / "T00.mha"), write_image(ph["lung"], out / "T00_lung.mha"),
               write_image(ph["torso"], out / "T00_torso.mha"),
               write_landmarks(ph["landmarks"], out / "T00_landmarks.txt")]
    if "exhale_image" in ph:
        written += [write_image(ph["exhale_image"], out / "T50.mha"),
                    write_image(ph["exhale_lung"], out / "T50_lung.mha"),
                    write_image(ph["exhale_torso"], out / "T50_torso.mha"),
                    write_dvf(ph["exhale_dvf"], out / "T50_to_T00_dvf.mha", reference=ph["geometry"]),
                    write_landmarks(ph["exhale_landmarks"], out / "T50_landmarks.txt")]
    if png:
        written.append(orthogonal_slices_png(ph["image"], out / "T00.png", overlays={"lung": ph["lung"]}))
        if "exhale_image" in ph:
            written.append(orthogonal_slices_png(ph["exhale_image"], out / "T50.png"))
    return written


def phantom_command(args) -> int:
    if args.spacing is not None and not (math.isfinite(args.spacing) and args.spacing > 0):
        raise RegNetError(f"phantom --spacing must be a positive number of mm, got {args.spacing:g}.")
    spacing = args.spacing if args.spacing is not None else (3.0 if args.small else 1.5)
    spec = PhantomSpec(seed=args.seed, spacing=spacing, scale=args.scale,
                       size=tuple(args.size) if args.size else None, exhale=not args.no_exhale)
    t0 = time.perf_counter()
    ph = make_phantom(spec)
    elapsed = time.perf_counter() - t0
    written = write_phantom(ph, args.out, png=args.png)
    lung_l = float(sitk.GetArrayViewFromImage(ph["lung"]).sum()) * np.prod(ph["geometry"].spacing) / 1e6
    print(f"phantom seed {spec.seed}: {ph['geometry'].size} voxels at {spacing:g} mm in {elapsed:.1f} s; "
          f"lung {lung_l:.2f} L; {len(ph['landmarks'])} landmarks")
    for path in written:
        print(f"  {path}")
    return 0
