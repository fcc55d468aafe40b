"""The patch reader against the files it reads (SimpleITK), hand-classified magnitudes and SciPy warps."""
import json
import re
import shutil
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from regnet import RegNetError
from regnet.deform.field import from_grid_axes, to_grid_axes
from regnet.generate import run
from regnet.geometry import Geometry
from regnet.reading import PatchReader
from regnet.reading.pairs import load_pair
from regnet.reading.patches import orient_dvf, orient_image
from regnet.reading.sampling import ClassBalanceWarning, class_quota
from regnet.settings import load_settings
from regnet.store import PairStore

R, RY = 12, 4
BASE = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                     "TrainingTypeImList": [0, 1], "TrainingDSmoothList": [0, 4, 13],
                     "ValidationCNList": [1], "ValidationTypeImList": [0], "ValidationDSmoothList": [5, 9]}],
    "stage": 2, "R": R, "Ry": RY,
    "NetworkTraining": {"NumberOfImagesPerChunk": 4, "SamplesPerImage": 30, "BatchSize": 6, "MaxQueueSize": 4},
    "NetworkValidation": {"NumberOfImagesPerChunk": 2, "SamplesPerImage": 20, "BatchSize": 7},
    # a clean chain: the fixed image is exactly the cubic warp of the moving one
    "DeformExp": {"3D_max15_D14_K": {"DeformedImExt": ["Clean"]}},
}


def settings_for(root, **extra):
    return load_settings({**BASE, "OutputFolder": str(root), **extra})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    run(settings_for(out), progress=False)
    return out


def take(reader, n):
    out = []
    for _ in range(n):
        x, y = next(reader)
        out.append((x.copy(), y.copy(), list(reader.batch_info)))
    return out


def regnet_threads():
    return [t for t in threading.enumerate() if t.name.startswith("regnet-")]


def test_patches_equal_the_files_at_the_reported_centre(root):
    settings = settings_for(root)
    store = PairStore(settings)
    files = {}
    with PatchReader(settings, workers=2) as reader:
        for x, y, info in take(reader, 8):
            assert x.shape == (6, 2 * R + 1, 2 * R + 1, 2 * R + 1, 2) and x.dtype == np.float32
            assert y.shape == (6, 2 * RY + 1, 2 * RY + 1, 2 * RY + 1, 3) and y.dtype == np.float32
            for b, item in enumerate(info):
                pair = next(p for p in reader.pairs
                            if (p.image.type_im, p.dsmooth) == (item["type_im"], item["dsmooth"]))
                if pair not in files:
                    f = store.files(pair)
                    files[pair] = [sitk.ReadImage(str(p)) for p in (f.dvf, f.fixed, f.moving, f.fixed_torso)]
                dvf_img, fixed_img, moving_img, torso_img = files[pair]
                z, yy, xx = item["centre"]
                dvf = sitk.GetArrayViewFromImage(dvf_img)
                np.testing.assert_array_equal(y[b], dvf[z - RY:z + RY + 1, yy - RY:yy + RY + 1, xx - RY:xx + RY + 1])
                # the centre voxel of x is the same physical point as the centre of y
                point = dvf_img.TransformIndexToPhysicalPoint((xx, yy, z))
                assert fixed_img.TransformPhysicalPointToIndex(point) == (xx, yy, z)
                inside = sitk.GetArrayViewFromImage(torso_img)[z, yy, xx] > 0
                assert inside, "centres lie inside the torso"
                assert x[b, R, R, R, 1] == sitk.GetArrayViewFromImage(fixed_img)[z, yy, xx]
                assert x[b, R, R, R, 0] in (sitk.GetArrayViewFromImage(moving_img)[z, yy, xx], -1024)
                # the class is the magnitude class of |u| at the centre, by hand
                norm = float(np.linalg.norm(dvf[z, yy, xx].astype(np.float64)))
                assert item["class"] == (0 if norm < 1.5 else 1 if norm < 4 else 2)


