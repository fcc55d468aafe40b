"""The settings dict: RegNet vocabulary, typed validation, presets from the spec."""
import json
import os
from pathlib import Path

import pytest

import regnet
from regnet import RegNetError
from regnet.settings import available_deform_exps, load_deform_exp, load_settings, preset_dirs

BASE = {"DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max7_D14_K", "TrainingCNList": [1, 2],
                         "TrainingTypeImList": [0], "ValidationCNList": [3], "ValidationTypeImList": [0]}]}


def with_(**extra):
    return {**BASE, **extra}


def test_original_readme_dict_is_accepted_and_stage_defaults_filled():
    s = load_settings(with_(NetworkTraining={"BatchSize": 4}, stage=1, NetworkDesign="crop4_connection",
                            AGMode="Resp"))
    assert s.NetworkTraining.BatchSize == 4
    assert (s.NetworkTraining.NumberOfImagesPerChunk, s.NetworkTraining.SamplesPerImage) == (16, 50)
    assert (s.NetworkValidation.BatchSize, s.NetworkValidation.SamplesPerImage) == (50, 500)
    assert s.DataExpDict[0].TrainingDSmoothList == list(range(14))
    assert s.DataExpDict[0].ValidationDSmoothList == [0, 5, 10]
    assert load_settings(with_(stage=4)).NetworkTraining.NumberOfImagesPerChunk == 80


@pytest.mark.parametrize("settings, message", [
    (with_(NetworkTraining={"BatchSize": "15"}), "NetworkTraining.BatchSize must be a positive int, got '15'"),
    (with_(NetworkTraining={"BatchSize": 0}), "NetworkTraining.BatchSize must be a positive int, got 0"),
    (with_(NetworkTraning={}), "Unknown settings key 'NetworkTraning'; did you mean 'NetworkTraining'?"),
    (with_(NetworkTraining={"LearningRat": 1e-3}), "did you mean 'LearningRate'"),
    (with_(AGMode="SinlgeOnly"), "did you mean 'SingleOnly'"),
    (with_(stage=3), "stage must be one of 1, 2, 4, got 3"),
    ({"DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max8_D14_K"}]}, "did you mean '3D_max7_D14_K'"),
    ({"DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max7_D14_K", "TrainingDSmoothList": [-1]}]},
     "non-negative"),
    ({"DataExpDict": [{"data": "Phantom"}]}, "Missing settings key 'DataExpDict[0].deform_exp'"),
    (with_(DeformExp={"3D_max7_D14_K": {"MaxDefrom": 9}}), "did you mean 'MaxDeform'"),
    (with_(DeformExp={"3D_max7_D14_K": {"MixedFrequency_SigmaRange": [10, 5]}}), "low <= high"),
])
def test_bad_settings_name_the_path(settings, message):
    with pytest.raises(RegNetError) as err:
        load_settings(settings)
    assert message in str(err.value)


def test_presets_hold_the_spec_values():
    assert {"3D_max7_D14_K", "3D_max15_D14_K", "3D_max20_D14_K"} <= set(available_deform_exps())
    e7, e15, e20 = (load_deform_exp(n) for n in ("3D_max7_D14_K", "3D_max15_D14_K", "3D_max20_D14_K"))
    assert (e7.MaxDeform, e15.MaxDeform, e20.MaxDeform) == (7, 15, 20)
    assert [g[0] for g in e7.SingleFrequency_BSplineGridSpacing] == [50, 45, 35, 25, 20]
    assert e15.MixedFrequency_BSplineGridSpacing[2] == [40, 40, 80]
    assert (e7.RespiratoryMotion_t0, e15.RespiratoryMotion_t0, e20.RespiratoryMotion_t0) == (15, 22, 30)
    assert e15.MixedFrequency_SigmaRange == [7, 12]
    assert e20.SingleFrequency_MaxDeformRatio == [1] * 5 and e7.SingleFrequency_MaxDeformRatio[0] == 0.5
    assert (e7.class_balanced(), e15.class_balanced(), e20.class_balanced()) == \
        ([2, 7], [1.5, 4, 15], [1.5, 8, 20])
    assert e7.MixedFrequency_Np == [200, 150, 150, 150] and e7.NextIm_MaxDeform == 15


def test_dsmooth_lookup_follows_regnet():
    exp = load_deform_exp("3D_max7_D14_K")
    methods = [exp.method_of(d) for d in range(14)]
    assert [m for m, _ in methods].count("respiratory_motion") == 4
    assert [m for m, _ in methods].count("single_frequency") == 5
    assert [m for m, _ in methods].count("mixed_frequency") == 4
    assert methods[13] == ("zero", 0)
    assert methods[4] == ("single_frequency", 0) and methods[8] == ("single_frequency", 4)
    assert methods[9] == ("mixed_frequency", 0) and methods[3] == ("respiratory_motion", 3)
    assert exp.method_of(14 + 10) == exp.method_of(10)


