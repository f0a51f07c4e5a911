"""End-to-end: train.py --quick on real images writes complete artifacts; bad input is refused cleanly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import train
from boneage_core.config import TrainConfig
from boneage_core.models import load_checkpoint


def test_quick_run_writes_every_artifact(quick_run):
    names = {p.name for p in quick_run.iterdir()}
    expected = {"split.csv", "metrics.json", "predictions.csv", "config.json", "run_report.md", "regressor.pt",
                "classifier.pt", "baseline.json", "baseline_regressor.ubj", "baseline_classifier.ubj",
                "history_regressor.csv", "history_classifier.csv"}
    assert expected <= names, expected - names


def test_quick_metrics_have_every_model_and_breakdown(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics) == {"regressor", "classifier", "baseline_regressor", "baseline_classifier"}
    for name in ("regressor", "baseline_regressor"):
        m = metrics[name]
        assert {"mae", "rmse", "r2", "n", "by_sex", "by_age_group"} <= set(m)
        assert sum(g["n"] for g in m["by_sex"].values()) == m["n"]
        assert sum(g["n"] for g in m["by_age_group"].values()) == m["n"]
    for name in ("classifier", "baseline_classifier"):
        assert {"accuracy", "f1_macro", "qwk", "per_class", "confusion_matrix"} <= set(metrics[name])


def test_split_is_70_15_15_and_predictions_cover_the_test_split(quick_run):
    split = pd.read_csv(quick_run / "split.csv", dtype={"id": str})
    shares = split["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.02 and abs(shares["val"] - 0.15) < 0.02
    preds = pd.read_csv(quick_run / "predictions.csv", dtype={"id": str})
    assert set(preds["id"]) == set(split.loc[split["split"] == "test", "id"])
    assert preds["regressor"].between(0, 240).all()


def test_checkpoint_is_self_describing(quick_run):
    net, meta = load_checkpoint(quick_run / "regressor.pt")
    assert meta["spec"]["backbone"] == "tf_efficientnet_lite0"
    assert meta["spec"]["preprocess"]["image_size"] == TrainConfig().quick_version().image_size
    assert meta["spec"]["age_scaling"]["std"] > 0
    assert meta["config"]["quick"] is True
    assert TrainConfig.load(quick_run / "config.json").quick


def test_rerun_reuses_split_and_keeps_untouched_models(quick_run, data_299, tmp_path):
    import shutil

    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    before = (out / "split.csv").read_text()
    reg_bytes = (out / "regressor.pt").read_bytes()
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
                       "--stages", "baseline,evaluate", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    assert (out / "split.csv").read_text() == before
    assert (out / "regressor.pt").read_bytes() == reg_bytes
    report = (out / "run_report.md").read_text()
    assert "regressor (kept from the run of" in report and "best_epoch" in report  # kept models still described


def test_interrupted_run_leaves_previous_artifacts_intact(quick_run, data_299, tmp_path, monkeypatch):
    import shutil

    from boneage_core import pipeline

    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "evaluate_stage", boom)
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
                       "--stages", "baseline,evaluate", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("artifacts.tmp-")]


def test_bad_stage_and_missing_data_give_clear_errors(tmp_path, caplog):
    assert train.main(["--data-dir", str(tmp_path), "--stages", "baseline,bogus"]) == 2
    assert "unknown stage" in caplog.text
    assert train.main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert "data folder not found" in caplog.text
    assert not (tmp_path / "a").exists()


def test_csv_with_missing_columns_is_refused(tmp_path, caplog):
    (tmp_path / "labels-train.csv").write_text("id,age\n1,10\n")
    (tmp_path / "labels-train").mkdir()
    assert train.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "found columns" in caplog.text


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_stages(flag, capsys):
    with pytest.raises(SystemExit):
        train.main([flag])
    assert "--stages" in capsys.readouterr().out
