"""Training losses on DVFs (B, z, y, x, 3), components (x, y, z) in mm: Huber data term + bending energy.

RegNet's loss is ``huber(y_true, y_pred; delta=1 mm) + 0.1 * bending_energy(y_pred)``. Here both
terms are in physical units: ``delta`` is in mm (a setting per stage: maximum deformations differ)
and the bending energy uses the real voxel spacing (``s`` mm at stage ``s``), so its weight means
the same at every stage.

Bending energy, defined precisely: for each component u of the DVF and each voxel of the interior
(one voxel in from every face), with second derivatives in 1/mm by central differences,

    u_xx = (u[x+1] - 2u[x] + u[x-1]) / sx^2,
    u_xy = (u[x+1,y+1] - u[x+1,y-1] - u[x-1,y+1] + u[x-1,y-1]) / (4 sx sy),  (likewise yy, zz, xz, yz)

    BE = mean over interior voxels and the 3 components of
         u_xx^2 + u_yy^2 + u_zz^2 + 2 u_xy^2 + 2 u_xz^2 + 2 u_yz^2

in 1/mm^2 (a DVF in mm differentiated twice in mm, squared). Central differences are exact for quadratic fields, so any
affine field gives exactly 0 and ``u_x = a x^2`` gives ``(2a)^2 / 3``. RegNet used forward
differences with zero padding at the far end and voxel size 1, which adds spurious curvature at
the patch border and ignores the stage's spacing. Patches thinner than 3 voxels have no interior:
their bending energy is 0.

Both terms are returned per sample (shape (B,)); Keras's default reduction averages them over the
batch, which equals the mean over all elements because every sample has the same size.
"""
from __future__ import annotations

import difflib
import inspect

import keras
from keras import ops

from regnet import RegNetError

PACKAGE = "regnet"


def _spacing(spacing) -> tuple[float, float, float]:
    """(sx, sy, sz) in mm, SimpleITK order; a single number means isotropic."""
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = (spacing,) * 3
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise RegNetError(f"spacing must be a positive number or (sx, sy, sz) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(s > 0 for s in values):
        raise RegNetError(f"spacing must be a positive number or (sx, sy, sz) in mm, got {spacing!r}")
    return values


def huber(y_true, y_pred, delta: float = 1.0):
    """Per-sample mean of 0.5 e^2 (|e| <= delta) or delta (|e| - 0.5 delta) over voxels and components; mm^2."""
    error = ops.cast(y_pred, "float32") - ops.cast(y_true, "float32")
    abs_error = ops.abs(error)
    quadratic = ops.minimum(abs_error, delta)
    per_element = 0.5 * quadratic**2 + delta * (abs_error - quadratic)
    return ops.mean(ops.reshape(per_element, (ops.shape(per_element)[0], -1)), axis=1)


def bending_energy(dvf, spacing=(1.0, 1.0, 1.0)):
    """Per-sample bending energy (1/mm^2) of a DVF (B, z, y, x, 3) in mm; see the module docstring."""
    sx, sy, sz = _spacing(spacing)
    u = ops.cast(dvf, "float32")
    if any(n is not None and n < 3 for n in u.shape[1:4]):
        return ops.zeros((ops.shape(u)[0],), dtype="float32")
    c = slice(1, -1)
    hi, lo = slice(2, None), slice(None, -2)
    centre = u[:, c, c, c]
    u_xx = (u[:, c, c, hi] - 2.0 * centre + u[:, c, c, lo]) / sx**2
    u_yy = (u[:, c, hi, c] - 2.0 * centre + u[:, c, lo, c]) / sy**2
    u_zz = (u[:, hi, c, c] - 2.0 * centre + u[:, lo, c, c]) / sz**2
    u_xy = (u[:, c, hi, hi] - u[:, c, hi, lo] - u[:, c, lo, hi] + u[:, c, lo, lo]) / (4.0 * sx * sy)
    u_xz = (u[:, hi, c, hi] - u[:, hi, c, lo] - u[:, lo, c, hi] + u[:, lo, c, lo]) / (4.0 * sx * sz)
    u_yz = (u[:, hi, hi, c] - u[:, hi, lo, c] - u[:, lo, hi, c] + u[:, lo, lo, c]) / (4.0 * sy * sz)
    energy = u_xx**2 + u_yy**2 + u_zz**2 + 2.0 * (u_xy**2 + u_xz**2 + u_yz**2)
    return ops.mean(ops.reshape(energy, (ops.shape(energy)[0], -1)), axis=1)


def _check_delta(delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
        raise RegNetError(f"Huber delta must be a positive number of mm, got {delta!r}")
    return float(delta)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HuberLoss(keras.losses.Loss):
    """Huber on the DVF alone (delta in mm)."""

    def __init__(self, delta: float = 1.0, name: str = "huber", **kwargs):
        super().__init__(name=name, **kwargs)
        self.delta = _check_delta(delta)

    def call(self, y_true, y_pred):
        return huber(y_true, y_pred, self.delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RegNetLoss(keras.losses.Loss):
    """``huber(delta mm) + bending_weight * bending_energy(prediction, spacing mm)``: RegNet's training loss."""

    def __init__(self, delta: float = 1.0, bending_weight: float = 0.1, spacing=(1.0, 1.0, 1.0),
                 name: str = "regnet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.delta = _check_delta(delta)
        if isinstance(bending_weight, bool) or not isinstance(bending_weight, (int, float)) or bending_weight < 0:
            raise RegNetError(f"bending_weight must be a number >= 0, got {bending_weight!r}")
        self.bending_weight = float(bending_weight)
        self.spacing = _spacing(spacing)

    def call(self, y_true, y_pred):
        loss = huber(y_true, y_pred, self.delta)
        if self.bending_weight:
            loss = loss + self.bending_weight * bending_energy(y_pred, self.spacing)
        return loss

    def components(self, y_true, y_pred) -> dict:
        """Batch means of the two terms and the total, for logging (TensorBoard 'Huber', 'BendingE')."""
        h = ops.mean(huber(y_true, y_pred, self.delta))
        b = ops.mean(bending_energy(y_pred, self.spacing))
        return {"huber": h, "bending_energy": b, "loss": h + self.bending_weight * b}

    def get_config(self):
        return {**super().get_config(), "delta": self.delta, "bending_weight": self.bending_weight,
                "spacing": list(self.spacing)}


#: Losses by name, for settings files.
LOSSES = {"regnet": RegNetLoss, "huber": HuberLoss}


def build(name: str = "regnet", **options) -> keras.losses.Loss:
    """The loss called ``name`` with ``options`` (e.g. ``build('regnet', delta=2.0, spacing=4)``)."""
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), list(LOSSES), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RegNetError(f"unknown loss {name!r}; {hint}available: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RegNetError(f"unknown option {key!r} for loss {name!r}; {hint}valid options: {', '.join(allowed)}")
    return cls(**options)
