"""The whole product on built-in data: synthetic pairs -> a small trained network -> a held-out pair
registered in one shot -> evaluated against its known field and landmarks -> one report.

Nothing is downloaded: the pairs come from the procedural phantom (cases are seeds), and the
held-out pair is a phantom case the network never saw, its exhale phase made by a known
respiratory motion (``regnet.phantom``). Every step resumes: pairs on disk are kept, training
continues from its last checkpoint, registration and evaluation (seconds) are redone.

Folder ``DIR``::

    pairs/          synthetic training and validation pairs (regnet generate)
    training/       model.keras, checkpoint/, history.csv, logs/ (regnet train; tensorboard --logdir DIR)
    held_out/       the held-out pair: fixed (exhale) and moving (inhale) images, masks, landmarks, true DVF
    registration/   dvf.mha, warped_moving.mha, overlay.png, registration.json (regnet register)
    evaluation/     metrics.json, landmarks.csv, figures (regnet evaluate)
    demo.json       the figures below; report.html ties everything together
"""
from __future__ import annotations

import copy
import html
import json
from pathlib import Path

from regnet import RegNetError
from regnet.files import write_json_atomic
from regnet.settings import Settings, load_settings
from regnet.timing import Clock

CLI_HELP = "the whole product on the built-in phantom: generate, train, register, evaluate, report"

#: The demo in RegNet's vocabulary: a narrow unet1 at stage 4 (4 mm voxels) on phantom pairs, small
#: enough for a 2-core CPU. The phantom at stage 4 is about 50x41x45 voxels, padded to 53^3.
DEMO_SETTINGS = {
    "DataExpDict": [{
        "data": "Phantom",
        "deform_exp": "3D_max20_D14_K",
        "TrainingCNList": [1, 2, 3, 4, 5, 6],
        "TrainingTypeImList": [0],
        "TrainingDSmoothList": [0, 1, 2, 3, 4, 5],  # respiratory motion (4 draws), single frequency (2)
        "ValidationCNList": [9],
        "ValidationTypeImList": [0],
        "ValidationDSmoothList": [0, 4],
    }],
    "stage": 4,
    "NetworkDesign": "unet1",
    "R": 26, "Ry": 26,                           # whole images padded to 53^3 (unet1 sizes are 21 + 8k)
    "NetworkOptions": {"width": 0.25, "batch_norm": False},
    "NetworkTraining": {"NumberOfImagesPerChunk": 24, "SamplesPerImage": 1, "BatchSize": 4,
                        "LearningRate": 3e-3, "MaxIterations": 450, "ValidationEvery": 50, "CheckpointEvery": 50},
    "NetworkValidation": {"NumberOfImagesPerChunk": 2, "SamplesPerImage": 1, "BatchSize": 2},
    "Jobs": 2,
}
#: ``--quick``: the same run, fewer steps (a later full run continues from it).
QUICK_STEPS = 100
#: The held-out phantom case: not among the training or validation cases above.
HELD_OUT_CASE = 10


def held_out_case(settings: Settings) -> int:
    used = {int(c) for exp in settings.DataExpDict if exp.data == "Phantom"
            for c in (*exp.TrainingCNList, *exp.ValidationCNList)}
    if HELD_OUT_CASE in used:
        raise RegNetError(f"phantom case {HELD_OUT_CASE} is the demo's held-out pair; train and validate on "
                          "other cases.")
    return HELD_OUT_CASE


