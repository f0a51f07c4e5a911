"""config: TrainConfig validation, training phases, the fit subset, JSON round trip, the quick variant, model names and presets."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from boneage_core.config import (DEFAULT_STAGES, MODEL_LAYOUTS, PRESETS, RESUME_MAY_CHANGE, STAGE_ORDER, TrainConfig,
                                 preset_config, resume_conflicts)
from boneage_core.heads import AGE, STAGE
from boneage_core.imagenet import BACKBONES
from boneage_core.models import INIT_IMAGENET
from boneage_core.training import FitConfig, Phase
from boneage_core.views import NO_TTA, TTA_SCALES


def test_defaults_are_valid():
    cfg = TrainConfig()
    assert cfg.stages == DEFAULT_STAGES and set(cfg.stages) <= set(STAGE_ORDER)
    assert cfg.backbone in BACKBONES and cfg.fit.optimizer == "adamw" and cfg.init_from == INIT_IMAGENET
    assert cfg.training_phases() == (Phase(cfg.image_size, cfg.epochs, cfg.lr, cfg.freeze_blocks),)
    assert cfg.members == () and cfg.phases == ""


def test_stage_order_and_model_layouts():
    assert STAGE_ORDER[0] == "baseline" and STAGE_ORDER[-1] == "evaluate"
    assert set(MODEL_LAYOUTS) <= set(STAGE_ORDER)
    assert MODEL_LAYOUTS["multihead"] == (AGE, STAGE)
    assert MODEL_LAYOUTS["regressor"] == (AGE,) and MODEL_LAYOUTS["classifier"] == (STAGE,)


@pytest.mark.parametrize("bad,match", [(dict(stages=("regressor", "deploy")), "deploy"),
                                       (dict(backbone="resnet50"), "resnet50"),
                                       (dict(phases="64"), "64"),
                                       (dict(phases="16:2"), "16:2"),
                                       (dict(phases="64:1:fast"), "fast"),
                                       (dict(gate_counterexample_variants=0), "gate_counterexample_variants = 0"),
                                       (dict(gate_fit_images=100), "gate_turned \\(800\\)")])
def test_invalid_values_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        replace(TrainConfig(), **bad)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="sgd"):
        FitConfig(optimizer="sgd")


@pytest.mark.parametrize("p", [-0.01, 1.01])
def test_flip_probability_is_validated(p):
    with pytest.raises(ValueError, match="flip_prob"):
        FitConfig(flip_prob=p)


def test_flip_is_off_by_default_and_any_probability_is_accepted():
    assert FitConfig().flip_prob == 0.0 and TrainConfig().fit.flip_prob == 0.0  # the recipe before flips
    assert [FitConfig(flip_prob=p).flip_prob for p in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]


def test_training_phases_from_fields():
    cfg = replace(TrainConfig(), image_size=128, epochs=4, lr=3e-4, freeze_blocks=2)
    assert cfg.training_phases() == (Phase(128, 4, 3e-4, 2, 0.0),)


def test_training_phases_from_text_override_the_fields():
    cfg = replace(TrainConfig(), image_size=128, epochs=4, phases="176:2:1e-3:3,224:1:5e-4:0:10")
    assert cfg.training_phases() == (Phase(176, 2, 1e-3, 3, 0.0), Phase(224, 1, 5e-4, 0, 10.0))


def test_fit_config_is_the_nested_loop_settings_with_the_run_seed():
    loop = FitConfig(batch_size=7, weight_decay=0.02, warmup_epochs=0.25, optimizer="sam", sam_rho=0.1, ema_decay=0.9,
                     patience=2, augment=False, cpu_bf16=True, max_train_minutes=12.5)
    fit = replace(TrainConfig(), fit=loop, seed=11).fit_config()
    assert fit == replace(loop, seed=11)
    assert not {f.name for f in fields(FitConfig)} - {"seed"} & {f.name for f in fields(TrainConfig)}  # defined once


def test_round_trip_via_file(tmp_path):
    cfg = replace(TrainConfig(), data_dir="/data/rsna", stages=("regressor", "multihead", "evaluate"), seed=3,
                  lr=3e-4, backbone="tf_efficientnet_lite1", fit=FitConfig(optimizer="sam", max_train_minutes=3.5),
                  views=(1.0, 0.94), init_from="runs/a/multihead.pt", phases="64:1:1e-3:2,96:2",
                  members=("multihead.pt", "regressor.pt"))
    path = tmp_path / "config.json"
    cfg.save(path)
    data = json.loads(path.read_text())
    assert data["stages"] == ["regressor", "multihead", "evaluate"] and data["lr"] == 3e-4
    assert data["members"] == ["multihead.pt", "regressor.pt"] and data["phases"] == "64:1:1e-3:2,96:2"
    assert data["fit"]["optimizer"] == "sam" and data["fit"]["max_train_minutes"] == 3.5
    assert {f.name for f in fields(TrainConfig)} == set(data)
    loaded = TrainConfig.load(path)
    assert loaded == cfg
    assert isinstance(loaded.stages, tuple) and isinstance(loaded.members, tuple)
    assert loaded.training_phases() == cfg.training_phases()


def test_from_dict_ignores_unknown_keys():
    """Old configs (e.g. format-1 checkpoints' `pretrained`) still load."""
    cfg = TrainConfig.from_dict({"epochs": 5, "no_such_option": 1, "pretrained": True})
    assert cfg == replace(TrainConfig(), epochs=5)


def test_from_dict_validates():
    with pytest.raises(ValueError, match="deploy"):
        TrainConfig.from_dict({"stages": ["deploy"]})


def test_quick_version_shrinks():
    full = TrainConfig()
    quick = full.quick_version()
    assert quick.quick and not full.quick
    (phase,) = quick.training_phases()
    (full_phase,) = full.training_phases()
    assert phase.image_size <= 96 < full_phase.image_size
    assert phase.epochs <= 2 < full_phase.epochs
    assert phase.lr == full_phase.lr and phase.freeze_blocks == full_phase.freeze_blocks
    assert quick.limit == 300
    assert quick.baseline_image_size < full.baseline_image_size
    assert quick.xgb_estimators < full.xgb_estimators and quick.bootstrap < full.bootstrap
    assert quick.fit.patience < full.fit.patience and quick.fit.batch_size <= 32
    # everything else is untouched
    assert quick.seed == full.seed and quick.backbone == full.backbone and quick.stages == full.stages
    assert quick.init_from == full.init_from and quick.members == full.members
    assert TrainConfig.from_dict(quick.to_dict()) == quick  # a valid config


def test_quick_version_shrinks_every_phase_and_keeps_freezing():
    cfg = replace(TrainConfig(), phases="176:3:1e-3:3,224:4:5e-4:1,64:1:2e-4:0")
    quick = cfg.quick_version().training_phases()
    assert [p.image_size for p in quick] == [96, 96, 64]
    assert [p.epochs for p in quick] == [2, 2, 1]
    assert [p.lr for p in quick] == [1e-3, 5e-4, 2e-4]
    assert [p.freeze_blocks for p in quick] == [3, 1, 0]


def test_quick_version_keeps_explicit_small_settings():
    small = replace(TrainConfig(), limit=120, image_size=64, epochs=1, freeze_blocks=2).quick_version()
    assert small.limit == 120
    assert small.training_phases() == (Phase(64, 1, TrainConfig().lr, 2),)


# --- model names ---------------------------------------------------------------------------------------------

def test_model_file_stem_is_the_stage_unless_named():
    assert [TrainConfig().model_stem(stage) for stage in MODEL_LAYOUTS] == list(MODEL_LAYOUTS)
    named = replace(TrainConfig(), stages=("multihead", "evaluate"), model_name="multihead_lite2_s1")
    assert named.model_stem("multihead") == "multihead_lite2_s1"


def test_model_name_suffix_is_optional():
    assert replace(TrainConfig(), model_name="member-A.pt").model_name == "member-A"
    assert replace(TrainConfig(), model_name="member-A").model_name == "member-A"


@pytest.mark.parametrize("bad", ["runs/a", "../a", "a\\b", "a b", "a.b", ".pt", "né", "a:b"])
def test_model_name_with_other_characters_is_refused(bad):
    with pytest.raises(ValueError, match="letters, digits, _ and -"):
        replace(TrainConfig(), stages=("multihead",), model_name=bad)


def test_model_name_for_several_cnn_stages_is_refused():
    with pytest.raises(ValueError, match="regressor, classifier"):
        replace(TrainConfig(), stages=("regressor", "classifier", "evaluate"), model_name="pair")


# --- presets -------------------------------------------------------------------------------------------------

def test_presets_only_name_existing_fields():
    train_fields, fit_fields = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(FitConfig)}
    for name, values in PRESETS.items():
        assert set(values) - {"fit"} <= train_fields, name
        assert set(values.get("fit", {})) <= fit_fields, name
        assert preset_config(name).preset == name