def test_class_histogram_matches_the_request(root):
    settings = settings_for(root)
    with PatchReader(settings) as reader:
        n = reader.schedule.batches_in_chunk(4)
        classes = [i["class"] for _, _, info in take(reader, n) for i in info]
    assert len(classes) == n * 6 == 120  # 4 images x 30 samples, 6 per batch
    assert np.bincount(classes, minlength=3).tolist() == [40, 40, 40]


def test_centres_are_drawn_without_replacement(root):
    with PatchReader(settings_for(root)) as reader:
        n = reader.schedule.batches_in_chunk(4)
        keys = [(i["type_im"], i["dsmooth"], i["centre"]) for _, _, info in take(reader, n) for i in info]
    assert len(set(keys)) == len(keys)


def test_bitwise_deterministic_across_runs_and_worker_counts(root):
    settings = settings_for(root)
    with PatchReader(settings, workers=1) as a, PatchReader(settings, workers=3) as b:
        for (xa, ya, ia), (xb, yb, ib) in zip(take(a, 12), take(b, 12)):
            assert ia == ib
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_resume_from_a_batch_number_continues_the_stream(root):
    settings = settings_for(root)
    with PatchReader(settings) as reader:
        stream = take(reader, 9)
    with PatchReader(settings, start=6) as resumed:
        for (x, y, info), (x2, y2, info2) in zip(stream[6:], take(resumed, 3)):
            np.testing.assert_array_equal(y, y2)
            assert info == info2
            np.testing.assert_array_equal(x, x2)


def test_semi_epochs_reshuffle_and_stay_in_bounds(root):
    with PatchReader(settings_for(root)) as reader:
        per_semi_epoch = len(reader)
        assert per_semi_epoch == 20 + 10  # chunks of 4 and 2 images: 120/6 + 60/6 batches
        first = [i["position"][0] for _, _, info in take(reader, per_semi_epoch + 1) for i in info]
    assert first[-1] == 1


def test_validation_covers_every_pair_the_same_every_pass(root):
    settings = settings_for(root)
    with PatchReader(settings, "Validation") as reader:
        assert len(reader) == 6  # 2 pairs x 20 samples = 40 -> 6 batches of 7 (last one 5)
        passes = [[(x.copy(), y.copy(), list(reader.batch_info)) for x, y in reader.one_pass()] for _ in range(2)]
    seen = {(i["type_im"], i["dsmooth"]) for _, _, info in passes[0] for i in info}
    assert seen == {(0, 5), (0, 9)}
    assert sum(len(info) for _, _, info in passes[0]) == 40
    for (x1, _, i1), (x2, _, i2) in zip(*passes):
        assert [i["position"][0] for i in i2] == [1] * len(i2)  # the second pass
        assert [{**i, "position": None} for i in i1] == [{**i, "position": None} for i in i2]
        np.testing.assert_array_equal(x1, x2)


def test_augmentation_keeps_image_and_dvf_consistent(root):
    settings = settings_for(root, Augmentation=True)
    with PatchReader(settings) as reader:
        x, y, info = take(reader, 1)[0]
    assert any(i["flips"] != (False, False, False) or i["permutation"] != (0, 1, 2) for i in info)
    grid = np.stack(np.meshgrid(*[np.arange(2 * RY + 1) + (R - RY)] * 3, indexing="ij")).astype(np.float64)
    for b in range(len(info)):
        # warp the moving patch by the DVF (index units: mm / 2 mm at stage 2; components x, y, z)
        coords = grid + np.moveaxis(y[b][..., ::-1], -1, 0) / 2.0
        warped = map_coordinates(x[b, ..., 0], coords, order=1, mode="nearest")
        fixed = x[b, R - RY:R + RY + 1, R - RY:R + RY + 1, R - RY:R + RY + 1, 1]
        inside = (fixed > -1000) & (warped > -1000)
        assert np.median(np.abs(warped - fixed)[inside]) < 25.0  # HU: linear vs the generator's cubic warp


