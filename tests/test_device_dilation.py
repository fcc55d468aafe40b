"""Mixed frequency's dilation phases on the device against SciPy and the CPU's dilated_edge_mask."""

import numpy as np
import pytest
import SimpleITK as sitk
from keras import ops
from scipy import ndimage

from regnet import RegNetError
from regnet.deform import device, device_dilation
from regnet.deform.methods import _box_dilate, canny_edges, dilated_edge_mask
from regnet.geometry import Geometry
from regnet.phantom import PhantomSpec, make_phantom
from regnet.seeding import rng_for
from regnet.settings import load_deform_exp
from tests.conftest import run_under_jax

EXP = load_deform_exp("3D_max15_D14_K")
CONN18 = ndimage.generate_binary_structure(3, 2)


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def phantom():
    """A small chest phantom on a 2 mm grid, its lung and the Canny edges near it."""
    ph = make_phantom(PhantomSpec(seed=11, spacing=2.0, scale=0.6, size=(80, 70, 60), exhale=False))
    lung = sitk.GetArrayViewFromImage(ph["lung"]) > 0
    near = _box_dilate(lung)
    return ph["image"], sitk.GetArrayViewFromImage(ph["torso"]) > 0, lung, canny_edges(ph["image"], EXP, near), near


# ---------------------------------------------------------------- dilations as max-pooling
def test_max_pool_dilations_equal_scipy_binary_dilation():
    masks = np.random.default_rng(0).random((2, 17, 19, 23)) > 0.97
    x = masks.astype(np.float32)[..., None]
    cases = [(((-1, 1),) * 3, np.ones((3, 3, 3), bool)),
             (((-2, 2), (-3, 3), (-1, 1)), np.ones((5, 7, 3), bool)),          # anisotropic block
             (device_dilation.block_windows((4, 4, 4)), np.ones((9, 9, 9), bool))]
    for axis in range(3):                                                     # RegNet's directional element
        element = np.zeros((9, 9, 9), bool)
        element[tuple(slice(0, 5) if k == axis else slice(None) for k in range(3))] = True
        cases.append((device_dilation.directional_windows(axis), element))
    for windows, element in cases:
        ours = np_(device_dilation.box_dilate(x, windows))[..., 0] > 0
        for b in range(2):
            np.testing.assert_array_equal(ours[b], ndimage.binary_dilation(masks[b], element), err_msg=str(windows))
    ours = np_(device_dilation.dilate_18(x))[..., 0] > 0
    for b in range(2):
        np.testing.assert_array_equal(ours[b], ndimage.binary_dilation(masks[b], CONN18))
    with pytest.raises(ValueError, match="needs low <= 0 <= high, got 1, 3"):
        device_dilation.running_max(x, 1, 1, 3)


# ---------------------------------------------------------------- the phases
def _block(centre, shape, r):
    return tuple(slice(max(0, k - r), min(n, k + r + 1)) for k, n in zip(centre, shape))


def _sequential(available, holes, growth, np_iterations, r):
    """The CPU's phases, one point at a time (its own operations), at given points: ``holes`` a flat
    indicator of hole centres, ``growth`` [(flat index, rank)] with rank = iteration - b1 + 1."""
    b1, b2 = device_dilation.phase_bounds(np_iterations)
    shape = available.shape
    mask = _box_dilate(available)
    for index in np.flatnonzero(holes):
        mask[_block(np.unravel_index(index, shape), shape, r)] = False
    for index, rank in sorted(growth, key=lambda p: p[1]):
        it = b1 + rank - 1
        block = _block(np.unravel_index(index, shape), shape, r)
        if it < b2:
            mask[block] = ndimage.binary_dilation(mask[block], CONN18)
        else:
            mask[block] = _box_dilate(mask[block], 9, axis=it % 3, length=5)
    return mask


