"""The Model performance page, on the committed artifacts and on an empty folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


def test_performance_page_shows_every_model(open_page):
    metrics = json.loads((ARTIFACTS / "metrics.json").read_text())
    at = open_page("performance")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning, [e.value for e in list(at.error) + list(at.warning)]
    regression = at.dataframe[0].value
    assert {"CNN regressor", "HOG + XGBoost regressor"} <= set(regression.columns)
    assert regression.loc["MAE (months)", "CNN regressor"] == pytest.approx(metrics["regressor"]["mae"])
    classification = at.dataframe[1].value
    assert classification.loc["Accuracy", "HOG + XGBoost classifier"] == pytest.approx(
        metrics["baseline_classifier"]["accuracy"])
    # scatter, residuals, Bland-Altman, 2 confusion matrices, per-stage bars, training curves
    assert len(at.get("plotly_chart")) == 7
    at.toggle(key="perf_cm_normalise").set_value(True).run()
    assert not at.exception


def test_pages_degrade_without_artifacts(tmp_path, monkeypatch, open_page):
    monkeypatch.setenv("BONEAGE_ARTIFACTS", str(tmp_path))
    for name in ("performance", "bias", "about", "assess", "batch"):
        at = open_page(name)
        assert not at.exception, (name, [e.value for e in at.exception])
        assert not at.error, (name, [e.value for e in at.error])
    at = open_page("performance")
    assert any("metrics.json" in i.value for i in at.info)