def write_held_out(out: Path, case: int) -> dict:
    """The held-out pair as files, so every later step can also be run by hand with the CLI.

    Fixed = inhale (T00), moving = exhale (T50), as RegNet registered DIR-Lab (its synthetic
    respiratory motion pulls from above, like inhale from exhale). The phantom knows the exhale
    field on the T50 grid; the true DVF here is its inverse, on the T00 grid (same grid)."""
    from regnet.deform.field import invert
    from regnet.io import dvf_to_image, write_dvf, write_image
    from regnet.landmarks import write_landmarks
    from regnet.layouts import load_layout
    from regnet.phantom import exhale_truth, phantom_case

    layout = load_layout("Phantom")
    paths = {name: out / f"{name}{suffix}" for name, suffix in (
        ("fixed", ".mha"), ("fixed_lung", ".mha"), ("fixed_torso", ".mha"), ("fixed_landmarks", ".txt"),
        ("moving", ".mha"), ("moving_torso", ".mha"), ("moving_landmarks", ".txt"), ("truth", ".mha"))}
    if all(p.is_file() for p in paths.values()):
        return paths
    inhale, exhale = phantom_case(layout, case, layout.types[0]), phantom_case(layout, case, layout.types[1])
    write_image(inhale["image"], paths["fixed"])
    write_image(inhale["lung"], paths["fixed_lung"])
    write_image(inhale["torso"], paths["fixed_torso"])
    write_landmarks(inhale["landmarks"], paths["fixed_landmarks"])
    write_image(exhale["image"], paths["moving"])
    write_image(exhale["torso"], paths["moving_torso"])
    write_landmarks(exhale["landmarks"], paths["moving_landmarks"])
    to_exhale = exhale_truth(layout, case)
    write_dvf(dvf_to_image(invert(to_exhale), to_exhale), paths["truth"])  # last: its presence = a complete set
    return paths


def zero_field_error(truth, mask=None, classes=None) -> dict:
    """The end-point error of 'no registration' (u = 0): |u_true| over the mask."""
    import SimpleITK as sitk

    from regnet.evaluate import dvf_error, load_dvf

    truth = load_dvf(truth, "true DVF")
    zero = sitk.Image(truth.GetSize(), sitk.sitkVectorFloat32, 3)
    zero.CopyInformation(truth)
    return dvf_error(zero, truth, mask, classes)


def training_curve_png(history: list[dict], every: int, zero_epe: float | None, path: Path) -> str | None:
    """Validation end-point error against training step, with the zero-prediction error as a line."""
    from regnet.figures import pyplot, save_png

    rows = [h for h in history if "val_epe" in h]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [(int(h["epoch"]) + 1) * every for h in rows]
    ax.plot(steps, [h["val_epe"] for h in rows], "o-", label="validation end-point error")
    if "epe" in rows[0]:
        ax.plot(steps, [h["epe"] for h in rows], ".--", alpha=0.6, label="training end-point error")
    if zero_epe is not None:
        ax.axhline(zero_epe, color="grey", ls=":", label="zero prediction (validation)")
    ax.set_xlabel("training step")
    ax.set_ylabel("mm")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)
    return path.name


