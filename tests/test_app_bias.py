"""The Subgroups and bias page and its subgroup/worst-case helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from boneage_core import plots

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "streamlit_app.py"
ARTIFACTS = REPO / "artifacts"


def _bias_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("app_pages/bias.py").run()
    return at


def test_bias_page_runs_with_groups_explanation_and_worst_cases():
    at = _bias_page()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning
    assert len(at.get("plotly_chart")) == 5  # MAE + accuracy by sex and by age group, error vs age
    text = " ".join(m.value for m in at.markdown)
    assert "95%" in text and "0-2 y" in text
    predictions = pd.read_csv(ARTIFACTS / "predictions.csv")
    worst = at.dataframe[-1].value
    errors = (predictions["regressor"] - predictions["boneage"]).abs()
    assert len(worst) == 15
    assert worst["abs_error"].iloc[0] == pytest.approx(errors.max())
    assert worst["abs_error"].is_monotonic_decreasing
    at.slider(key="bias_worst_n").set_value(30).run()
    assert len(at.dataframe[-1].value) == 30


def test_group_table_carries_confidence_intervals():
    metrics = json.loads((ARTIFACTS / "metrics.json").read_text())
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
