"""PatchReader(source="device"): patches against the device pair made independently, NumPy classes and
orientations, determinism and resume, validation passes, errors, and `regnet train` with that source."""
import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform.device import generate_pairs
from regnet.deform.field import magnitude_class
from regnet.deform.methods import _box_dilate, canny_edges
from regnet.generate import original_on_stage_grid
from regnet.geometry import Geometry
from regnet.reading import PatchReader
from regnet.reading.patches import orient_dvf, orient_image
from regnet.reading.sampling import ClassBalanceWarning
from regnet.settings import load_settings
from regnet.store import PairStore
from tests.conftest import run_under_jax

R, RY, BATCH = 8, 3, 9
EXP = "3D_max15_D14_K"  # ClassBalanced [1.5, 4, 15]: three classes, so 9 = 3 + 3 + 3
BASE = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": EXP, "TrainingCNList": [1], "TrainingTypeImList": [0, 1],
                     "TrainingDSmoothList": [0, 4, 9], "ValidationCNList": [1], "ValidationTypeImList": [0],
                     "ValidationDSmoothList": [5, 9]}],
    "stage": 4, "R": R, "Ry": RY, "ReaderSource": "device",
    "NetworkTraining": {"SamplesPerImage": 10, "BatchSize": BATCH, "PairsPerBatch": 2},
    "NetworkValidation": {"SamplesPerImage": 6, "BatchSize": 5, "PairsPerBatch": 2},
}


def settings_for(tmp_path, **extra):
    return load_settings({**BASE, "OutputFolder": str(tmp_path / "never_written"), **extra})


def arrays(batch):
    x, y = batch
    return np.asarray(x), np.asarray(y)


def take(reader, n):
    return [(*arrays(next(reader)), list(reader.batch_info)) for _ in range(n)]


