"""The Model performance page, on the committed artifacts and on an empty folder."""

from __future__ import annotations

import json

import pytest

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, STAGE


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((state.artifacts_dir() / "metrics.json").read_text())


def test_performance_page_shows_every_prediction_column(metrics, open_page):
    at = open_page("performance")
    assert not at.error and not at.warning, [e.value for e in list(at.error) + list(at.warning)]
    age_columns, stage_columns = plots.columns_for(metrics, AGE), plots.columns_for(metrics, STAGE)
    assert age_columns and stage_columns
    age_table, stage_table = (d.value for d in at.dataframe[:2])
    assert list(age_table.columns) == [plots.column_label(c, AGE) for c in age_columns]
    assert list(stage_table.columns) == [plots.column_label(c, STAGE) for c in stage_columns]
    for column in age_columns:
        assert age_table.loc["MAE (months)", plots.column_label(column, AGE)] == pytest.approx(metrics[column]["mae"])
    for column in stage_columns:  # both the stage head and the stage derived from the predicted age
        assert stage_table.loc["Quadratic weighted kappa", plots.column_label(column, STAGE)] == pytest.approx(
            metrics[column]["qwk"])
    charts = at.get("plotly_chart")
    # scatter, residuals, Bland-Altman, one confusion matrix per stage column, per-stage bars, training curves
    assert len(charts) == 3 + len(stage_columns) + 2
    at.toggle(key="perf_cm_normalise").set_value(True).run()
    assert not at.exception


def test_pages_degrade_without_artifacts(tmp_path, monkeypatch, open_page):
    monkeypatch.setenv(state.ARTIFACTS_ENV, str(tmp_path))
    for name in ("performance", "bias", "about", "assess", "batch"):
        at = open_page(name)
        assert not at.error, (name, [e.value for e in at.error])
    at = open_page("performance")
    assert any("metrics.json" in i.value for i in at.info)
    assert not at.get("plotly_chart")