def run_demo(out, values: dict | None = None, steps: int | None = None, progress: bool = True) -> dict:
    """Generate, train (or resume), register the held-out pair, evaluate, report; returns demo.json."""
    from regnet.evaluate import evaluate, write_evaluation
    from regnet.generate import run as generate
    from regnet.register import register
    from regnet.train import Trainer, last_validation, read_history

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RegNetError(f"--out {out} is a file; give a folder for the demo.")
    values = copy.deepcopy(values or DEMO_SETTINGS)
    values["OutputFolder"] = str(out / "pairs")
    settings = load_settings(values)
    case = held_out_case(settings)
    say = print if progress else (lambda *a, **k: None)
    clock = Clock()
    out.mkdir(parents=True, exist_ok=True)

    say(f"[1/5] synthetic pairs from the phantom ({settings.NetworkDesign}, stage {settings.stage}) -> {out / 'pairs'}")
    with clock("generate"):
        made = generate(settings, jobs=settings.Jobs, progress=progress)
    say(f"      {len(made)} pairs ({sum(not r['skipped'] for r in made)} made)")

    total = int(steps or settings.NetworkTraining.MaxIterations)
    say(f"[2/5] training to step {total} -> {out / 'training'} (tensorboard --logdir {out})")
    with clock("train"):
        trainer = Trainer(settings, out / "training", progress=progress)
        start = trainer.last_step()
        summary = trainer.run(total)
    trained = summary["steps"] - start
    # the model after the last step: on the demo's two validation pairs the "best" model is picked by
    # noise (a full run picked step 150, which registers the held-out pair at x0.69 where step 450 gave x0.38)
    model = trainer.checkpoint

    say(f"[3/5] held-out phantom case {case}: inhale (fixed) <- exhale (moving) -> {out / 'held_out'}")
    with clock("held_out"):
        pair = write_held_out(out / "held_out", case)
    with clock("register"):
        result = register(pair["fixed"], pair["moving"], [model], fixed_mask=pair["fixed_torso"],
                          moving_mask=pair["moving_torso"], affine="none", progress=False)
        result.write(out / "registration")
    say(f"      registered in {sum(v for k, v in result.seconds.items() if '.' not in k):.1f} s")

    say(f"[4/5] evaluation against the known DVF and landmarks -> {out / 'evaluation'}")
    from regnet.landmarks import read_landmarks

    classes = settings.class_balanced()
    with clock("evaluate"):
        fixed_pts, moving_pts = read_landmarks(pair["fixed_landmarks"]), read_landmarks(pair["moving_landmarks"])
        metrics, errors, jac = evaluate(result.dvf, fixed_pts, moving_pts, mask=pair["fixed_lung"],
                                        truth=pair["truth"], classes=classes)
        metrics["pair"] = f"phantom case {case}, T00 <- T50"
        metrics["classes_mm"] = classes
        before = {"lung": zero_field_error(pair["truth"], pair["fixed_lung"], classes),
                  "torso": zero_field_error(pair["truth"], pair["fixed_torso"])}
        after_torso = evaluate_torso(result.dvf, pair)
        write_evaluation(out / "evaluation", metrics, errors, result.dvf, jac, result.fixed, result.moving)

    say("[5/5] report")
    history = read_history(trainer.out / "history.csv")
    zero_val = last_validation(trainer.out / "history.csv").get("val_zero_epe")
    record = {
        "settings": str(trainer.out / "settings.json"), "model": str(model),
        "held_out_case": case, "steps": summary["steps"], "steps_this_run": trained,
        "seconds_per_step": round(clock.seconds["train"] / trained, 3) if trained else None,
        "validation": {"zero_prediction_epe_mm": zero_val,
                       "best_epe_mm": min((h["val_epe"] for h in history if "val_epe" in h), default=None)},
        "dvf_error_mm": {"lung": {"before": before["lung"]["mean"], "after": metrics["dvf_error_mm"]["mean"]},
                         "torso": {"before": before["torso"]["mean"], "after": after_torso["mean"]}},
        "dvf_error_before_by_class": before["lung"].get("classes"),
        "tre_mm": {"before": metrics["initial_mm"]["mean"], "after": metrics["tre_mm"]["mean"],
                   "n": metrics["tre_mm"]["n"]},
        "folding_percent": metrics["jacobian"]["folding_percent"],
        "seconds": {**clock.seconds, "registration_steps": result.seconds},
    }
    lung = record["dvf_error_mm"]["lung"]
    record["ratio"] = {"dvf_error_lung": lung["after"] / lung["before"],
                       "tre": record["tre_mm"]["after"] / record["tre_mm"]["before"]}
    curve = training_curve_png(history, settings.NetworkTraining.ValidationEvery, zero_val, out / "training_curve.png")
    write_json_atomic(out / "demo.json", record)
    write_report(out, record, metrics, curve, settings)
    say(summary_text(record, out))
    return record


def evaluate_torso(dvf, pair: dict) -> dict:
    from regnet.evaluate import dvf_error, load_dvf

    return dvf_error(dvf, load_dvf(pair["truth"], "true DVF"), pair["fixed_torso"])


def summary_text(record: dict, out: Path) -> str:
    e, t = record["dvf_error_mm"], record["tre_mm"]
    s = record["seconds"]
    step = record["seconds_per_step"]
    lines = [
        "",
        f"held-out phantom pair (case {record['held_out_case']}), model trained {record['steps']} steps:",
        f"  DVF end-point error in the lung   {e['lung']['before']:6.2f} mm before -> "
        f"{e['lung']['after']:5.2f} mm after  (x{record['ratio']['dvf_error_lung']:.2f})",
        f"  DVF end-point error in the torso  {e['torso']['before']:6.2f} mm before -> "
        f"{e['torso']['after']:5.2f} mm after",
        f"  landmark TRE ({t['n']} bifurcations)  {t['before']:6.2f} mm before -> {t['after']:5.2f} mm after"
        f"  (x{record['ratio']['tre']:.2f})",
        f"  folding {record['folding_percent']:.3f} % of the lung",
        "  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items() if isinstance(v, (int, float)))
        + (f"; {step:.2f} s per training step" if step else ""),
        f"  report: {out / 'report.html'}",
    ]
    return "\n".join(lines)