def test_rounds_of_growth_are_the_sequential_phases_at_the_same_points(phantom):
    """Given the drawn points, the batched phases (holes at once, growth in rounds of blocks that
    neither overlap nor reach each other) equal the CPU's one-at-a-time phases exactly -- here
    with blocks as large as the phantom's lung, so that most of them overlap."""
    _, _, lung, edges, near = phantom
    available = (edges & near)[None]
    r, np_iterations = 10, EXP.MixedFrequency_Np[0]
    points = device_dilation.draw_points(ops.convert_to_tensor(available.astype(np.float32)), np_iterations,
                                         (r, r, r), [rng_for("rounds", 1)])
    rank, level = np_(points["rank"]), np_(points["round"])
    assert (rank > 0).sum(axis=1).tolist() == [np_iterations - device_dilation.phase_bounds(np_iterations)[0]] * 3
    assert level.max() >= 5                                                      # many overlapping blocks
    ours = np_(device_dilation.apply_phases(ops.convert_to_tensor(available.astype(np.float32)), points,
                                            np_iterations, (r, r, r), rounds=int(level.max()) + 1))[..., 0] > 0
    holes, candidates = np_(points["holes"]), np_(points["candidates"])
    assert holes.sum(axis=1).tolist() == [device_dilation.phase_bounds(np_iterations)[0] - 1] * 3
    for c in range(3):
        growth = [(i, int(k)) for i, k in zip(candidates[c], rank[c]) if k > 0]
        theirs = _sequential(available[0], holes[c], growth, np_iterations, r)
        np.testing.assert_array_equal(ours[c], theirs, err_msg=f"channel {c}")


def test_growth_points_avoid_exhausted_blocks(phantom):
    """An accepted point never lies in the block of an earlier accepted point that exhausted it
    (even iterations of the 18-connected phase are known to exhaust)."""
    _, _, _, edges, near = phantom
    r, np_iterations = 10, EXP.MixedFrequency_Np[0]
    b1, b2 = device_dilation.phase_bounds(np_iterations)
    points = device_dilation.draw_points(ops.convert_to_tensor((edges & near)[None].astype(np.float32)),
                                         np_iterations, (r, r, r), [rng_for("exhaust", 2)])
    rank, candidates = np_(points["rank"]), np_(points["candidates"])
    for c in range(3):
        accepted = sorted((int(k), np.array(np.unravel_index(i, edges.shape))) for i, k in zip(candidates[c], rank[c])
                          if k > 0)
        for a, (rank_a, centre_a) in enumerate(accepted):
            if (b1 + rank_a - 1) % 2 == 0 and b1 + rank_a - 1 < b2:
                for _, centre_b in accepted[a + 1:]:
                    assert np.abs(centre_b - centre_a).max() > r


def test_no_growth_phases_give_the_cpus_mask_exactly(phantom):
    """Np = 1: the full dilation only; 4 available points or fewer: the bare edges (the CPU stops at once)."""
    _, _, lung, edges, near = phantom
    ours = np_(device_dilation.dilated_edge_masks(edges[None], lung[None], 1, (10, 10, 10), [rng_for("np1")]))[0]
    theirs = dilated_edge_mask(edges, near, 1, 10, rng_for("np1"))
    assert theirs.any()
    np.testing.assert_array_equal(ours > 0, theirs)
    few = np.zeros_like(edges)
    few[tuple(np.argwhere(edges & near)[:4].T)] = True
    ours = np_(device_dilation.dilated_edge_masks(few[None], lung[None], 200, (10, 10, 10), [rng_for("few")]))[0]
    np.testing.assert_array_equal(ours > 0, dilated_edge_mask(few, near, 200, 10, rng_for("few")))
    assert (ours > 0).sum() == 3 * 4