def test_gpu_preset_values():
    cfg = preset_config("gpu")
    assert "multihead" in cfg.stages and not {"regressor", "classifier"} & set(cfg.stages)
    assert cfg.training_phases() == (Phase(299, 30, 1e-3, 0),)  # full size of the 299 px copy, nothing frozen
    assert cfg.views == TTA_SCALES and cfg.backbone == TrainConfig().backbone
    fit = cfg.fit
    assert (fit.optimizer, fit.batch_size, fit.flip_prob, fit.ema_decay, fit.patience) == ("adamw", 64, 0.5, 0.998, 8)
    assert fit.augment and not fit.cpu_bf16 and 0 < fit.max_train_minutes <= 10


def test_cpu_preset_is_the_measured_cpu_recipe():
    cfg = preset_config("cpu")
    assert "multihead" in cfg.stages
    assert cfg.training_phases() == (Phase(192, 6, 1e-3, 3),)
    assert (cfg.fit.warmup_epochs, cfg.fit.patience, cfg.fit.cpu_bf16, cfg.fit.flip_prob) == (0.3, 3, True, 0.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_changes_only_its_own_fields(name):
    cfg, default, values = preset_config(name), TrainConfig(), PRESETS[name]
    changed = {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(default, f.name)}
    assert changed == {k for k in values if k != "fit" and values[k] != getattr(default, k)} | {"fit", "preset"}
    fit_changed = {f.name for f in fields(FitConfig) if getattr(cfg.fit, f.name) != getattr(default.fit, f.name)}
    assert fit_changed == {k for k, v in values["fit"].items() if v != getattr(default.fit, k)}


def test_model_name_and_preset_round_trip(tmp_path):
    cfg = replace(preset_config("gpu"), stages=("multihead",), model_name="multihead_lite1_s3.pt")
    cfg.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_name"] == "multihead_lite1_s3" and data["preset"] == "gpu" and data["fit"]["flip_prob"] == 0.5
    assert TrainConfig.load(tmp_path / "config.json") == cfg


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="tpu"):
        preset_config("tpu")
    with pytest.raises(ValueError, match="tpu"):
        replace(TrainConfig(), preset="tpu")