def test_orientation_is_consistent_with_warping():
    """Warping the oriented moving image by the oriented DVF equals orienting the warped image."""
    rng = np.random.default_rng(0)
    moving = rng.normal(size=(9, 9, 9)).astype(np.float64)
    dvf = rng.uniform(-1.5, 1.5, size=(9, 9, 9, 3))
    grid = np.stack(np.meshgrid(*[np.arange(9)] * 3, indexing="ij")).astype(np.float64)

    def warp(image, u):
        return map_coordinates(image, grid + np.moveaxis(u[..., ::-1], -1, 0), order=1, mode="nearest")

    reference = warp(moving, dvf)
    for permutation in [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)]:
        for flips in [(False, False, False), (True, False, False), (False, True, True), (True, True, True)]:
            expected = orient_image(reference, permutation, flips)
            got = warp(np.ascontiguousarray(orient_image(moving, permutation, flips)),
                       orient_dvf(dvf, permutation, flips))
            np.testing.assert_allclose(got, expected, atol=1e-12)


def test_dvf_components_follow_the_grid_axes_for_a_rotated_direction(rotated_image):
    """Index displacement = D^T u / spacing, checked through SimpleITK's physical -> index map."""
    g = Geometry.of(rotated_image)
    u = np.array([[[[2.0, -1.0, 3.0]]]], dtype=np.float32)
    along_axes = to_grid_axes(u, g)[0, 0, 0]
    p = np.array(rotated_image.TransformIndexToPhysicalPoint((3, 4, 5)))
    q = np.array(rotated_image.TransformPhysicalPointToContinuousIndex(tuple(p + u[0, 0, 0])))
    np.testing.assert_allclose(along_axes / np.array(g.spacing), q - (3, 4, 5), atol=1e-5)
    np.testing.assert_allclose(from_grid_axes(to_grid_axes(u, g), g), u, atol=1e-6)  # what register does


def test_class_quota_water_fills():
    assert class_quota(90, np.array([100, 100, 100])).tolist() == [30, 30, 30]
    assert class_quota(90, np.array([10, 100, 0])).tolist() == [10, 80, 0]
    assert class_quota(90, np.array([5, 6, 7])).tolist() == [5, 6, 7]


def test_an_empty_class_warns_and_rebalances(root, tmp_path):
    overrides = {"3D_max15_D14_K": {"DeformedImExt": ["Clean"], "ClassBalanced": [50.0, 60.0, 100.0]}}
    settings = settings_for(root, DeformExp=overrides)
    with pytest.warns(ClassBalanceWarning, match=r"class 1 \[50, 60\) mm has 0 candidate voxels"):
        with PatchReader(settings) as reader:
            classes = [i["class"] for _, _, info in take(reader, 5) for i in info]
    assert set(classes) == {0}


def test_images_smaller_than_a_patch_are_padded(root):
    settings = settings_for(root, R=60, Ry=4)  # 121^3 input on a ~50^3 grid
    with PatchReader(settings) as reader:
        x, y, info = take(reader, 1)[0]
    assert x.shape[1] == 121 and (x[:, :5, :5, :5] == -1024).all()


def test_a_chunk_larger_than_the_list_is_the_whole_list(root):
    settings = settings_for(root, NetworkTraining={"NumberOfImagesPerChunk": 50, "SamplesPerImage": 5, "BatchSize": 5})
    with PatchReader(settings) as reader:
        assert reader.schedule.chunk_lengths == [6] and len(reader) == 6


@pytest.fixture
def copy_of(root, tmp_path):
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy"


def first_pair_files(settings):
    store = PairStore(settings)
    return store.files(PatchReader(settings).pairs[0])