def test_coverage_matches_the_cpu_phases_over_seeds(phantom):
    """Over 16 seeds, the fraction of the region each channel covers has the CPU's mean to 10 %
    (measured: 0.260 here against 0.263) and the same share inside one voxel of an edge (the
    holes and growth balance: 0.84 both, to 0.05). Every voxel lies within a block radius of an
    available edge point: growth acts only inside blocks centred on them.

    The block radius is 5 voxels (stage 4's 20/4) for a lung of 61 000 voxels: the proportions of a
    real lung at stage 4 (57 000 voxels), or stage 2 (460 000 voxels, radius 10)."""
    _, _, lung, edges, near = phantom
    available = edges & near
    r, np_iterations, seeds = 5, EXP.MixedFrequency_Np[0], range(16)
    theirs = np.stack([dilated_edge_mask(edges, near, np_iterations, r, rng_for("coverage", s)) for s in seeds])
    ours = np.concatenate([np_(device_dilation.dilated_edge_masks(np.repeat(edges[None], 4, 0),
                                                                  np.repeat(lung[None], 4, 0), np_iterations,
                                                                  (r, r, r),
                                                                  [rng_for("coverage", s) for s in seeds[k:k + 4]]))
                           for k in range(0, len(seeds), 4)]) > 0
    cover = {name: m[:, :, near].mean(axis=-1).mean(axis=0) for name, m in (("ours", ours), ("theirs", theirs))}
    np.testing.assert_allclose(cover["ours"], cover["theirs"], rtol=0.10)
    near_edge = _box_dilate(available)
    share = {name: (m & near_edge).sum() / m.sum() for name, m in (("ours", ours), ("theirs", theirs))}
    assert abs(share["ours"] - share["theirs"]) < 0.05, share
    reach = ndimage.binary_dilation(available, np.ones((2 * r + 1,) * 3, bool))
    assert not (ours & ~reach).any()
    assert len({m.tobytes() for m in ours[:, 0]}) == len(seeds)                  # every seed its own mask


def test_the_masks_are_deterministic_for_the_same_keys(phantom):
    _, _, lung, edges, _ = phantom
    run = [np_(device_dilation.dilated_edge_masks(edges[None], lung[None], 150, (10, 10, 10), [rng_for("same", 3)]))
           for _ in range(2)]
    np.testing.assert_array_equal(run[0], run[1])
    other = np_(device_dilation.dilated_edge_masks(edges[None], lung[None], 150, (10, 10, 10), [rng_for("same", 4)]))
    assert (other != run[0]).any()


# ---------------------------------------------------------------- fields
def _stats(u):
    from regnet.deform.field import jacobian_determinant

    jac = jacobian_determinant(u, Geometry((u.shape[2], u.shape[1], u.shape[0]), (4.0, 4.0, 4.0)))
    return np.array([np.abs(u).max(), np.linalg.norm(u, axis=-1).mean(), jac.min(), jac.max()])


def test_mixed_frequency_fields_match_the_numpy_generator_over_seeds():
    """A phantom on a 4 mm grid (stage 4, block radius 5 voxels, a lung of 50 000 voxels: the
    proportions above): over 8 seeds the device fields (masks drawn here) have the NumPy
    generator's max |u|, mean |u| and Jacobian range: means within 3 standard errors of their
    difference (the masks differ seed by seed, so a fixed tolerance would be noise; over 20
    seeds the means measured 12.84/12.89 mm, 0.503/0.505 mm, J 0.435-1.712 / 0.422-1.747)."""
    from regnet.deform.methods import synthetic_dvf

    ph = make_phantom(PhantomSpec(seed=4, spacing=4.0, scale=1.1, exhale=False))
    image = ph["image"]
    torso, lung = (sitk.GetArrayViewFromImage(ph[k]) > 0 for k in ("torso", "lung"))
    g = Geometry.of(image)
    edges = canny_edges(image, EXP, _box_dilate(lung))
    method, number = EXP.method_of(9)
    theirs, ours = [], []
    for seed in range(8):
        key = ("mf-fields", seed)
        theirs.append(_stats(synthetic_dvf(method, g, EXP, number, rng_for(*key, method), image=image, torso=torso,
                                           lung=lung)))
        u = np_(device.synthetic_dvf(method, g, EXP, number, [rng_for(*key, method)], edges=edges[None],
                                     torso=torso[None], lung=lung[None], stage=4))[0]
        assert np.abs(u).max() <= EXP.MaxDeform + 1e-4
        ours.append(_stats(u))
    ours, theirs = np.array(ours), np.array(theirs)
    standard_error = np.sqrt((ours.var(axis=0, ddof=1) + theirs.var(axis=0, ddof=1)) / len(ours))
    difference = np.abs(ours.mean(axis=0) - theirs.mean(axis=0))
    assert (difference < 3 * standard_error).all(), (ours.mean(axis=0), theirs.mean(axis=0), standard_error)
    np.testing.assert_allclose(ours.mean(axis=0)[:2], theirs.mean(axis=0)[:2], rtol=0.15)


