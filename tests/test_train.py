"""Training: exact resume, checkpoints and files, data parallel, and the errors that protect a run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet import RegNetError
from regnet.generate import run
from regnet.settings import load_settings
from regnet.train import Trainer, settings_difference, train

pytest.importorskip("keras")

BASE = {
    "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max15_D14_K", "TrainingCNList": [1],
                     "TrainingTypeImList": [0], "TrainingDSmoothList": [0, 4],
                     "ValidationCNList": [1], "ValidationTypeImList": [0], "ValidationDSmoothList": [5]}],
    "stage": 2, "R": 42, "Ry": 2,  # crop4 at its smallest: 85^3 -> 5^3
    "NetworkOptions": {"width": 0.125},  # RegNet's training input noise on: seeded, so resume is exact
    "NetworkTraining": {"NumberOfImagesPerChunk": 2, "SamplesPerImage": 6, "BatchSize": 2,
                        "ValidationEvery": 2, "CheckpointEvery": 2},
    "NetworkValidation": {"NumberOfImagesPerChunk": 1, "SamplesPerImage": 2, "BatchSize": 2},
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    run(load_settings({**BASE, "OutputFolder": str(out)}), progress=False)
    return out


def settings_for(pairs, **extra):
    return load_settings({**BASE, "OutputFolder": str(pairs), **extra})


def weights(folder):
    import keras

    import regnet.networks  # noqa: F401  (registers the model class, also when no training ran here)

    return keras.saving.load_model(folder / "checkpoint" / "model.keras", compile=False).get_weights()


def test_k_steps_resume_k_steps_equals_2k_steps(pairs, tmp_path):
    settings = settings_for(pairs)
    train(settings, tmp_path / "straight", max_steps=4, progress=False)
    train(settings, tmp_path / "resumed", max_steps=2, progress=False)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text()) == {"step": 2}
    summary = train(settings, tmp_path / "resumed", max_steps=4, progress=False)
    assert summary["steps"] == 4
    for a, b in zip(weights(tmp_path / "straight"), weights(tmp_path / "resumed")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in ("model.keras", "settings.json", "history.csv", "checkpoint/settings.json"):
        assert (tmp_path / "resumed" / name).is_file(), name
    history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert "val_epe" in history[0] and len(history) == 3  # header + a validation at steps 2 and 4


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(settings_for(pairs), out, max_steps=2, progress=False)
    return out


def test_resuming_with_changed_settings_names_the_keys(pairs, trained):
    changed = settings_for(pairs, NetworkTraining={**BASE["NetworkTraining"], "LearningRate": 0.01})
    with pytest.raises(RegNetError, match=r"NetworkTraining.LearningRate differ.*--force"):
        Trainer(changed, trained, progress=False)
    forced = Trainer(changed, trained, force=True, progress=False)
    assert forced.out == trained.with_name("run_1") and forced.last_step() == 0


def test_settings_difference_ignores_where_and_how_long():
    old = {"OutputFolder": "a", "NetworkTraining": {"MaxIterations": 5, "BatchSize": 2}, "stage": 1}
    new = {"OutputFolder": "b", "NetworkTraining": {"MaxIterations": 9, "BatchSize": 3}, "stage": 2}
    assert settings_difference(old, new) == ["NetworkTraining.BatchSize", "stage"]


def test_out_that_is_a_file_is_refused(pairs, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RegNetError, match="is a file"):
        Trainer(settings_for(pairs), tmp_path / "f", progress=False)


def test_a_patch_size_the_network_cannot_take_is_named(pairs, tmp_path):
    with pytest.raises(RegNetError, match=r"maps an input of 85 voxels to 5, but Ry = 3 asks for 7; set Ry = 2"):
        Trainer(settings_for(pairs, Ry=3), tmp_path / "run", progress=False).build_model()


def test_a_checkpoint_of_another_network_is_refused(pairs, trained):
    other = settings_for(pairs, NetworkDesign="decimation4", R=44, Ry=2)
    with pytest.raises(RegNetError, match=r"\(NetworkDesign, R differ\)"):
        Trainer(other, trained, progress=False)
    (trained / "settings.json").write_text(json.dumps(other.to_dict()))  # settings say decimation4, file is crop4
    with pytest.raises(RegNetError, match="holds another network or patch size"):
        Trainer(other, trained, progress=False).load_checkpoint()


def run_child(settings: dict, out, devices: int = 2, backend: str = "tensorflow") -> dict:
    """Run tests/distributed_step.py in a fresh process (devices are split before the backend starts)."""
    script = Path(__file__).with_name("distributed_step.py")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script), json.dumps(settings), str(out), str(devices)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_per_replica_parts(pairs) -> dict:
    """BASE without batch norm and input noise: the two things that differ per replica on
    TensorFlow (see regnet.distribute)."""
    return {**BASE, "OutputFolder": str(pairs), "NetworkOptions": {"width": 0.125, "batch_norm": False,
                                                                   "input_noise": 0}}


def adam_moments(folder) -> dict:
    """Adam's first and second moments after the step: 0.1 g and 0.001 g^2 of the gradient g.

    Needed because Adam's first step is +-lr sign(g) whatever the scale of g: equal weights alone
    would not reveal a gradient summed over replicas instead of averaged."""
    import keras

    import regnet.losses  # noqa: F401  (the compiled model's loss and metrics)
    import regnet.metrics  # noqa: F401
    import regnet.networks  # noqa: F401

    model = keras.saving.load_model(folder / "checkpoint" / "model.keras")
    return {v.path.split("/", 1)[1]: np.asarray(v) for v in model.optimizer.variables
            if v.path.endswith(("_momentum", "_velocity"))}


def assert_same_step(one_device, replicated) -> None:
    one, two = weights(one_device), weights(replicated)
    for a, b in zip(one, two):  # Adam's step is 1e-3 per weight; float noise is ~1e-8
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
    m1, m2 = adam_moments(one_device), adam_moments(replicated)
    assert sorted(m1) == sorted(m2) and len(m1) >= len(one)  # two per trainable weight (BN statistics have none)
    for kind in ("_momentum", "_velocity"):  # tolerance from the largest moment of its kind: a conv bias
        keys = [k for k in m1 if k.endswith(kind)]  # before batch norm has a gradient of float noise only
        scale = max(np.abs(m1[k]).max() for k in keys)
        assert scale > 0
        for key in keys:
            np.testing.assert_allclose(m2[key], m1[key], rtol=1e-3, atol=1e-4 * scale, err_msg=key)


def test_mirrored_on_two_cpus_splits_the_batch_and_gives_the_same_step(pairs, tmp_path):
    found = run_child(without_per_replica_parts(pairs), tmp_path)  # ~30 s of CPU
    assert found["none"] == {"replicas": 1, "train_step_batches": [2]}
    assert found["mirrored"] == {"replicas": 2, "train_step_batches": [1, 1]}  # BatchSize 2 over two CPUs
    assert_same_step(tmp_path / "none", tmp_path / "mirrored")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (not a CI dependency)")
@pytest.mark.skipif(not os.environ.get("REGNET_TEST_JAX"), reason="JAX on CPU compiles the training step for ~2 "
                    "minutes; set REGNET_TEST_JAX=1 to run this test")
def test_data_parallel_on_two_jax_cpus_gives_the_same_step(tmp_path):
    # unet1 on the stage-4 phantom (50 x 41 x 45 -> one 53^3 full-image input): crop4's 85^3 takes ~7 min on JAX
    settings = {**BASE, "stage": 4, "NetworkDesign": "unet1", "R": 26, "Ry": 26, "OutputFolder": str(tmp_path / "p"),
                "NetworkOptions": {"width": 0.125},  # batch norm and noise stay on: JAX computes on the whole batch
                "DataExpDict": [{**BASE["DataExpDict"][0], "ValidationDSmoothList": [5, 9]}],
                "NetworkTraining": {**BASE["NetworkTraining"], "SamplesPerImage": 1},
                "NetworkValidation": {**BASE["NetworkValidation"], "NumberOfImagesPerChunk": 2}}
    run(load_settings(settings), progress=False)
    found = run_child(settings, tmp_path / "runs", backend="jax")
    assert found["mirrored"]["replicas"] == 2
    assert_same_step(tmp_path / "runs" / "none", tmp_path / "runs" / "mirrored")


def test_distribute_setting_is_checked():
    with pytest.raises(RegNetError, match=r"Distribute must be one of 'none', 'mirrored', got 'mirored'; did you mean "
                                          r"'mirrored'\?"):
        load_settings({**BASE, "Distribute": "mirored"})


def test_batches_that_do_not_split_over_the_devices_are_refused(pairs, monkeypatch):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from regnet import distribute

    two = SimpleNamespace(num_replicas_in_sync=2, scope=nullcontext)
    monkeypatch.setattr(distribute, "_tensorflow_strategy", lambda: two)
    odd = settings_for(pairs, NetworkTraining={**BASE["NetworkTraining"], "BatchSize": 3})
    with pytest.raises(RegNetError, match=r"over 2 devices: training batches of 3 patches do not split evenly "
                                          r"\(NetworkTraining.BatchSize 3.*multiple of 2"):
        with distribute.distribution_scope("mirrored", odd):
            pass
    # validation keeps its last, partial batch: 1 pair x 3 samples in batches of 2 -> 2 and 1
    partial = settings_for(pairs, NetworkValidation={**BASE["NetworkValidation"], "SamplesPerImage": 3})
    with pytest.raises(RegNetError, match=r"validation batches of 1 and 2 patches do not split evenly"):
        with distribute.distribution_scope("mirrored", partial):
            pass
    with distribute.distribution_scope("mirrored", settings_for(pairs)) as strategy:
        assert distribute.replicas(strategy) == 2


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(pairs, trained, tmp_path, monkeypatch):
    from regnet.reading.dataset import ReaderDataset

    original = ReaderDataset.__getitem__

    def poisoned(self, index):  # the batch of step 3 (global batch 2) carries a NaN target
        x, y = original(self, index)
        if self.training and self.first + index == 2:
            y = np.full_like(y, np.nan)
        return x, y

    monkeypatch.setattr(ReaderDataset, "__getitem__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(RegNetError, match=r"loss became NaN or infinite at step 3; training stopped; the last good "
                                          r"checkpoint \(step 2\) is kept in .*checkpoint"):
        train(settings_for(pairs), out, max_steps=4, progress=False)
    assert json.loads((out / "checkpoint" / "state.json").read_text()) == {"step": 2}
    kept = weights(out)
    assert all(np.isfinite(w).all() for w in kept)
    for a, b in zip(kept, weights(trained)):  # the checkpoint is the clean 2-step model
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    import keras

    best = keras.saving.load_model(out / "model.keras", compile=False).get_weights()  # from step 2's validation
    assert all(np.isfinite(w).all() for w in best)


def test_the_command_resumes_in_a_new_process(pairs, tmp_path):
    # a fresh interpreter has not imported regnet.losses/metrics: loading the checkpoint must still work
    settings = tmp_path / "settings.json"
    settings_for(pairs).write_json(settings)
    run_dir = tmp_path / "run"
    train(settings_for(pairs), run_dir, max_steps=2, progress=False)  # its own run: other tests change `trained`
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "regnet", "train", str(settings), "--out", str(run_dir),
                           "--steps", "3"], capture_output=True, text=True, encoding="utf-8", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained to step 3" in done.stdout
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text()) == {"step": 3}
