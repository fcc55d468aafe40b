"""Training: ``model.fit`` on the patch reader, with checkpoints, exact resume and the best model.

Folder ``DIR``::

    settings.json           the resolved settings (compared at resume)
    checkpoint/model.keras  the last checkpoint: weights and optimiser state
    checkpoint/state.json   its step; the reader's stream position is that step (regnet.reading.schedule)
    model.keras             the best model by validation end-point error, with settings.json beside it
    history.csv             one row per validation pass
    logs/                   TensorBoard (scalars, and images on the TensorFlow backend)

Resume is exact because the batch of step k is a fixed function of the settings and k, and the
optimiser state travels in the checkpoint: k steps, resume, k steps gives the weights of 2k steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

from regnet import RegNetError
from regnet.files import write_json_atomic
from regnet.seeding import seed_for
from regnet.settings import READER_SOURCES, NetworkRun, Settings, load_settings

CLI_HELP = "train a RegNet network on synthetic pairs (resumable; TensorBoard in DIR/logs)"
#: Settings that may change between a run and its resume without changing what is trained.
RESUMABLE_KEYS = {"OutputFolder", "Jobs", "DataFolder", "Distribute"}
#: NetworkTraining keys that only say how long to train.
RESUMABLE_TRAINING_KEYS = {"MaxIterations"}


def _keras():
    """Keras with oneDNN on (Conv3D 4-8x faster on CPU); imported lazily to keep the CLI start fast."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def _defaults(cls) -> dict:
    return {f.metadata.get("key", f.name): f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _batch_source(source) -> str:
    """"memory" makes the very pairs of "files" in memory (the same batches); "device" draws others."""
    return "device" if source == "device" else "files"


def settings_difference(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved settings dicts. A key the old dict lacks
    (added to regnet after that run started) counts as its default."""
    keys = []
    top, run_defaults = _defaults(Settings), _defaults(NetworkRun)
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS:
            continue
        a, b = old.get(key, top.get(key)), new.get(key, top.get(key))
        if key == "NetworkTraining" and isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if k not in RESUMABLE_TRAINING_KEYS
                     and a.get(k, run_defaults.get(k)) != b.get(k, run_defaults.get(k))]
        elif key == "ReaderSource":
            if _batch_source(a) != _batch_source(b):
                keys.append(key)
        elif a != b:
            keys.append(key)
    return keys


def _json_roundtrip(value):
    return json.loads(json.dumps(value))


class Trainer:
    """One training run in one folder; ``run()`` trains up to ``MaxIterations`` steps."""

    def __init__(self, settings: Settings | dict | str | Path, out: str | Path, force: bool = False,
                 progress: bool = True, workers: int = 2):
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self.out = self._folder(Path(out), force)
        self.progress, self.workers = progress, workers
        self.keras = _keras()
        if self.settings.MixedPrecision:
            self.keras.mixed_precision.set_global_policy("mixed_bfloat16")

    # ------------------------------------------------------------ folder and resume
    def _folder(self, out: Path, force: bool) -> Path:
        if out.exists() and not out.is_dir():
            raise RegNetError(f"--out {out} is a file; give a folder for the training run.")
        saved = out / "settings.json"
        if saved.is_file():
            differ = settings_difference(json.loads(saved.read_text(encoding="utf-8")),
                                         _json_roundtrip(self.settings.to_dict()))
            if differ and not force:
                raise RegNetError(f"{out} holds a run with other settings ({', '.join(differ)} differ). Resume with "
                                  "the same settings, or pass --force to start over in a new folder.")
            if differ:
                n = 1
                while out.with_name(f"{out.name}_{n}").exists():
                    n += 1
                out = out.with_name(f"{out.name}_{n}")
                print(f"settings changed ({', '.join(differ)}): starting over in {out}")
        out.mkdir(parents=True, exist_ok=True)
        return out

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint" / "model.keras"

    def last_step(self) -> int:
        state = self.out / "checkpoint" / "state.json"
        return json.loads(state.read_text())["step"] if state.is_file() else 0

    # ------------------------------------------------------------ model
    def build_model(self):
        from regnet import networks

        r, ry = self.settings.patch_radii()
        name = self.settings.NetworkDesign
        try:
            out_size = networks.output_size(name, 2 * r + 1)
        except RegNetError as err:
            raise RegNetError(f"R = {r} does not fit {name}: {err}") from None
        if out_size != 2 * ry + 1:
            raise RegNetError(f"{name} maps an input of {2 * r + 1} voxels to {out_size}, but Ry = {ry} asks for "
                              f"{2 * ry + 1}; set Ry = {(out_size - 1) // 2}.")
        # initial weights and the training input noise from the stable seed hash, as every other draw:
        # the same settings train the same model, and a resumed run draws the same noise
        self.keras.utils.set_random_seed(seed_for("network initialisation", name, self.settings.stage) % 2**31)
        options = {"seed": seed_for("network input noise", name, self.settings.stage) % 2**31,
                   **self.settings.NetworkOptions}
        model = networks.build(name, input_size=2 * r + 1, **options)
        self.compile(model)
        return model

    def compile(self, model) -> None:
        from regnet import losses
        from regnet.metrics import class_metrics

        keras = self.keras
        run = self.settings.NetworkTraining
        stage = float(self.settings.stage)
        rate = run.LearningRate
        if run.LearningRate_Decay is not None:
            from regnet.reading import PatchReader

            per_semi_epoch = len(PatchReader(self.settings, "Training"))
            rate = keras.optimizers.schedules.ExponentialDecay(run.LearningRate, per_semi_epoch,
                                                               run.LearningRate_Decay, staircase=True)
        loss = losses.build("regnet", delta=run.HuberDelta, bending_weight=run.reg_weight, spacing=(stage,) * 3)
        model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss,
                      metrics=class_metrics(self.settings.class_balanced()), jit_compile=self.settings.JitCompile)

    def load_checkpoint(self):
        from regnet import losses, metrics, networks  # noqa: F401 - registers the loss and metrics for loading

        try:
            model = self.keras.saving.load_model(self.checkpoint, compile=True)
        except Exception as err:  # foreign or damaged file
            raise RegNetError(f"{self.checkpoint}: cannot resume from it ({type(err).__name__}: {err}).") from err
        r, _ = self.settings.patch_radii()
        if not isinstance(model, networks.RegNetModel) or model.network_name != networks.get_spec(
                self.settings.NetworkDesign).name or model.input_shape[1] != 2 * r + 1:
            raise RegNetError(f"{self.checkpoint} holds another network or patch size than the settings "
                              f"({self.settings.NetworkDesign}, input {2 * r + 1}); use --force to start over.")
        return model

    # ------------------------------------------------------------ saving
    def save(self, model, path: Path, step: int | None = None) -> None:
        """Write a model atomically (temporary name, then rename), with settings.json beside it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
        model.save(tmp)
        os.replace(tmp, path)
        self.settings.write_json(path.parent / "settings.json")
        if step is not None:
            write_json_atomic(path.parent / "state.json", {"step": int(step)})

    # ------------------------------------------------------------ the run
    def run(self, max_steps: int | None = None) -> dict:
        """Train until ``max_steps`` (default: NetworkTraining.MaxIterations); returns a summary.

        The model is built (or loaded), compiled and fitted inside the scope of the devices that
        ``Distribute`` names (:mod:`regnet.distribute`)."""
        from regnet.distribute import distribution_scope

        with distribution_scope(self.settings.Distribute, self.settings):
            return self._run(max_steps)

    def _run(self, max_steps: int | None = None) -> dict:
        from regnet.reading import PatchReader
        from regnet.training_callbacks import callbacks_for

        run = self.settings.NetworkTraining
        total = int(max_steps or run.MaxIterations)
        step = self.last_step()
        if step and step >= total:  # nothing to train: the checkpoint is not even loaded
            return {"steps": step, "resumed_from": step, "seconds": 0.0, "out": str(self.out)}
        model = self.load_checkpoint() if step else self.build_model()
        self.settings.write_json(self.out / "settings.json")
        every = run.ValidationEvery
        t0 = time.perf_counter()
        source = self.settings.ReaderSource
        with PatchReader(self.settings, "Training", source, workers=self.workers, start=step) as train_reader, \
                PatchReader(self.settings, "Validation", source, workers=1) as val_reader:
            callbacks = callbacks_for(self, model, val_reader, first_step=step)
            train = train_reader.as_dataset(first=step)
            val = val_reader.as_dataset()
            try:
                while step < total:
                    epoch = step // every
                    n = min(every - step % every, total - step)
                    validate = (step + n) % every == 0 or step + n == total
                    model.fit(train, steps_per_epoch=n, epochs=epoch + 1, initial_epoch=epoch,
                              validation_data=val if validate else None, callbacks=callbacks,
                              verbose=1 if self.progress else 0,
                              shuffle=False)  # the reader shuffles (seeded); Keras' own flag only warns
                    if callbacks[0].failed_step is not None:
                        raise RegNetError(f"the loss became NaN or infinite at step {callbacks[0].failed_step}; "
                                          f"training stopped; the last good checkpoint (step {self.last_step()}) "
                                          f"is kept in {self.checkpoint.parent}.")
                    train.first += n  # the next fit call starts its indices at 0 again
                    step = int(model.optimizer.iterations.numpy())
                    self.save(model, self.checkpoint, step)
            except KeyboardInterrupt:
                step = int(model.optimizer.iterations.numpy())
                if callbacks[0].failed_step is None:
                    self.save(model, self.checkpoint, step)
                print(f"interrupted at step {step}; checkpoint saved, run the same command to resume")
                raise
        if not (self.out / "model.keras").is_file():  # no validation yet: the last model is the best known
            self.save(model, self.out / "model.keras")
        return {"steps": step, "seconds": time.perf_counter() - t0, "out": str(self.out),
                "best_val_epe": callbacks[1].best}


def read_history(history) -> list[dict[str, float]]:
    """The rows of a history.csv as numbers (empty cells left out); [] when there is none yet."""
    import csv

    if not Path(history).is_file():
        return []
    with open(history, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def last_validation(history) -> dict[str, float]:
    """The last validation row of a history.csv, {} when there is none."""
    return next((row for row in reversed(read_history(history)) if "val_epe" in row), {})


def train(settings, out, max_steps: int | None = None, force: bool = False, progress: bool = True) -> dict:
    """Train (or resume) in ``out``; the Python face of ``regnet train``."""
    return Trainer(settings, out, force=force, progress=progress).run(max_steps)


def add_arguments(p) -> None:
    p.add_argument("settings", type=Path, help="settings file (.json or .toml) in RegNet's vocabulary")
    p.add_argument("--out", type=Path, required=True, help="training folder (resumed when it holds a run)")
    p.add_argument("--steps", type=int, default=None, help="train up to this step (default: MaxIterations)")
    p.add_argument("--force", action="store_true", help="settings changed: start over in a new folder")
    p.add_argument("--generate", action="store_true", help="generate missing pairs first (else made on demand)")
    p.add_argument("--source", choices=READER_SOURCES, default=None,
                   help="where patches come from (overrides the settings' ReaderSource): pair files, pairs made "
                        "in memory, or fresh pairs for every batch on the accelerator (device)")


def train_command(args) -> int:
    settings = load_settings(args.settings)
    if args.source is not None:
        settings = dataclasses.replace(settings, ReaderSource=args.source)
    if args.generate and settings.ReaderSource != "device":
        from regnet.generate import run as generate

        generate(settings, jobs=settings.Jobs)
    summary = train(settings, args.out, max_steps=args.steps, force=args.force)
    best = summary.get("best_val_epe")
    zero = last_validation(Path(summary["out"]) / "history.csv").get("val_zero_epe")
    suffix = ""
    if best is not None and math.isfinite(best):
        baseline = f"; predicting zero gives {zero:.3f} mm" if zero is not None else ""
        suffix = f" (validation end-point error {best:.3f} mm{baseline})"
    print(f"trained to step {summary['steps']} in {summary['seconds']:.0f} s; best model {summary['out']}/model.keras"
          + suffix)
    return 0