def test_views_are_validated_and_old_configs_read_their_tta_flag(tmp_path):
    assert TrainConfig(views=(0.94, 1.0)).views == (1.0, 0.94)  # stored in TTA_SCALES order
    with pytest.raises(ValueError, match="must include 1.0"):
        TrainConfig(views=(0.94,))
    data = TrainConfig().to_dict()
    del data["views"]
    assert TrainConfig.from_dict({**data, "tta": True}).views == TTA_SCALES
    assert TrainConfig.from_dict(data).views == NO_TTA


def test_a_resume_may_change_paths_device_stages_and_the_budget_only():
    run = TrainConfig(phases="224:40:1e-3:3", stages=("multihead",))
    allowed = replace(run, data_dir="/elsewhere", cache_dir="/tmp/c", device="cuda", workers=2,
                      stages=("multihead", "gate", "evaluate"), fit=replace(run.fit, max_train_minutes=110.0))
    assert resume_conflicts(run, allowed) == []
    changed = replace(run, seed=7, phases="224:30:1e-3:3", backbone=BACKBONES[-1],
                      fit=replace(run.fit, batch_size=64, optimizer="sam"))
    assert resume_conflicts(run, changed) == [
        "seed: 42 -> 7", "backbone: 'tf_efficientnet_lite0' -> " + repr(BACKBONES[-1]),
        "phases: '224:40:1e-3:3' -> '224:30:1e-3:3'", "fit.batch_size: 32 -> 64", "fit.optimizer: 'adamw' -> 'sam'"]
    assert {"fit.max_train_minutes", "device", "stages"} <= RESUME_MAY_CHANGE
