"""Pure Plotly/table builders of the dashboard (boneage_core.plots)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage_core import plots


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


def test_group_table_carries_confidence_intervals(committed_artifacts):
    metrics = json.loads((committed_artifacts / "metrics.json").read_text())
    table = plots.group_table(metrics, "regressor", "by_age_group", "mae")
    assert list(table["group"]) == list(metrics["regressor"]["by_age_group"])
    assert (table["ci_low"] <= table["mae"]).all() and (table["mae"] <= table["ci_high"]).all()
    assert table["n"].sum() == metrics["regressor"]["n"]


def test_worst_cases_and_sex_labels():
    frame = pd.DataFrame({"id": [1, 2, 3], "boneage": [10.0, 20.0, 30.0], "male": [True, False, True],
                          "regressor": [11.0, 40.0, 25.0]})
    worst = plots.worst_cases(frame, "regressor", n=2)
    assert worst["id"].tolist() == [2, 3]
    assert worst["sex"].tolist() == ["female", "male"]
    fig = plots.error_vs_age_by_sex(frame, "regressor", bin_months=12)
    assert {t.name for t in fig.data} >= {"female: mean |error|", "male: mean |error|"}


def test_error_bins_include_the_oldest_case():
    frame = pd.DataFrame({"id": [1, 2], "boneage": [100.0, 216.0], "male": [True, True], "regressor": [110.0, 200.0]})
    fig = plots.error_vs_age_by_sex(frame, "regressor", bin_months=24)
    line = [t for t in fig.data if t.name == "male: mean |error|"][0]
    assert len(line.x) == 2  # 216 (a multiple of 24) has its own bin