def test_a_worker_error_reaches_the_consumer_and_nothing_is_left_running(copy_of):
    settings = settings_for(copy_of)
    files = first_pair_files(settings)
    files.dvf.write_bytes(files.dvf.read_bytes()[:5000])  # truncated
    reader = PatchReader(settings, start=0)
    t0 = time.perf_counter()
    with pytest.raises(RegNetError, match="DeformedDVF.mha"):
        with reader:
            take(reader, 30)
    assert time.perf_counter() - t0 < 10
    assert regnet_threads() == []


def test_closing_midstream_leaves_no_thread(root):
    reader = PatchReader(settings_for(root))
    with reader:
        take(reader, 2)
    assert regnet_threads() == []


def test_a_dvf_on_another_grid_is_refused(copy_of):
    settings = settings_for(copy_of)
    files = first_pair_files(settings)
    dvf = sitk.ReadImage(str(files.dvf))
    dvf.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(dvf, str(files.dvf))
    with pytest.raises(RegNetError, match="DVF grid .* differs from the deformed image"):
        with PatchReader(settings) as reader:
            take(reader, 30)


def test_an_empty_torso_is_refused(copy_of):
    settings = settings_for(copy_of)
    files = first_pair_files(settings)
    torso = sitk.ReadImage(str(files.fixed_torso))
    sitk.WriteImage(torso * 0, str(files.fixed_torso))
    with pytest.raises(RegNetError, match="DeformedTorso.mha: the torso mask is empty"):
        with PatchReader(settings) as reader:
            take(reader, 30)


def test_a_missing_pair_is_generated_on_demand(copy_of):
    settings = settings_for(copy_of, NetworkTraining={"NumberOfImagesPerChunk": 6, "SamplesPerImage": 5,
                                                      "BatchSize": 5})  # every pair in the first chunk
    files = first_pair_files(settings)
    shutil.rmtree(files.done.parent)
    with PatchReader(settings) as reader:
        take(reader, 1)
    assert files.done.is_file() and files.dvf.is_file()


def test_bad_modes_are_named(root):
    with pytest.raises(RegNetError, match="mode must be one of"):
        PatchReader(settings_for(root), mode="Test")
    with pytest.raises(RegNetError, match=r"source must be one of \('files', 'memory', 'device'\), got 'disk'"):
        PatchReader(settings_for(root), source="disk")
    with pytest.raises(RegNetError, match=r"generator_pool must be one of \('processes', 'threads'\), got 'gpu'"):
        PatchReader(settings_for(root), source="memory", generator_pool="gpu")
    with pytest.raises(RegNetError, match="no validation pairs"):
        PatchReader(settings_for(root, DataExpDict=[{**BASE["DataExpDict"][0], "ValidationCNList": []}]), "Validation")


def test_pairs_made_from_other_settings_are_refused(copy_of):
    """Issue 15 item 1, reader side: pairs made with MaxDeform 15 are not read as if made with 2."""
    changed = settings_for(copy_of, DeformExp={"3D_max15_D14_K": {"DeformedImExt": ["Clean"], "MaxDeform": 2}})
    store = PairStore(changed)
    pair = PatchReader(changed).pairs[0]
    folder = re.escape(str(store.pair_dir(pair)))
    with pytest.raises(RegNetError, match=rf"{folder}: this pair was made from other settings than the reader's; "
                                          r"differing keys: deform_exp\.MaxDeform 15\.0 -> 2\.0\. .*`regnet "
                                          r"generate` with --overwrite.* or give the reader a new OutputFolder"):
        load_pair(store, pair, generate_missing=False)
    with pytest.raises(RegNetError, match=r"deform_exp\.MaxDeform 15\.0 -> 2\.0"):  # also through the reader
        with PatchReader(changed) as reader:
            take(reader, 30)
    assert regnet_threads() == []
    load_pair(PairStore(settings_for(copy_of)), pair, generate_missing=False)  # its own settings: read

    done = store.pair_dir(pair) / "done.json"  # a done.json written before the record existed
    legacy = json.loads(done.read_text())
    legacy.pop("made_from")
    done.write_text(json.dumps(legacy))
    with pytest.raises(RegNetError, match=rf"{folder}: .*its done\.json has no 'made_from' record"):
        load_pair(PairStore(settings_for(copy_of)), pair, generate_missing=False)


