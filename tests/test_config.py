"""config: TrainConfig validation, JSON round trip and the quick variant."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from boneage_core.config import BACKBONES, STAGE_ORDER, TrainConfig


def test_round_trip_via_file(tmp_path):
    cfg = replace(TrainConfig(), data_dir="/data/rsna", stages=("regressor", "evaluate"), seed=3, lr=3e-4,
                  backbone="tf_efficientnet_lite1", optimizer="sam", tta=True)
    path = tmp_path / "config.json"
    cfg.save(path)
    data = json.loads(path.read_text())
    assert data["stages"] == ["regressor", "evaluate"] and data["lr"] == 3e-4
    loaded = TrainConfig.load(path)
    assert loaded == cfg
    assert isinstance(loaded.stages, tuple)
    assert {f.name for f in fields(TrainConfig)} == set(data)


def test_from_dict_ignores_unknown_keys():
    cfg = TrainConfig.from_dict({"epochs": 5, "no_such_option": 1})
    assert cfg.epochs == 5 and cfg == replace(TrainConfig(), epochs=5)


def test_defaults_are_valid():
    cfg = TrainConfig()
    assert cfg.stages == STAGE_ORDER and cfg.backbone in BACKBONES


@pytest.mark.parametrize("bad", [dict(stages=("regressor", "deploy")), dict(backbone="resnet50"),
                                 dict(optimizer="sgd")])
def test_invalid_values_raise(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=str(bad[key][-1] if key == "stages" else bad[key])):
        TrainConfig(**bad)
    with pytest.raises(ValueError):
        replace(TrainConfig(), **bad)


def test_quick_version_shrinks():
    full = TrainConfig()
    quick = full.quick_version()
    assert quick.quick and not full.quick
    assert quick.image_size <= 96 < full.image_size
    assert quick.epochs <= 2 < full.epochs
    assert quick.limit == 300
    assert quick.baseline_image_size < full.baseline_image_size
    assert quick.xgb_estimators < full.xgb_estimators and quick.bootstrap < full.bootstrap
    assert quick.patience < full.patience
    # explicit limits and smaller settings survive
    small = replace(TrainConfig(), limit=120, image_size=64, epochs=1).quick_version()
    assert small.limit == 120 and small.image_size == 64 and small.epochs == 1
    # everything else is untouched
    assert quick.seed == full.seed and quick.backbone == full.backbone and quick.stages == full.stages