def independent_pairs(settings, members, keys):
    """The batch's pairs made again from scratch: originals by SimpleITK, edges, one generate_pairs call."""
    store = PairStore(settings)
    exp = settings.deform_exps[EXP]
    stacks = {"image": [], "torso": [], "lung": [], "edges": []}
    geometries = set()
    for pair in members:
        image, torso, lung = original_on_stage_grid(pair.image, store)
        geometries.add(Geometry.of(image))
        t, lg = sitk.GetArrayFromImage(torso) > 0, sitk.GetArrayFromImage(lung) > 0
        stacks["image"].append(sitk.GetArrayFromImage(image).astype(np.float32))
        stacks["torso"].append(t)
        stacks["lung"].append(lg)
        stacks["edges"].append(canny_edges(image, exp, _box_dilate(lg.copy())))
    assert len(geometries) == 1
    made = generate_pairs(*(np.stack(stacks[k]) for k in ("image", "torso", "lung")), geometries.pop(), exp, keys,
                          [p.dsmooth for p in members], stage=4, default=-1024.0, edges=np.stack(stacks["edges"]))
    return {k: np.asarray(v) for k, v in made.items()}


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The first three training batches, each pair of batch 0 made independently."""
    tmp = tmp_path_factory.mktemp("device")
    settings = settings_for(tmp)
    with PatchReader(settings, "Training", "device") as reader:
        batches = take(reader, 3)
        members, keys = reader._device.members(0)
    return settings, batches, members, keys, independent_pairs(settings, members, keys), tmp


def test_patches_are_the_device_pairs_at_the_reported_centre(stream):
    settings, batches, members, keys, made, tmp = stream
    x, y, info = batches[0]
    assert x.shape == (BATCH, 2 * R + 1, 2 * R + 1, 2 * R + 1, 2) and x.dtype == np.float32
    assert y.shape == (BATCH, 2 * RY + 1, 2 * RY + 1, 2 * RY + 1, 3) and y.dtype == np.float32
    assert {i["key"] for i in info} <= set(keys) and all(i["batch"] == 0 for i in info)
    for b, item in enumerate(info):
        p = keys.index(item["key"])
        z, yy, xx = item["centre"]
        np.testing.assert_array_equal(y[b], made["dvf"][p, z - RY:z + RY + 1, yy - RY:yy + RY + 1, xx - RY:xx + RY + 1])
        moving = np.where(made["moving_torso"][p] > 0, made["moving"][p], -1024.0)
        fixed = np.where(made["fixed_torso"][p] > 0, made["fixed"][p], -1024.0)
        padded = np.pad(np.stack([moving, fixed], -1), [(R, R)] * 3 + [(0, 0)], constant_values=-1024.0)
        np.testing.assert_array_equal(x[b], padded[z:z + 2 * R + 1, yy:yy + 2 * R + 1, xx:xx + 2 * R + 1])
        assert x[b, R, R, R, 1] == made["fixed"][p, z, yy, xx]  # the centre is a fixed-torso voxel, unmasked
        assert made["fixed_torso"][p, z, yy, xx] > 0 and all(RY <= c < n - RY for c, n in zip((z, yy, xx), fixed.shape))
        assert item["class"] == magnitude_class(made["dvf"][p, z, yy, xx], [1.5, 4.0, 15.0])
    assert not (tmp / "never_written").exists()  # the device source writes no file


def test_fields_have_the_experiments_bounds(stream):
    settings, _, members, _, made, _ = stream
    exp = settings.deform_exps[EXP]
    bounds = {"respiratory_motion": 1.2 * exp.MaxDeform * exp.RespiratoryMotion_MaxDeformRatio,
              "single_frequency": exp.MaxDeform * exp.SingleFrequency_MaxDeformRatio[0],  # 15 x 0.5
              "mixed_frequency": exp.MaxDeform * exp.MixedFrequency_MaxDeformRatio}
    for p, pair in enumerate(members):
        method, number = exp.method_of(pair.dsmooth)
        peak = np.abs(made["dvf"][p]).max()
        assert 0.3 * bounds[method] < peak <= bounds[method] + 1e-4, (method, peak)
        assert np.isfinite(made["fixed"][p]).all()


def test_class_histogram_matches_the_request(stream):
    settings, batches, _, keys, made, _ = stream
    x, y, info = batches[0]
    available = np.zeros(3, int)
    for p in range(len(keys)):  # candidate voxels per class, counted with NumPy
        flat = made["fixed_torso"][p] > 0  # torso voxels at least RY inside every border
        inner = np.zeros_like(flat)
        inner[RY:-RY, RY:-RY, RY:-RY] = True
        flat &= inner
        available += np.bincount(magnitude_class(made["dvf"][p][flat], [1.5, 4.0, 15.0]), minlength=3)
    assert available.min() >= BATCH // 3
    assert np.bincount([i["class"] for i in info], minlength=3).tolist() == [3, 3, 3]
    centres = [(i["key"], i["centre"]) for i in info]
    assert len(set(centres)) == len(centres)  # without replacement
    for _, y, info in batches:  # the reported class is the magnitude of the label's centre voxel
        assert [i["class"] for i in info] == magnitude_class(y[:, RY, RY, RY], [1.5, 4.0, 15.0]).tolist()


def test_same_settings_and_start_give_the_same_batches(stream):
    settings, batches, *_ = stream
    with PatchReader(settings, "Training", "device") as again:
        for (x, y, info), (x2, y2, info2) in zip(batches, take(again, 3)):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y2)
            assert info == info2
    with PatchReader(settings, "Training", "device", start=2) as resumed:
        x, y, info = take(resumed, 1)[0]
    np.testing.assert_array_equal(x, batches[2][0])
    np.testing.assert_array_equal(y, batches[2][1])
    assert info == batches[2][2] and info[0]["batch"] == 2


def test_every_batch_draws_fresh_fields(stream):
    settings, _, members, keys, made, _ = stream
    with PatchReader(settings, "Training", "device") as reader:
        later = reader._device.members(7)
        assert all(k[-2] == 7 for k in later[1]) and keys[0][-2] == 0
        group = reader._device.make_group(members[:1], [keys[0][:-2] + (7, 0)], BATCH, ("centres", 7))
    other = np.asarray(group.dvfs[0])
    assert np.abs(other - made["dvf"][0]).max() > 1.0  # the same pair at batch 7: another field


def test_validation_is_the_same_every_pass(tmp_path):
    settings = settings_for(tmp_path)
    with PatchReader(settings, "Validation", "device") as reader:
        assert len(reader) == 3  # one group of 2 pairs x 6 samples in batches of 5: 5 + 5 + 2
        passes = [take(reader, 3), take(reader, 3)]
    assert [len(info) for _, _, info in passes[0]] == [5, 5, 2]
    keys = {i["key"] for _, _, info in passes[0] for i in info}
    assert keys == {(EXP, "Phantom", "1", 0, d, 4) for d in (5, 9)}  # the job's own keys: no batch number
    for (x1, y1, i1), (x2, y2, i2) in zip(*passes):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert [{**i, "batch": None} for i in i1] == [{**i, "batch": None} for i in i2]


def test_augmentation_orients_the_unaugmented_patches(stream):
    settings, batches, *_ = stream
    with PatchReader(load_settings({**settings.to_dict(), "Augmentation": True}), "Training", "device") as reader:
        x, y, info = take(reader, 1)[0]
    x0, y0, info0 = batches[0]
    assert any(i["permutation"] != (0, 1, 2) or any(i["flips"]) for i in info)
    for b, item in enumerate(info):
        assert item["centre"] == info0[b]["centre"]
        np.testing.assert_array_equal(x[b], orient_image(x0[b], item["permutation"], item["flips"]))
        np.testing.assert_array_equal(y[b], orient_dvf(y0[b], item["permutation"], item["flips"]))


def test_full_image_networks_take_the_whole_padded_image(tmp_path):
    settings = settings_for(tmp_path, R=42, Ry=42, NetworkTraining={"BatchSize": 2, "SamplesPerImage": 1})
    with PatchReader(settings, "Training", "device") as reader:
        x, y, info = take(reader, 1)[0]
        members, keys = reader._device.members(0)
    made = independent_pairs(settings, members, keys)
    shape = made["dvf"].shape[1:4]
    assert x.shape == (2, 85, 85, 85, 2) and {i["centre"] for i in info} == {tuple(n // 2 for n in shape)}
    lo = [42 - n // 2 for n in shape]
    for b, item in enumerate(info):
        p = keys.index(item["key"])
        inner = y[b, lo[0]:lo[0] + shape[0], lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]]
        np.testing.assert_array_equal(inner, made["dvf"][p])
        outside = y[b].copy()
        outside[lo[0]:lo[0] + shape[0], lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]] = 1.0
        assert (outside[outside != 1.0] == 0).all() and (outside == 0).any()  # zero outside the image
        assert (x[b, :lo[0]] == -1024.0).all()


def test_bad_sources_and_settings_are_named(tmp_path):
    with pytest.raises(RegNetError, match="source must be one of .*'device'.*got 'gpu'"):
        PatchReader(settings_for(tmp_path), "Training", "gpu")
    with pytest.raises(RegNetError, match="ReaderSource must be one of 'files', 'memory', 'device', got 'devices'"):
        settings_for(tmp_path, ReaderSource="devices")
    with pytest.raises(RegNetError, match="NetworkTraining.PairsPerBatch must be a positive int, got 0"):
        settings_for(tmp_path, NetworkTraining={"PairsPerBatch": 0})
    occluded = settings_for(tmp_path, DeformExp={EXP: {"DeformedImExt": ["Clean", "Occluded"]}})
    with pytest.raises(RegNetError, match="no 'Occluded' augmentation .*3D_max15_D14_K"):
        PatchReader(occluded, "Training", "device")
    too_small = settings_for(tmp_path, R=20, Ry=20)
    with pytest.raises(RegNetError, match="is larger than the full-image input 41\\^3"):
        with PatchReader(too_small, "Training", "device") as reader:
            next(reader)
    no_room = settings_for(tmp_path, R=40, Ry=38)
    with pytest.raises(RegNetError, match="made on the device.*no torso voxel lies 38 voxels inside"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ClassBalanceWarning)
            with PatchReader(no_room, "Training", "device") as reader:
                next(reader)


def test_regnet_train_with_the_device_source_runs_and_resumes(tmp_path, capsys):
    from regnet.cli import main

    settings = {**BASE, "OutputFolder": str(tmp_path / "never_written"), "ReaderSource": "files",
                "NetworkDesign": "unet1", "R": 26, "Ry": 26, "NetworkOptions": {"width": 0.125},  # whole 53^3 images
                "NetworkTraining": {"SamplesPerImage": 1, "BatchSize": 1, "ValidationEvery": 2, "CheckpointEvery": 2},
                "NetworkValidation": {"SamplesPerImage": 1, "BatchSize": 2}}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--steps", "2", "--source", "device"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text()) == {"step": 2}
    assert json.loads((out / "settings.json").read_text())["ReaderSource"] == "device"
    assert main(["train", str(path), "--out", str(out), "--steps", "3", "--source", "device"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text()) == {"step": 3}
    rows = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    header = rows[0]
    for row in rows[1:]:
        for name in ("loss", "val_loss", "val_epe"):
            if name in header and row[header.index(name)]:
                assert np.isfinite(float(row[header.index(name)])), (name, row)
    assert len(rows) == 3 and "val_epe" in header  # validations at steps 2 and 3
    assert not (tmp_path / "never_written").exists()
    assert main(["train", str(path), "--out", str(out), "--steps", "4"]) == 1  # files: not the device's batches
    assert "(ReaderSource differ)" in capsys.readouterr().err


JAX_SCRIPT = """
import sys
import numpy as np
from regnet.deform.field import magnitude_class
from regnet.reading import PatchReader
from regnet.settings import load_settings
s = load_settings({"DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                                    "TrainingTypeImList": [0], "TrainingDSmoothList": [0]}],
                   "stage": 4, "R": 8, "Ry": 3, "OutputFolder": sys.argv[1], "Augmentation": True,
                   "NetworkTraining": {"SamplesPerImage": 10, "BatchSize": 6, "PairsPerBatch": 1}})