def test_user_overrides_and_own_experiment():
    s = load_settings({
        "DataExpDict": [{"data": "Phantom", "deform_exp": "3D_max7_D14_K"},
                        {"data": "Phantom", "deform_exp": "mine"}],
        "DeformExp": {"3D_max7_D14_K": {"MaxDeform": 9}, "mine": {"extends": "3D_max15_D14_K", "Im_NoiseSigma": 3}},
        "AGMode": "NoResp",
    })
    assert s.deform_exps["3D_max7_D14_K"].MaxDeform == 9
    assert s.deform_exps["3D_max7_D14_K"].RespiratoryMotion_t0 == 15
    assert s.deform_exps["mine"].MaxDeform == 15 and s.deform_exps["mine"].Im_NoiseSigma == 3
    assert s.DataExpDict[0].TrainingDSmoothList == list(range(4, 14))


def test_resolved_settings_json_reloads_to_the_same(tmp_path):
    s = load_settings(with_(NetworkTraining={"BatchSize": 3}, stage=2))
    path = s.write_json(tmp_path / "settings.json")
    on_disk = json.loads(path.read_text())
    assert on_disk["deform_exps"]["3D_max7_D14_K"]["MaxDeform"] == 7.0
    assert load_settings(path) == s


def test_deform_exp_key_fills_the_overrides_field_and_round_trips(tmp_path):
    """Users write RegNet's key ``DeformExp``; the field is ``DeformExpOverrides`` (the class is
    DeformExp), and settings.json speaks the users' vocabulary again."""
    s = load_settings(with_(DeformExp={"3D_max7_D14_K": {"MaxDeform": 9}}))
    assert s.DeformExpOverrides == {"3D_max7_D14_K": {"MaxDeform": 9}}
    assert s.deform_exps["3D_max7_D14_K"].MaxDeform == 9
    on_disk = json.loads(s.write_json(tmp_path / "settings.json").read_text())
    assert on_disk["DeformExp"] == {"3D_max7_D14_K": {"MaxDeform": 9}} and "DeformExpOverrides" not in on_disk
    assert load_settings(tmp_path / "settings.json") == s
    with pytest.raises(RegNetError, match="Unknown settings key 'DeformExpOverrides'; did you mean 'DeformExp'"):
        load_settings(with_(DeformExpOverrides={}))


def test_presets_ship_inside_the_package_and_user_folders_come_first(tmp_path, monkeypatch):
    shipped = preset_dirs()[-1]
    assert Path(str(shipped)).is_relative_to(Path(regnet.__file__).parent)
    (tmp_path / "deform_exp").mkdir()
    (tmp_path / "deform_exp" / "mine.toml").write_text('extends = "3D_max7_D14_K"\nMaxDeform = 5.0\n')
    own = tmp_path / "flat"
    own.mkdir()
    (own / "3D_max7_D14_K.toml").write_text('extends = "3D_max15_D14_K"\nMaxDeform = 6.0\n')  # shadows the preset
    monkeypatch.setenv("REGNET_SETTINGS_PATH", os.pathsep.join([str(tmp_path), str(own)]))
    assert {"mine", "3D_max15_D14_K"} <= set(available_deform_exps())
    mine = load_deform_exp("mine")
    assert mine.MaxDeform == 5.0 and mine.RespiratoryMotion_t0 == 22  # 3D_max7 now extends 3D_max15
    with pytest.raises(RegNetError, match=r"Unknown deform_exp 'mien'; did you mean 'mine'\? .*REGNET_SETTINGS_PATH"):
        load_deform_exp("mien")


# ------------------------------------------------------------------ issue 15: no raw tracebacks, no silent nonsense
EXP = "deform_exp['3D_max7_D14_K']"


@pytest.mark.parametrize("override, message", [
    ({"MaxDeform": float("nan")}, f"{EXP}.MaxDeform must be a finite number, got nan"),
    ({"MaxDeform": float("inf")}, f"{EXP}.MaxDeform must be a finite number, got inf"),
    ({"MaxDeform": 1e6}, f"{EXP}.MaxDeform must be at most 100 mm, got 1000000.0"),
    ({"DeformMethods": []}, f"{EXP}.DeformMethods is empty: list at least one of"),
    ({"Sponge_JacobianClip": [-5, 1.3]}, f"{EXP}.Sponge_JacobianClip must be [low, high] with 0 < low <= high"),
    ({"Sponge_ScaleRange": [0, 1.1]}, f"{EXP}.Sponge_ScaleRange must be [low, high] with 0 < low <= high"),
])
def test_deform_values_that_would_crash_later_or_make_nonsense(override, message):
    with pytest.raises(RegNetError) as err:
        load_settings(with_(DeformExp={"3D_max7_D14_K": override}))
    assert message in str(err.value)


def test_malformed_settings_files_are_named(tmp_path):
    (tmp_path / "s.json").write_text('{"DataExpDict": [\n  {"data": "Phantom",}\n]}')
    with pytest.raises(RegNetError, match=r"s\.json: not a valid JSON settings file \(Expecting property name "
                                          r"enclosed in double quotes at line 2, column 22\)"):
        load_settings(tmp_path / "s.json")
    (tmp_path / "s.toml").write_text('stage = 2\nOutputFolder = "out\n')
    with pytest.raises(RegNetError, match=r"s\.toml: not a valid TOML settings file \(.*line 2"):
        load_settings(tmp_path / "s.toml")
    (tmp_path / "nan.json").write_text(json.dumps(with_(DeformExp={"3D_max7_D14_K": {"MaxDeform": float("nan")}})))
    with pytest.raises(RegNetError, match=r"MaxDeform must be a finite number, got nan"):
        load_settings(tmp_path / "nan.json")
