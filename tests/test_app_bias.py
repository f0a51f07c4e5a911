"""The Subgroups and bias page: groups with counts and CIs, few-case groups marked, worst cases."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, STAGE


def test_bias_page_shows_groups_with_counts_and_worst_cases(open_page):
    metrics = json.loads((state.artifacts_dir() / "metrics.json").read_text())
    predictions = pd.read_csv(state.artifacts_dir() / "predictions.csv")
    at = open_page("bias")
    assert not at.error and not at.warning
    charts = at.get("plotly_chart")
    assert len(charts) == 5  # age and stage by sex, age and stage by age group, error vs age
    age_column = plots.columns_for(metrics, AGE)[0]
    groups = metrics[age_column]["by_age_group"]
    figure = json.loads(charts[2].proto.spec)  # MAE by age group
    line = figure["data"][0]
    assert line["x"] == [plots.group_label(g, v["n"]) for g, v in groups.items()]
    few = [g for g, v in groups.items() if v["n"] < plots.FEW_CASES]
    assert all(any(label.startswith(g) and "few cases" in label for label in line["x"]) for g in few)
    assert "error_y" in line
    worst = at.dataframe[-1].value
    errors = (predictions[age_column] - predictions["boneage"]).abs()
    assert len(worst) == 15
    assert worst["abs_error"].iloc[0] == pytest.approx(errors.max())
    assert worst["abs_error"].is_monotonic_decreasing
    at.slider(key="bias_worst_n").set_value(30).run()
    assert len(at.dataframe[-1].value) == 30
    stage_columns = [c for c in plots.columns_for(metrics, STAGE) if metrics[c].get("by_sex")]
    assert len(json.loads(charts[1].proto.spec)["data"]) == len(stage_columns)
