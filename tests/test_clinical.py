"""Greulich-Pyle z-scores against the interval, chronological age, and holdout false calls."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from boneage_core.calibration import PredictionInterval
from boneage_core.clinical import (ADVANCED, CATEGORIES, DELAYED, INDETERMINATE, NORMAL, ReferenceError, categorise, chronological_age_months,
                                   false_call_rate, gp_zscore, holdout_false_calls, load_reference)


@pytest.fixture(scope="module")
def reference(gp_table):
    return load_reference(gp_table)


def test_real_table_loads_both_sexes(reference):
    assert set(reference["sex"]) == {"M", "F"}
    assert (reference["sd_months"] > 0).all()


def test_zscore_on_a_table_row_matches_the_formula(reference):
    row = reference[(reference["sex"] == "M") & (reference["chronological_age_months"] == 120)].iloc[0]
    bone_age = row["mean_bone_age_months"] + 2.5 * row["sd_months"]
    out = gp_zscore(bone_age, (bone_age, bone_age), 120, True, reference)
    assert out.z_score == pytest.approx(2.5)
    assert out.z_low == out.z_high == pytest.approx(2.5)
    assert out.category == ADVANCED
    assert out.difference_months == pytest.approx(bone_age - 120)


def test_zscore_interpolates_between_rows(reference):
    girls = reference[reference["sex"] == "F"].set_index("chronological_age_months")
    mean = (girls.loc[96, "mean_bone_age_months"] + girls.loc[108, "mean_bone_age_months"]) / 2
    sd = (girls.loc[96, "sd_months"] + girls.loc[108, "sd_months"]) / 2
    out = gp_zscore(mean - 3 * sd, (mean - 3.5 * sd, mean - 2.5 * sd), 102, False, reference)
    assert out.expected_bone_age_months == pytest.approx(mean)
    assert out.z_score == pytest.approx(-3.0)
    assert (out.z_low, out.z_high) == (pytest.approx(-3.5), pytest.approx(-2.5))
    assert out.category == DELAYED
    assert DELAYED in out.text and "-2.50" in out.text


def test_age_outside_table_is_refused(reference):
    with pytest.raises(ReferenceError, match="outside the reference table"):
        gp_zscore(100, (90, 110), 300, True, reference)


@pytest.mark.parametrize("z,z_low,z_high,expected", [
    (2.01, 2.01, 2.01, ADVANCED),  # no uncertainty: the plain |z| > 2 rule
    (2.0, 2.0, 2.0, NORMAL),
    (-2.5, -2.5, -2.5, DELAYED),
    (3.0, 2.1, 4.0, ADVANCED),  # whole interval above +2
    (-3.0, -4.0, -2.1, DELAYED),  # whole interval below -2
    (2.5, 1.5, 3.5, INDETERMINATE),  # beyond +2, interval reaches back inside
    (-2.5, -3.5, -1.9, INDETERMINATE),
    (-2.5, -2.5, 2.0, INDETERMINATE),
    (1.0, -0.5, 3.0, INDETERMINATE),  # point within, interval reaching beyond +2: not "normal" either
    (-1.5, -4.33, 1.43, INDETERMINATE),  # the case: once shown as a green "normal"
    (0.0, -3.0, 3.0, INDETERMINATE),
    (0.0, -2.0, 2.0, NORMAL),  # the whole interval within the limits
    (-1.0, -1.9, 0.5, NORMAL),
    (1.5, 2.2, 3.0, ADVANCED),  # an interval not around its point (biased region) still decides first
])
def test_categories(z, z_low, z_high, expected):
    assert categorise(z, z_low, z_high) == expected


def test_categories_are_distinct_and_a_reversed_interval_is_refused():
    assert len(set(CATEGORIES)) == 4
    with pytest.raises(ValueError, match="reversed"):
        categorise(0.0, 1.0, -1.0)


def test_zscore_of_a_wide_interval_is_indeterminate(reference):
    row = reference[(reference["sex"] == "F") & (reference["chronological_age_months"] == 120)].iloc[0]
    mean, sd = row["mean_bone_age_months"], row["sd_months"]
    out = gp_zscore(mean + 2.4 * sd, PredictionInterval(mean + 1.0 * sd, mean + 3.0 * sd, 0.9, 100), 120,
                    False, reference)
    assert out.category == INDETERMINATE
    assert out.z_low == pytest.approx(1.0) and out.z_high == pytest.approx(3.0)
    assert (out.interval_low_months, out.interval_high_months) == (pytest.approx(mean + sd), pytest.approx(mean + 3 * sd))


@pytest.mark.parametrize("interval,error", [(120.0, TypeError), (None, TypeError), ((130, 110), ValueError)])
def test_zscore_requires_an_interval(reference, interval, error):
    with pytest.raises(error):
        gp_zscore(120, interval, 120, True, reference)


def _synthetic_reference() -> pd.DataFrame:
    """Mean bone age = chronological age, SD 10 months, 12-120 months for both sexes."""
    ages = [12.0, 120.0]
    return pd.DataFrame({"sex": ["M", "M", "F", "F"], "chronological_age_months": ages * 2,
                         "mean_bone_age_months": ages * 2, "sd_months": [10.0] * 4})


def test_false_call_rate_counts_known_cases():
    true = np.array([18, 18, 18, 60, 60, 60, 100, 100, 5, 130])  # the last two lie outside 12-120 months
    pred = np.array([45, 18, -5, 85, 60, 60, 70, 100, 60, 0])  # z: +2.7, 0, -2.3, +2.5, 0, 0, -3, 0
    half = np.array([5, 5, 5, 20, 5, 5, 5, 5, 5, 5])
    male = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    ref = _synthetic_reference()
    point = false_call_rate(pred, pred, pred, true, male, ref)
    assert point["n"] == 10 and point["n_outside_reference"] == 2
    assert point["overall"]["n"] == 8
    assert point["overall"]["counts"] == {ADVANCED: 2, NORMAL: 4, DELAYED: 2, INDETERMINATE: 0}
    assert point["overall"]["false_call_rate"] == pytest.approx(4 / 8)
    assert point["under_2y"]["n"] == 3
    assert point["under_2y"]["counts"][ADVANCED] == 1 and point["under_2y"]["counts"][DELAYED] == 1
    assert point["under_2y"]["false_call_rate"] == pytest.approx(2 / 3)
    wide = false_call_rate(pred, pred - half, pred + half, true, male, ref)
    # z intervals: [+2.2, +3.2] advanced, [-2.8, -1.8] indeterminate, [+0.5, +4.5] indeterminate, [-3.5, -2.5] delayed,
    # the four at z 0 within [-0.5, +0.5] normal
    assert wide["overall"]["counts"] == {ADVANCED: 1, NORMAL: 4, DELAYED: 1, INDETERMINATE: 2}
    assert wide["overall"]["advanced_rate"] == pytest.approx(1 / 8)
    assert wide["under_2y"]["false_calls"] == 1


def test_false_call_rate_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        false_call_rate([1.0, 2.0], [1.0], [1.0, 2.0], [1.0, 2.0], [True, False], _synthetic_reference())


def test_holdout_false_calls_fall_with_the_interval(reference):
    rng = np.random.default_rng(1)
    true = rng.uniform(6, 190, 600)
    pred = true + rng.normal(0, 15, 600)
    frame = pd.DataFrame({"boneage": true, "cnn_age": pred, "cnn_age_low": pred - 25, "cnn_age_high": pred + 25,
                          "male": rng.random(600) < 0.5, "split": "test"})
    out = holdout_false_calls(frame, reference)
    assert out["point"]["overall"]["counts"][INDETERMINATE] == 0
    assert out["interval"]["overall"]["false_call_rate"] < out["point"]["overall"]["false_call_rate"]
    # normal needs the whole interval within the limits: never more normal calls than the point rule makes
    assert out["interval"]["overall"]["counts"][NORMAL] < out["point"]["overall"]["counts"][NORMAL]
    train_rows = frame.assign(split="train")
    both = holdout_false_calls(pd.concat([frame, train_rows]), reference)  # only the test split counts
    assert both["interval"]["overall"]["n"] == out["interval"]["overall"]["n"]


def test_holdout_false_calls_need_the_interval_columns(reference):
    frame = pd.DataFrame({"boneage": [10.0], "cnn_age": [12.0], "male": [True]})
    with pytest.raises(KeyError, match="cnn_age_low"):
        holdout_false_calls(frame, reference)


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


def test_the_explanation_agrees_with_the_numbers_and_the_category():
    """The issue's case: z -1.50 with an interval down to -4.33 is indeterminate, and the text says which end crosses."""
    from boneage_core.clinical import ClinicalReadout

    def readout(z, low, high):
        return ClinicalReadout(100, 90, 110, 120, 120, 10, -20, z, low, high, categorise(z, low, high))

    case = readout(-1.50, -4.33, 1.43)
    assert case.category == INDETERMINATE
    assert "-4.33 is below -2" in case.explanation and "within +/-2" in case.explanation
    assert "above +2" not in case.explanation
    assert "wholly" not in readout(0.1, -1.0, 1.2).explanation and "within +/-2" in readout(0.1, -1.0, 1.2).explanation
    assert "below -2" in readout(-3.0, -3.5, -2.5).explanation
    both = readout(0.0, -2.5, 2.5).explanation
    assert "-2.50 is below -2" in both and "+2.50 is above +2" in both