with PatchReader(s, "Training", "device") as reader:
    x, y = next(reader)
    info = reader.batch_info
import keras
assert keras.backend.backend() == "jax" and "tensorflow" not in sys.modules, "imported TensorFlow"
assert type(x).__module__.startswith("jax") and x.shape == (6, 17, 17, 17, 2) and y.shape == (6, 7, 7, 7, 3)
y = np.asarray(y)
assert np.isfinite(np.asarray(x)).all() and np.abs(y).max() <= 18.0 + 1e-4
assert [i["class"] for i in info] == magnitude_class(y[:, 3, 3, 3], [1.5, 4.0, 15.0]).tolist()
print("ok")
"""


def test_runs_under_jax_without_tensorflow(tmp_path):
    done = run_under_jax(JAX_SCRIPT, tmp_path / "never_written")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert not (tmp_path / "never_written").exists()


def test_resume_compares_sources_by_the_batches_they_give():
    from regnet.train import settings_difference

    assert settings_difference({"ReaderSource": "files"}, {"ReaderSource": "memory"}) == []  # the same pairs
    assert settings_difference({"ReaderSource": "memory"}, {"ReaderSource": "device"}) == ["ReaderSource"]
    # a run saved before these keys existed resumes with their defaults, and only with them
    old = {"stage": 4, "NetworkTraining": {"BatchSize": 2}}
    assert settings_difference(old, {**old, "ReaderSource": "files",
                                     "NetworkTraining": {"BatchSize": 2, "PairsPerBatch": 2}}) == []
    assert settings_difference(old, {**old, "ReaderSource": "device",
                                     "NetworkTraining": {"BatchSize": 2, "PairsPerBatch": 3}}) == [
        "NetworkTraining.PairsPerBatch", "ReaderSource"]


def test_the_device_check_over_devices_uses_the_device_grouping(tmp_path, monkeypatch):
    """Validation from the device is cut per group of PairsPerBatch pairs: 2 pairs x 6 samples in groups
    of one pair and batches of 4 give 4 and 2 (the files schedule, both pairs in one chunk, gives 4, 4, 4)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from regnet import distribute

    s = settings_for(tmp_path, NetworkTraining={**BASE["NetworkTraining"], "BatchSize": 4},
                     NetworkValidation={"SamplesPerImage": 6, "BatchSize": 4, "PairsPerBatch": 1})
    assert PatchReader(s, "Validation", source="device").batch_sizes() == [2, 4]
    assert PatchReader(s, "Validation", source="files").batch_sizes() == [4]
    assert PatchReader(s, "Training", source="device").batch_sizes() == [4]
    four = SimpleNamespace(num_replicas_in_sync=4, scope=nullcontext)
    monkeypatch.setattr(distribute, "_tensorflow_strategy", lambda: four)
    with pytest.raises(RegNetError, match=r"over 4 devices: validation batches of 2 and 4 patches do not split"):
        with distribute.distribution_scope("mirrored", s):
            pass


