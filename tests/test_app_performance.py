"""The Model performance page and its figure builders, on the committed artifacts and on an empty folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from boneage_core import plots

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "streamlit_app.py"
ARTIFACTS = REPO / "artifacts"


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page(f"app_pages/{name}.py").run()
    return at


def test_performance_page_shows_every_model():
    metrics = json.loads((ARTIFACTS / "metrics.json").read_text())
    at = _page("performance")
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


def test_pages_degrade_without_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("BONEAGE_ARTIFACTS", str(tmp_path))
    for name in ("performance", "bias", "about", "assess", "batch"):
        at = _page(name)
        assert not at.exception, (name, [e.value for e in at.exception])
        assert not at.error, (name, [e.value for e in at.error])
    at = _page("performance")
    assert any("metrics.json" in i.value for i in at.info)


def test_bland_altman_stats_match_numpy():
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 200, 300)
    pred = true + rng.normal(2.0, 5.0, 300)
    stats = plots.bland_altman_stats(true, pred)
    diff = pred - true
    assert stats["bias"] == pytest.approx(diff.mean())
    assert stats["upper"] - stats["lower"] == pytest.approx(2 * 1.96 * diff.std(ddof=1))
    with pytest.raises(ValueError):
        plots.bland_altman_stats([1.0], [2.0])


def test_confusion_figure_normalises_rows_and_checks_shape():
    fig = plots.confusion_figure([[3, 1], [0, 0]], ["a", "b"], normalise=True)
    z = np.asarray(fig.data[0].z)
    assert z[0].tolist() == [0.75, 0.25] and z[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        plots.confusion_figure([[1, 2, 3]], ["a", "b"])


def test_metric_tables_skip_absent_models():
    metrics = {"regressor": {"n": 10, "mae": 5.0}, "classifier": {"n": 0}}
    assert list(plots.regression_table(metrics).columns) == ["CNN regressor"]
    assert plots.classification_table(metrics).empty
    frame = pd.DataFrame({"boneage": [10.0, 20.0], "regressor": [12.0, 18.0]})
    assert len(plots.scatter_predicted_vs_true(frame).data) == 2  # one model + identity line
