"""regnet register: composition against SimpleITK, geometry round trips, multi-stage with stand-in
models whose answers are known, affine-only, series, and bad input."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from regnet import RegNetError
from regnet.deform.bspline import dense_field, random_coefficients
from regnet.deform.field import compose as field_compose
from regnet.geometry import Geometry
from regnet.io import image_from_array
from regnet.register import (
    FunctionStageModel,
    StageModel,
    compose_fields,
    fold_affine,
    load_stage_model,
    register,
    register_series,
)


def rotation(ax, ay, az):
    t = sitk.Euler3DTransform()
    t.SetRotation(ax, ay, az)
    return np.asarray(t.GetMatrix())


def points_of(g: Geometry) -> np.ndarray:
    zyx = np.indices(g.shape, dtype=float)
    return g.index_to_physical(np.stack([zyx[2], zyx[1], zyx[0]], -1))


def field_image(g: Geometry, amplitude: float, seed: int) -> sitk.Image:
    u = dense_field(random_coefficients(g, (25, 25, 25), amplitude, 0, 0.0, np.random.default_rng(seed)), g)
    return image_from_array(u.astype(np.float32), g)


def known_affine(center) -> sitk.AffineTransform:
    a = sitk.AffineTransform(3)
    a.SetMatrix((rotation(0.04, -0.03, 0.05).reshape(3, 3) @ np.diag([1.03, 0.98, 1.01])).ravel().tolist())
    a.SetCenter(tuple(float(c) for c in center))
    a.SetTranslation((2.5, -1.5, 3.0))
    return a


def smooth_image(g: Geometry, seed: int) -> sitk.Image:
    from scipy import ndimage

    a = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=g.shape), 2.0) * 4000.0
    return image_from_array(a.astype(np.float32), g)


# fixed: rotated, anisotropic; moving: another grid that covers it with room to spare
FIXED = Geometry((34, 30, 26), (1.1, 1.4, 1.9), (-18.0, -20.0, -22.0),
                 tuple(rotation(0.3, -0.2, 0.45)))
MOVING = Geometry((80, 78, 92), (1.3, 1.25, 1.5), (-62.0, -58.0, -68.0),
                  tuple(rotation(-0.1, 0.15, 0.05)))


def displacement_transform(image: sitk.Image) -> sitk.DisplacementFieldTransform:
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def test_composition_and_affine_fold_match_simpleitk_composite_transform():
    """dvf(x) = A(x + w(x)) - x with w(x) = v(x) + u(x + v(x)) is exactly sitk's Composite[A, U, V]."""
    u = field_image(MOVING, 3.0, 1)      # the field found first (its own, larger grid)
    v = field_image(FIXED, 2.0, 2)       # the residual, on the fixed grid
    a = known_affine(FIXED.index_to_physical(np.asarray(FIXED.size) / 2))
    dvf = fold_affine(compose_fields(u, v), a, FIXED)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(a)                          # applied last
    composite.AddTransform(displacement_transform(u))
    composite.AddTransform(displacement_transform(v))  # applied first
    p = points_of(FIXED).reshape(-1, 3)
    expected = np.array([composite.TransformPoint(tuple(q)) for q in p]) - p
    np.testing.assert_allclose(dvf.reshape(-1, 3), expected, atol=2e-4)
    # the same composition through the project's own compose (zero outside u's grid; all inside here)
    np.testing.assert_allclose(sitk.GetArrayFromImage(compose_fields(u, v)), field_compose(u, v), atol=1e-4)
    # and the images: one warp with dvf == SimpleITK resampling through the composite
    from regnet.deform.field import warp

    moving = smooth_image(MOVING, 3)
    reference = image_from_array(np.zeros(FIXED.shape, np.float32), FIXED)
    ours = sitk.GetArrayFromImage(warp(moving, dvf, "linear", reference=FIXED))
    ref = sitk.GetArrayFromImage(sitk.Resample(moving, reference, composite, sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())


def test_fold_on_its_own_matches_transform_point():
    a = known_affine((5.0, -3.0, 2.0))
    dvf = fold_affine(None, a, FIXED, chunk_voxels=1000)   # many slabs
    p = points_of(FIXED).reshape(-1, 3)
    np.testing.assert_allclose(dvf.reshape(-1, 3), np.array([a.TransformPoint(tuple(q)) for q in p]) - p, atol=1e-4)


def constant_model(stage, c, radius_in=6, radius_out=2, unit=4, calls=None, grid=None):
    """Answers the physical displacement ``c`` everywhere, as a network does: along the axes of the
    stage grid (``D^T c``; every stage grid has the fixed image's direction, ``grid``)."""

    def predict(x):
        if calls is not None:
            calls.append((stage, x.shape))
        n = [s - 2 * (radius_in - radius_out) for s in x.shape[1:4]]
        along_axes = np.asarray(c, float) @ (np.eye(3) if grid is None else grid.matrix)
        return np.broadcast_to(along_axes.astype(np.float32), (x.shape[0], *n, 3)).copy()

    return FunctionStageModel(stage, radius_in, radius_out, predict, unit=unit, name=f"constant{stage}")


def full_masks():
    return (image_from_array(np.ones(FIXED.shape, np.uint8), FIXED),
            image_from_array(np.ones(MOVING.shape, np.uint8), MOVING))


def test_multi_stage_constant_residuals_with_affine_round_trip_through_files(tmp_path):
    """Stages 4, 2, 1 each add a known translation; with an affine the final field must be
    A(x + c4 + c2 + c1) - x, and warping MOVING with the written dvf.mha through SimpleITK must
    reproduce warped_moving.mha (rotated, anisotropic fixed grid; moving on another grid)."""
    c = {4: (1.5, -2.0, 0.5), 2: (-0.4, 0.3, 0.8), 1: (0.1, 0.2, -0.3)}
    calls = []
    models = [constant_model(s, c[s], calls=calls, grid=FIXED) for s in (1, 4, 2)]   # any order
    fixed, moving = smooth_image(FIXED, 5), smooth_image(MOVING, 6)
    a = known_affine((0.0, 0.0, 0.0))
    fm, mm = full_masks()
    result = register(fixed, moving, models, fm, mm, affine=a, progress=False)
    assert [s for s, _ in calls][0] == 4 and [s for s, _ in calls][-1] == 1
    total = np.sum([c[s] for s in c], axis=0)
    p = points_of(FIXED).reshape(-1, 3)
    expected = np.array([a.TransformPoint(tuple(q + total)) for q in p]) - p
    out = result.write(tmp_path / "reg")
    dvf = sitk.ReadImage(str(out / "dvf.mha"))
    assert dvf.GetPixelID() == sitk.sitkVectorFloat32 and Geometry.of(dvf).close_to(FIXED, 1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(dvf).reshape(-1, 3), expected, atol=1e-3)
    warped = sitk.ReadImage(str(out / "warped_moving.mha"))
    again = sitk.Resample(moving, warped, displacement_transform(dvf), sitk.sitkBSpline, float(result.info[
        "settings"]["warped_background"]), warped.GetPixelID())
    np.testing.assert_allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped), atol=1e-2)
    # and independently of any DVF: moving through the affine after the translation
    shift = sitk.TranslationTransform(3, tuple(float(t) for t in total))
    chain = sitk.CompositeTransform([a, shift])
    direct = sitk.Resample(moving, warped, chain, sitk.sitkBSpline, float(result.info["settings"]["warped_background"]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(direct), atol=0.05)
    record = json.loads((out / "registration.json").read_text())
    assert record["settings"]["stages"] == [4, 2, 1] and record["settings"]["affine"] == "given"
    assert {"read", "stage4", "stage4.predict", "stage1.compose", "compose", "warp", "write"} <= set(record["seconds"])
    assert sorted(record["outputs"]) == sorted(["affine.tfm", "dvf.mha", "overlay.png", "registration.json",
                                                "warped_moving.mha"])
    assert record["versions"]["SimpleITK"] == sitk.Version_VersionString()
    back = sitk.ReadTransform(str(out / "affine.tfm"))
    np.testing.assert_allclose(back.TransformPoint((1.0, 2.0, 3.0)), a.TransformPoint((1.0, 2.0, 3.0)), atol=1e-9)


def test_multi_stage_recovers_a_smooth_field_from_stand_ins_that_see_only_the_images():
    """Images are ramps along a unit direction d, so a stand-in can read the residual from the two
    channels alone: v = (fixed - moving) d. The fixed image is moving(x + tau(x) d); stages 4, 2, 1
    with exact composition must end at tau(x) d (every component, on a rotated anisotropic grid)."""
    d = np.array([0.6, -0.48, 0.64])
    d /= np.linalg.norm(d)

    def ramp_model(stage, radius_in=5, radius_out=2):
        m = radius_in - radius_out

        def predict(x):
            diff = x[:, m:-m, m:-m, m:-m, 1] - x[:, m:-m, m:-m, m:-m, 0]
            return diff[..., None] * (d @ FIXED.matrix).astype(np.float32)  # along the grid's axes

        return FunctionStageModel(stage, radius_in, radius_out, predict, unit=4)

    def tau(p):
        return 2.0 + 2.5 * np.sin(2 * np.pi * p[..., 0] / 70.0) * np.cos(2 * np.pi * p[..., 2] / 90.0)

    pf = points_of(FIXED)
    fixed = image_from_array((pf @ d + tau(pf)).astype(np.float32), FIXED)
    moving = image_from_array((points_of(MOVING) @ d).astype(np.float32), MOVING)
    fm, mm = full_masks()
    result = register(fixed, moving, [ramp_model(s) for s in (4, 2, 1)], fm, mm, affine="none", progress=False)
    dvf = sitk.GetArrayFromImage(result.dvf)
    truth = tau(pf)[..., None] * d
    inner = (slice(3, -3),) * 3
    err = np.linalg.norm(dvf[inner] - truth[inner], axis=-1)
    assert err.max() < 0.02, err.max()                  # measured 0.006 mm
    zero_error = np.linalg.norm(truth[inner], axis=-1).mean()
    assert zero_error > 1.0


def test_affine_only_model_none(tmp_path):
    fixed, moving = smooth_image(FIXED, 7), smooth_image(MOVING, 8)
    a = known_affine((1.0, 2.0, 3.0))
    result = register(fixed, moving, "none", affine=a, progress=False)
    reference = sitk.Resample(moving, fixed, a, sitk.sitkBSpline, result.info["settings"]["warped_background"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.warped), sitk.GetArrayFromImage(reference), atol=0.05)
    assert "masks" not in result.seconds and result.info["models"] == []
    # affine none, model none: the zero field and moving resampled onto the fixed grid
    plain = register(fixed, moving, ["none"], affine="none", progress=False)
    assert not sitk.GetArrayViewFromImage(plain.dvf).any() and plain.affine is None
    out = plain.write(tmp_path / "plain", overlay=False)
    assert sorted(p.name for p in out.iterdir()) == ["dvf.mha", "registration.json", "warped_moving.mha"]


def test_the_package_call_of_issue_10():
    """``regnet.register(fixed, moving, models, ...)`` as the issue spells it, in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import regnet, SimpleITK as sitk, numpy as np\n"
            "img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32))\n"
            "r = regnet.register(img, img, 'none', affine='none', progress=False)\n"
            "assert r is not None and regnet.register.register is not None\n"
            "print(sitk.GetArrayViewFromImage(r.dvf).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(8, 9, 10, 3)"


def test_image_smaller_than_a_patch_is_padded_and_works():
    """A crop4-sized stand-in (101 -> 21) on a 14 x 11 x 9 voxel image (stage 1)."""
    g = Geometry((14, 11, 9), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    img = smooth_image(g, 9)
    ones = image_from_array(np.ones(g.shape, np.uint8), g)
    calls = []
    result = register(img, img, [constant_model(1, (0.5, -0.25, 1.0), 50, 10, calls=calls)], ones, ones,
                      affine="none", progress=False)
    assert calls == [(1, (1, 101, 101, 101, 2))]
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.dvf), np.broadcast_to([0.5, -0.25, 1.0], g.shape + (3,)),
                               atol=1e-6)


def test_masks_set_the_background_to_pad_value_as_in_training():
    seen = {}

    def predict(x):
        seen["x"] = x.copy()
        return np.zeros(x.shape[:4] + (3,), np.float32)

    g = Geometry((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    img = image_from_array(np.full(g.shape, 100.0, np.float32), g)
    mask = np.zeros(g.shape, np.uint8)
    mask[4:12, 5:13, 6:14] = 1
    model = FunctionStageModel(1, 3, 3, predict, unit=1, pad_value=-2048.0)
    register(img, img, [model], image_from_array(mask, g), image_from_array(mask, g), affine="none", progress=False)
    x = seen["x"][0]
    assert x.shape[:3] == g.shape and np.all(x[mask == 1] == 100.0) and np.all(x[mask == 0] == -2048.0)


def test_series_of_a_4d_file_loads_models_once(tmp_path, monkeypatch):
    import regnet.register as reg

    g = Geometry((16, 15, 14), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    volumes = [smooth_image(g, k) for k in range(3)]
    four_d = sitk.JoinSeries(volumes)
    sitk.WriteImage(four_d, str(tmp_path / "phases.mha"))
    loads = []

    def fake_load(path):
        loads.append(path)
        return constant_model(2, (0.0, 1.0, 0.0))

    monkeypatch.setattr(reg, "load_stage_model", fake_load)
    written = register_series([tmp_path / "phases.mha"], 1, ["stage2.keras"], tmp_path / "out", progress=False,
                              affine="none", fixed_mask=image_from_array(np.ones(g.shape, np.uint8), g))
    assert [p.name for p in written] == ["volume00", "volume02"] and loads == ["stage2.keras"]
    dvf = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0] / "dvf.mha")))
    np.testing.assert_allclose(dvf, np.broadcast_to([0.0, 1.0, 0.0], g.shape + (3,)), atol=1e-6)
    record = json.loads((written[1] / "registration.json").read_text())
    assert record["series"] == {"reference": "volume01", "moving": "volume02"}
    with pytest.raises(RegNetError, match=r"--reference 5 is out of range 0..2"):
        register_series([tmp_path / "phases.mha"], 5, "none", tmp_path / "out2", progress=False)


def test_cli_register_and_atomic_output(tmp_path, monkeypatch):
    import regnet.register as reg
    from regnet.cli import main

    fixed, moving = smooth_image(FIXED, 11), smooth_image(MOVING, 12)
    sitk.WriteImage(fixed, str(tmp_path / "f.mha"))
    sitk.WriteImage(moving, str(tmp_path / "m.mha"))
    fm, mm = full_masks()
    sitk.WriteImage(fm, str(tmp_path / "fm.mha"))
    sitk.WriteImage(mm, str(tmp_path / "mm.mha"))
    monkeypatch.setattr(reg, "load_stage_model", lambda p: constant_model(int(str(p)[1]), (0.0, 0.0, 0.7), grid=FIXED))
    args = ["register", str(tmp_path / "f.mha"), str(tmp_path / "m.mha"), "--model", "s4.keras", "s2.keras",
            "--fixed-mask", str(tmp_path / "fm.mha"), "--moving-mask", str(tmp_path / "mm.mha"),
            "--affine", "none", "--stages", "4", "2", "--max-patch", "20", "--quiet", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    record = json.loads((tmp_path / "out" / "registration.json").read_text())
    assert record["settings"]["stages"] == [4, 2] and record["stages"][1]["tile_input"][0] <= 20
    dvf = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "dvf.mha")))
    np.testing.assert_allclose(dvf, np.broadcast_to([0.0, 0.0, 1.4], FIXED.shape + (3,)), atol=1e-5)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

    def broken(*args, **kwargs):
        raise RegNetError("disk full (simulated)")

    monkeypatch.setattr(reg, "overlay_png", broken)
    assert main(args) == 1                                         # error reported, nothing half-written:
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    assert main(args[:-1] + [str(tmp_path / "new")]) == 1
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*tmp*"))


def test_cli_affine_only_on_a_real_ct(tmp_path):
    """--model none --affine rigid on a real CT and a translated copy; masks computed."""
    from regnet.cli import main
    from tests.conftest import shared_file

    ct = sitk.ReadImage(str(shared_file("fixtures", "totalseg_example_ct_sm.nii.gz")))
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
    moved = sitk.Resample(ct, ct, shift, sitk.sitkBSpline, -1024.0, ct.GetPixelID())   # moved(p) = ct(p + t)
    sitk.WriteImage(moved, str(tmp_path / "moving.mha"))
    fixed = str(shared_file("fixtures", "totalseg_example_ct_sm.nii.gz"))
    assert main(["register", fixed, str(tmp_path / "moving.mha"), "--model", "none", "--affine", "rigid", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    found = sitk.ReadTransform(str(tmp_path / "out" / "affine.tfm"))
    # fixed(p) = ct(p) = moved(p - t): the transform must map p to p - t
    centre = ct.TransformContinuousIndexToPhysicalPoint([n / 2 for n in ct.GetSize()])
    np.testing.assert_allclose(np.subtract(found.TransformPoint(centre), centre), (-4.0, 3.0, -2.0), atol=0.6)
    record = json.loads((tmp_path / "out" / "registration.json").read_text())
    assert record["settings"]["masks"] == {"fixed": "ct", "moving": "ct"} and record["seconds"]["affine"] > 0


# ---------------------------------------------------------------- bad input
def test_bad_input_is_named(tmp_path):
    g = Geometry((12, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    img = smooth_image(g, 1)
    with pytest.raises(RegNetError, match="The fixed image is 2D; RegNet needs 3D volumes"):
        register(sitk.Image([20, 20], sitk.sitkFloat32), img, "none", affine="none")
    four_d = sitk.JoinSeries([img, img])
    sitk.WriteImage(four_d, str(tmp_path / "t.mha"))
    with pytest.raises(RegNetError, match=r"t.mha is 4D \(12x12x12x2\).*Pick one with volume=0..1"):
        register(img, tmp_path / "t.mha", "none", affine="none")
    nan = sitk.GetArrayFromImage(img)
    nan[3, 4, 5] = np.nan
    with pytest.raises(RegNetError, match="The moving image contains 1 NaN or infinite values"):
        register(img, image_from_array(nan, g), "none", affine="none")
    with pytest.raises(RegNetError, match="The fixed mask is empty"):
        register(img, img, "none", fixed_mask=image_from_array(np.zeros(g.shape, np.uint8), g), affine="none")
    with pytest.raises(RegNetError, match="nope.keras: no such model file"):
        register(img, img, [tmp_path / "nope.keras"], affine="none")
    (tmp_path / "lonely.keras").write_bytes(b"")
    with pytest.raises(RegNetError, match="no settings.json beside the model"):
        load_stage_model(tmp_path / "lonely.keras")
    with pytest.raises(RegNetError, match="no model is for stage 1 \\(the models are for stages 4, 2\\)"):
        register(img, img, [constant_model(4, 0), constant_model(2, 0)], stages=[4, 2, 1], affine="none")
    with pytest.raises(RegNetError, match="Two models are for stage 2"):
        register(img, img, [constant_model(2, 0), constant_model(2, 0)], affine="none")
    with pytest.raises(RegNetError, match=r"model 1 \(function\) is for stage 3; RegNet stages are \(1, 2, 4\)"):
        register(img, img, [FunctionStageModel(3, 5, 2, lambda x: x)], affine="none")
    with pytest.raises(RegNetError, match="--model none means the affine step alone"):
        register(img, img, ["none", "a.keras"], affine="none")
    with pytest.raises(RegNetError, match="--affine 'similar': choose one of none, rigid, affine"):
        register(img, img, "none", affine="similar")
    (tmp_path / "file").write_text("x")
    from regnet.cli import main

    assert main(["register", "a.mha", "b.mha", "--model", "none", "--out", str(tmp_path / "file")]) == 1
    with pytest.raises(RegNetError, match="--out .*file is a file"):
        register(img, img, "none", affine="none", progress=False).write(tmp_path / "file")


def test_stand_ins_follow_the_protocol():
    assert isinstance(constant_model(1, 0), StageModel)


def test_a_saved_keras_network_loads_as_a_stage_model_and_tiles_like_one_big_patch(tmp_path):
    """A real (untrained, narrow) crop4 saved as .keras with settings.json: its sizes come from the
    network, and blended tiles starting on its stride give the single-pass answer closely. Not to
    float tolerance: crop4's outputs near a patch edge depend on input a few voxels beyond its
    nominal R - Ry margin (measured: changing the last 4 input slices of a 93 patch changes the last
    7 of its 13 outputs), so tiles differ from one big patch by ~1e-3 of the output range."""
    import os

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    pytest.importorskip("keras")
    from regnet.networks import build
    from regnet.tiling import tiled_predict

    net = build("crop4_connection", input_size=None, width=0.125, seed=0)
    net.save(tmp_path / "model.keras")
    (tmp_path / "settings.json").write_text(json.dumps({"stage": 2, "NetworkDesign": "crop4_connection"}))
    model = load_stage_model(tmp_path / "model.keras")
    assert isinstance(model, StageModel)
    assert (model.stage, model.radius_in, model.radius_out, model.unit, model.size_base) == (2, 50, 10, 4, 1)
    rng = np.random.default_rng(0)
    moving = rng.uniform(-1000, 400, (13, 13, 13)).astype(np.float32)
    fixed = rng.uniform(-1000, 400, (13, 13, 13)).astype(np.float32)
    whole, one = tiled_predict(moving, fixed, model, max_patch=93)
    tiled, plan = tiled_predict(moving, fixed, model, max_patch=89, batch_size=4)
    assert one.count == 1 and plan.count == 8 and plan.input_shape == (89, 89, 89)
    assert np.abs(whole).max() > 1e-3
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-2 * np.abs(whole).max())
    (tmp_path / "settings.json").write_text(json.dumps({"stage": 3}))
    with pytest.raises(RegNetError, match="'stage' is 3; expected one of \\(1, 2, 4\\)"):
        load_stage_model(tmp_path / "model.keras")