def write_report(out: Path, record: dict, metrics: dict, curve: str | None, settings: Settings) -> Path:
    """DIR/report.html: the demo's figures first, then the evaluation page (figures from evaluation/)."""
    from regnet.files import atomic_path
    from regnet.report import _table, evaluation_html

    e, t = record["dvf_error_mm"], record["tre_mm"]
    rows = [["DVF end-point error, lung (mm)", e["lung"]["before"], e["lung"]["after"],
             record["ratio"]["dvf_error_lung"]],
            ["DVF end-point error, torso (mm)", e["torso"]["before"], e["torso"]["after"],
             e["torso"]["after"] / e["torso"]["before"]],
            [f"landmark TRE, {t['n']} bifurcations (mm)", t["before"], t["after"], record["ratio"]["tre"]]]
    seconds = [[k, v] for k, v in record["seconds"].items() if isinstance(v, (int, float))]
    intro = [
        "<p>A narrow network trained on synthetic pairs of the built-in phantom registers a phantom case it never "
        "saw (its exhale phase made by a known respiratory motion) in one shot.</p>",
        "<h2>Held-out pair: before and after</h2>",
        _table(["", "before", "after", "after / before"], rows),
        f"<p>Folding: {record['folding_percent']:.3f} % of the lung. Training: {record['steps']} steps of "
        f"{html.escape(settings.NetworkDesign)} (stage {settings.stage}); best validation end-point error "
        f"{record['validation']['best_epe_mm'] or float('nan'):.3f} mm against "
        f"{record['validation']['zero_prediction_epe_mm'] or float('nan'):.3f} mm for a zero prediction.</p>",
    ]
    if curve:
        intro.append(f"<figure><img src=\"{curve}\" alt=\"training curve\"><figcaption>Validation end-point error "
                     "during training.</figcaption></figure>")
    intro += [
        "<h2>Run</h2>", _table(["step", "seconds"], seconds),
        "<p>The registered model (the last step): <a href=\"training/checkpoint/model.keras\">"
        "training/checkpoint/model.keras</a>; the best by validation error: <a href=\"training/model.keras\">"
        "training/model.keras</a>; their resolved "
        "<a href=\"training/settings.json\">settings.json</a>; history: <a href=\"training/history.csv\">"
        "history.csv</a>; TensorBoard: <code>tensorboard --logdir " + html.escape(str(out)) + "</code>. "
        "Registration: <a href=\"registration/registration.json\">registration.json</a>, "
        "<a href=\"registration/dvf.mha\">dvf.mha</a>. All figures: <a href=\"demo.json\">demo.json</a>.</p>",
        "<h2>Resolved settings</h2><pre>" + html.escape(json.dumps(settings.to_dict(), indent=1)) + "</pre>",
        "<h1>Evaluation of the held-out pair</h1>",
    ]
    page = evaluation_html(metrics, metrics.get("figures", []), title="RegNet demo on the built-in phantom",
                           intro=intro, prefix="evaluation/")
    path = out / "report.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


# ------------------------------------------------------------------ command line
def add_arguments(p) -> None:
    p.add_argument("--out", type=Path, required=True, help="demo folder (resumed when it holds a run)")
    p.add_argument("--quick", action="store_true", help=f"train {QUICK_STEPS} steps only (about 2 minutes)")
    p.add_argument("--steps", type=int, default=None, help="train up to this step (default: MaxIterations)")


def demo_command(args) -> int:
    steps = args.steps or (QUICK_STEPS if args.quick else None)
    run_demo(args.out, steps=steps)
    return 0
