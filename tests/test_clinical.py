"""Greulich-Pyle z-scores, chronological age, and holdout-based prediction intervals."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from boneage_core.clinical import (ErrorModel, ReferenceError, categorise, chronological_age_months, gp_zscore,
                                   load_reference)


@pytest.fixture(scope="module")
def reference(gp_table):
    return load_reference(gp_table)


def test_real_table_loads_both_sexes(reference):
    assert set(reference["sex"]) == {"M", "F"}
    assert (reference["sd_months"] > 0).all()


def test_zscore_on_a_table_row_matches_the_formula(reference):
    row = reference[(reference["sex"] == "M") & (reference["chronological_age_months"] == 120)].iloc[0]
    bone_age = row["mean_bone_age_months"] + 2.5 * row["sd_months"]
    out = gp_zscore(bone_age, 120, True, reference)
    assert out.z_score == pytest.approx(2.5)
    assert out.category == "advanced"
    assert out.difference_months == pytest.approx(bone_age - 120)


def test_zscore_interpolates_between_rows(reference):
    girls = reference[reference["sex"] == "F"].set_index("chronological_age_months")
    mean = (girls.loc[96, "mean_bone_age_months"] + girls.loc[108, "mean_bone_age_months"]) / 2
    sd = (girls.loc[96, "sd_months"] + girls.loc[108, "sd_months"]) / 2
    out = gp_zscore(mean - 3 * sd, 102, False, reference)
    assert out.expected_bone_age_months == pytest.approx(mean)
    assert out.z_score == pytest.approx(-3.0)
    assert out.category == "delayed"
    assert "delayed" in out.text


def test_age_outside_table_is_refused(reference):
    with pytest.raises(ReferenceError, match="outside the reference table"):
        gp_zscore(100, 300, True, reference)


@pytest.mark.parametrize("z,expected", [(2.01, "advanced"), (2.0, "within normal limits"), (-1.0, "within normal limits"),
                                        (-2.5, "delayed")])
def test_categories(z, expected):
    assert categorise(z) == expected


def test_malformed_tables_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sex,age\nM,3\n")
    with pytest.raises(ReferenceError, match="lacks column"):
        load_reference(bad)
    with pytest.raises(ReferenceError, match="cannot read"):
        load_reference(tmp_path / "missing.csv")


def test_chronological_age():
    assert chronological_age_months(date(2010, 1, 1), date(2020, 1, 1)) == pytest.approx(120, abs=0.1)
    with pytest.raises(ValueError, match="before date of birth"):
        chronological_age_months(date(2020, 1, 1), date(2010, 1, 1))


def test_interval_covers_the_holdout_at_its_level():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 228, 3000)
    pred = true + rng.normal(0, 8, 3000) * (1 + true / 228)  # errors grow with age
    model = ErrorModel.from_predictions(pd.DataFrame({"boneage": true, "regressor": pred, "split": "test"}))
    young, old = model.interval(30), model.interval(200)
    assert young.high - young.low < old.high - old.low
    assert young.n_reference >= 100
    inside = [model.interval(p).low <= t <= model.interval(p).high for p, t in zip(pred[:300], true[:300])]
    assert 0.85 <= np.mean(inside) <= 0.95


def test_interval_needs_enough_cases():
    with pytest.raises(ValueError, match="at least 20"):
        ErrorModel([1.0, 2.0], [1.0, 2.0])


@pytest.mark.parametrize("text,match", [
    ("", "cannot read"),
    ("sex,chronological_age_months,mean_bone_age_months,sd_months\nM,12,12,x\nF,12,12,1\n", "numbers in every cell"),
    ("sex,chronological_age_months,mean_bone_age_months,sd_months\nM,12,12,1\nM,24,24,2\n", "both sexes"),
    ("sex,chronological_age_months,mean_bone_age_months,sd_months\nM,12,12,1\nM,12,13,1\nF,12,12,1\n", "repeats"),
])
def test_bad_uploaded_tables_raise_reference_errors(text, match):
    import io

    with pytest.raises(ReferenceError, match=match):
        load_reference(io.BytesIO(text.encode()))