@pytest.mark.parametrize("text,expected", [("2015-03-01", date(2015, 3, 1)), (" 20150301 ", date(2015, 3, 1))])
def test_parse_date_reads_iso_and_dicom_dates(text, expected):
    from boneage_core.clinical import parse_date

    assert parse_date(text) == expected


@pytest.mark.parametrize("text", ["2015-13-01", "01.03.2015", "", "30 years", "20151301"])
def test_parse_date_names_the_field_and_the_format(text):
    from boneage_core.clinical import DATE_HELP, parse_date

    with pytest.raises(ValueError, match="Date of birth") as err:
        parse_date(text, "Date of birth")
    assert DATE_HELP in str(err.value)


def test_a_typed_age_is_refused_with_a_reason_not_clamped():
    from boneage_core.clinical import MAX_AGE_YEARS, age_from_years_months

    assert age_from_years_months(14, 6) == 174.0 and age_from_years_months(0) == 0.0
    for years, months, words in ((30, None, "30 years"), (-1, None, "-1 years"), (10, 12, "12 months"),
                                 (10, -2, "-2 months"), (2.5, None, "2.5 years")):
        with pytest.raises(ValueError, match=words):
            age_from_years_months(years, months)
    assert age_from_years_months(MAX_AGE_YEARS, 11) == MAX_AGE_YEARS * 12 + 11


def test_reference_path_prefers_the_environment_then_the_packaged_copy(tmp_path, monkeypatch, gp_table):
    from boneage_core import clinical

    packaged = tmp_path / "packaged.csv"
    monkeypatch.setattr(clinical, "PACKAGED_REFERENCE", packaged)
    monkeypatch.setattr(clinical, "DEFAULT_REFERENCE", gp_table)
    monkeypatch.delenv(clinical.REFERENCE_ENV, raising=False)
    assert clinical.reference_path() == gp_table  # no packaged copy: the shared one beside the checkout
    packaged.write_bytes(gp_table.read_bytes())
    assert clinical.reference_path() == packaged
    monkeypatch.setenv(clinical.REFERENCE_ENV, str(tmp_path / "mine.csv"))
    assert clinical.reference_path() == tmp_path / "mine.csv"
    monkeypatch.setattr(clinical, "DEFAULT_REFERENCE", tmp_path / "absent.csv")
    monkeypatch.delenv(clinical.REFERENCE_ENV)
    packaged.unlink()
    assert clinical.reference_path() is None