def test_generate_pairs_draws_masks_on_the_device_or_the_cpu(phantom):
    image, torso, lung, edges, _ = phantom
    g = Geometry.of(image)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    keys, dsmooths = [("pairs-mf", 0)], [9]
    args = (array[None], torso[None], lung[None], g, EXP, keys, dsmooths)
    cpu = device.generate_pairs(*args, stage=2, edges=edges[None], dilation="cpu", next_images=[False])
    dev = device.generate_pairs(*args, stage=2, edges=edges[None], next_images=[False])
    method, number = EXP.method_of(9)
    region = lung if EXP.UseLungMask else torso
    rngs = [rng_for(*keys[0], method)]                       # the masks' draws first, then the field's
    masks = device.cpu_edge_masks([edges], [region], EXP, number, rngs, 2)
    expected = device.mixed_frequency(g, EXP, number, rngs, edge_masks=masks, stage=2)
    np.testing.assert_allclose(np_(cpu["dvf"]), np_(expected), atol=1e-5)
    assert np.abs(np_(dev["dvf"]) - np_(cpu["dvf"])).max() > 0.5                 # other masks, other draws
    with pytest.raises(RegNetError, match="dilation='gpu'; choose 'device'"):
        device.generate_pairs(*args, stage=2, edges=edges[None], dilation="gpu")


# ---------------------------------------------------------------- JAX backend
JAX_SCRIPT = """
import sys
import numpy as np
from keras import ops
from regnet.deform import device, device_dilation
from regnet.geometry import Geometry
from regnet.settings import load_deform_exp
data = np.load(sys.argv[1])
exp = load_deform_exp("3D_max15_D14_K")
g = Geometry(tuple(data["edges"].shape[::-1]), (2.0, 2.0, 2.0))
rngs = lambda: [np.random.default_rng(5)]
masks = [ops.convert_to_numpy(device_dilation.dilated_edge_masks(data["edges"][None], data["lung"][None], 150,
                                                                 (5, 5, 5), rngs())) for _ in range(2)]
u = device.mixed_frequency(g, exp, 1, rngs(), edges=data["edges"][None], torso=data["lung"][None], stage=2)
assert "tensorflow" not in sys.modules and "SimpleITK" not in sys.modules, "imported a TF/SimpleITK module"
np.savez(sys.argv[2], a=masks[0], b=masks[1], u=ops.convert_to_numpy(u))
"""


def test_runs_under_jax_without_tensorflow(tmp_path, phantom):
    pytest.importorskip("jax")
    _, _, lung, edges, near = phantom
    np.savez(tmp_path / "in.npz", edges=edges, lung=lung)
    done = run_under_jax(JAX_SCRIPT, tmp_path / "in.npz", tmp_path / "out.npz")
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["a"], out["b"])
    mask = out["a"][0] > 0
    reach = ndimage.binary_dilation(edges & near, np.ones((11, 11, 11), bool))
    assert not (mask & ~reach).any() and 0.1 < mask[:, near].mean() < 0.5
    assert np.isfinite(out["u"]).all() and 0.1 * EXP.MaxDeform < np.abs(out["u"]).max() <= EXP.MaxDeform + 1e-4