def regnet_processes():
    """Child processes the reader may have left: not the forkserver, and not joblib's reusable loky
    workers, which earlier `regnet generate` calls in the same pytest process keep alive on purpose."""
    import multiprocessing

    return [c for c in multiprocessing.active_children()
            if "forkserver" not in c.name and not c.name.startswith("LokyProcess")]


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_memory_source_gives_the_patches_of_the_files_and_writes_nothing(root, tmp_path, pool):
    """Issue 8 item 4: pairs made on the fly by the generator's code path, bitwise the batches read
    from the files `regnet generate` wrote for the same settings (another OutputFolder: unused)."""
    nowhere = tmp_path / "never-written"
    memory_settings = settings_for(nowhere)
    with PatchReader(settings_for(root), workers=1) as files, \
            PatchReader(memory_settings, source="memory", generators=2, generator_pool=pool) as memory:
        n = len(files)  # a whole semi-epoch: both chunks, dsmooth 0 (originals) and > 0 (next images)
        assert n == 30
        for (xf, yf, info_f), (xm, ym, info_m) in zip(take(files, n), take(memory, n)):
            assert info_m == info_f
            np.testing.assert_array_equal(xm, xf)
            np.testing.assert_array_equal(ym, yf)
    with PatchReader(settings_for(root), "Validation") as files, \
            PatchReader(memory_settings, "Validation", source="memory", generator_pool=pool) as memory:
        for (xf, yf), (xm, ym) in zip(files.one_pass(), memory.one_pass()):
            assert memory.batch_info == files.batch_info
            np.testing.assert_array_equal(xm, xf)
            np.testing.assert_array_equal(ym, yf)
    assert not nowhere.exists()
    assert regnet_threads() == [] and regnet_processes() == []


def test_memory_source_error_reaches_the_consumer_and_nothing_is_left_running(tmp_path):
    """A failure inside a generator process (here: a phantom case that is no seed) surfaces with its message."""
    settings = settings_for(tmp_path, DataExpDict=[{**BASE["DataExpDict"][0], "TrainingCNList": ["x"]}])
    reader = PatchReader(settings, source="memory", generators=1)
    with pytest.raises(ValueError, match="invalid literal for int.*'x'") as raised:
        with reader:
            take(reader, 1)
    assert "original_on_stage_grid" in str(raised.value.__cause__)  # the worker's own traceback comes along
    assert regnet_threads() == [] and regnet_processes() == []
    assert not tmp_path.joinpath("DataExpDict").exists() and list(tmp_path.iterdir()) == []


def test_candidate_index_equals_a_numpy_classification():
    """Candidates: torso voxels at least `margin` inside every border, classed by |u| (by hand)."""
    from regnet.reading.sampling import CandidateIndex

    rng = np.random.default_rng(3)
    dvf = rng.normal(scale=3.0, size=(11, 13, 17, 3)).astype(np.float32)
    torso = rng.random((11, 13, 17)) < 0.6
    thresholds = [1.5, 4.0, 7.0]
    index = CandidateIndex.of(dvf, torso, thresholds, margin=2)
    inner = np.zeros_like(torso)
    inner[2:-2, 2:-2, 2:-2] = True
    norm = np.sqrt((dvf.astype(np.float64) ** 2).sum(-1))
    label = np.digitize(norm, [1.5, 4.0])  # classes [0, 1.5), [1.5, 4), [4, inf)
    for k in range(3):
        np.testing.assert_array_equal(index.per_class[k], np.flatnonzero(inner & torso & (label == k)))
    assert index.counts.sum() == (inner & torso).sum() > 0
    assert CandidateIndex.of(dvf, torso, thresholds, margin=6).counts.tolist() == [0, 0, 0]  # 11 <= 2 x 6
