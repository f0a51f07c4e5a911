"""The Subgroups and bias page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


def test_bias_page_runs_with_groups_explanation_and_worst_cases(open_page):
    at = open_page("bias")
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
