"""What a synthetic pair was made from, so that a re-run never keeps pairs of other settings.

``regnet generate`` skips a pair whose ``done.json`` exists. Alone, that would keep a pair made
with ``MaxDeform = 7`` when the settings now say 2, and nothing would show it until a model
trained on it is bad. So each ``done.json`` records ``made_from``: the resolved parameters that
shape the pair (its deform experiment, the stage, the layout's background value and modality)
and their SHA-256. Before any work, :func:`stale_pairs` compares the record of every finished
pair with the current settings; the job stops naming the keys that differ, or with
``overwrite`` :func:`forget` removes what must be made again. A ``done.json`` without the record
(written before it existed) counts as made from other settings: it cannot be shown to match.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from regnet import RegNetError
from regnet.store import PairId, PairStore

#: Deform-experiment keys that do not shape the files (the reader's magnitude classes).
_NOT_SHAPING = ("ClassBalanced",)
#: Keys of the record that concern the original image on the stage grid, not only the pair.
_ORIGINAL_KEYS = ("stage", "layout.default_pixel_value", "layout.modality")


def made_from(pair: PairId, store: PairStore) -> dict:
    """``{"sha256": ..., "parameters": {...}}``: the resolved values this pair is made from."""
    exp = store.settings.deform_exps[pair.image.deform_exp]
    layout = store.layout(pair.image.data)
    values = {f"deform_exp.{k}": v for k, v in dataclasses.asdict(exp).items() if k not in _NOT_SHAPING}
    values.update({"stage": pair.image.stage, "layout.default_pixel_value": float(layout.default_pixel_value),
                   "layout.modality": layout.modality})
    values = json.loads(json.dumps(values, sort_keys=True))  # the form it has when read back from done.json
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "parameters": values}


def differing_keys(recorded: dict | None, current: dict) -> list[str]:
    """Keys whose values differ; ``["(no record)"]`` for a done.json written without one."""
    if not isinstance(recorded, dict) or "parameters" not in recorded:
        return ["(no record)"]
    if recorded.get("sha256") == current["sha256"]:
        return []
    old, new = recorded["parameters"], current["parameters"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["(record hash)"]


def stale_pairs(pairs, store: PairStore) -> dict[PairId, list[str]]:
    """Finished pairs (done.json present) made from other settings -> the keys that differ."""
    stale = {}
    for pair in pairs:
        done = store.pair_dir(pair) / "done.json"
        if not done.is_file():
            continue
        try:
            recorded = json.loads(done.read_text(encoding="utf-8")).get("made_from")
        except (ValueError, OSError, AttributeError):
            recorded = None
        keys = differing_keys(recorded, made_from(pair, store))
        if keys:
            stale[pair] = keys
    return stale


def describe_stale(stale: dict[PairId, list[str]], store: PairStore, total: int) -> str:
    """One message: how many pairs, which keys (old -> new for the first pair), and the way out."""
    unrecorded = sum(keys == ["(no record)"] for keys in stale.values())
    recorded_pairs = [(pair, keys) for pair, keys in stale.items() if keys != ["(no record)"]]
    parts = []
    if recorded_pairs:  # the example comes from a pair that has a record to compare with
        first, keys = recorded_pairs[0]
        recorded = json.loads((store.pair_dir(first) / "done.json").read_text(encoding="utf-8"))["made_from"]
        now = made_from(first, store)["parameters"]
        shown = [f"{k} {recorded['parameters'].get(k)!r} -> {now.get(k)!r}" for k in keys[:5]]
        all_keys = sorted({k for _, ks in recorded_pairs for k in ks})
        parts.append("differing keys: " + ", ".join(all_keys) + f" (e.g. {store.pair_dir(first)}: {'; '.join(shown)})")
    if unrecorded:
        parts.append(f"{unrecorded} of them: their done.json has no 'made_from' record (made by an older regnet), "
                     "so they cannot be shown to match")
    detail = "; ".join(parts)
    return (f"{len(stale)} of {total} finished pairs under {store.root} were made from other settings; {detail}. "
            "Re-run with --overwrite (Python: overwrite=True) to make them again with these settings, or choose "
            "a new OutputFolder (--out).")


def forget(stale: dict[PairId, list[str]], store: PairStore) -> None:
    """Remove the marks that make the job skip these pairs: done.json, the next image's marker, and
    the original's marker when a key of the original differs (or there is no record)."""
    for pair, keys in stale.items():
        _unlink(store.pair_dir(pair) / "done.json")  # first: a kill from here on leaves the pair not done
        if pair.dsmooth:
            _unlink(store.files(pair).moving)  # NextIm.mha marks a complete next image
        if "(no record)" in keys or any(k in _ORIGINAL_KEYS for k in keys):
            _unlink(store.original_dir(pair.image) / "Torso.mha")  # marks a complete original


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise RegNetError(f"{path}: cannot remove it to make the pair again ({err.strerror}).") from None
