"""The Subgroups and bias page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest


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