def test_a_rotated_grid_gives_displacements_along_the_grid_axes(tmp_path, monkeypatch):
    """As the files source: y is D^T u (the displacement along the image grid's own axes), computed
    here by hand from the physical field of the same pairs on a grid rotated 30 degrees about z."""
    import regnet.generate

    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    unrotated = regnet.generate.original_on_stage_grid

    def rotated(image, store):
        out = [sitk.Image(im) for im in unrotated(image, store)]
        for im in out:
            im.SetDirection(direction.ravel().tolist())
        return tuple(out)

    monkeypatch.setattr(regnet.generate, "original_on_stage_grid", rotated)  # the reader's originals
    monkeypatch.setitem(globals(), "original_on_stage_grid", rotated)      # and independent_pairs'
    settings = settings_for(tmp_path)
    with PatchReader(settings, "Training", "device") as reader:
        x, y, info = take(reader, 1)[0]
        members, keys = reader._device.members(0)
    made = independent_pairs(settings, members, keys)
    moved = 0.0
    for b, item in enumerate(info):
        p = keys.index(item["key"])
        z, yy, xx = item["centre"]
        physical = made["dvf"][p, z - RY:z + RY + 1, yy - RY:yy + RY + 1, xx - RY:xx + RY + 1]
        np.testing.assert_allclose(y[b], physical @ direction, atol=1e-5)
        moved = max(moved, float(np.abs(y[b] - physical).max()))
    assert moved > 0.1  # the rotation changed the components: the test sees the conversion
