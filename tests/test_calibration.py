"""Age calibration: bias correction, conformal interval coverage, the file's round trip and its tie to the members."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage_core.calibration import (CALIBRATION_FILE, LEVEL, AgeCalibration, _conformal_rank, apply_calibration,
                                      conformal_quantiles, fit_calibration, interval_columns, interval_coverage,
                                      load_calibration, PREDICTIONS_SHA_KEY)
from boneage_core.errors import ArtifactError
from boneage_core.heads import AGE, STAGE
from boneage_core.views import NO_TTA, TTA_SCALES

MEMBERS = {"multihead.pt": "a" * 64}


def _compressed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A model that pulls towards the mean (slope 0.85) with errors that grow with age, like the real one."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(3, 228, n)
    pred = 120 + 0.85 * (true - 120) + rng.normal(0, 1, n) * (2 + 8 * true / 228)
    return pred, true


def test_bias_correction_removes_the_pull_towards_the_mean():
    pred, true = _compressed(4000, 0)
    cal = fit_calibration(pred, true, MEMBERS, TTA_SCALES)
    assert cal.slope == pytest.approx(1 / 0.85, rel=0.05)
    young = true < 24
    assert (pred[young] - true[young]).mean() > 10  # uncorrected: infants over-estimated
    assert abs((cal.correct(pred[young]) - true[young]).mean()) < 3
    assert cal.fitted_on["mae_corrected"] < cal.fitted_on["mae_uncorrected"]


def test_intervals_cover_new_data_at_their_level_and_adapt_to_age():
    pred, true = _compressed(3000, 1)
    cal = fit_calibration(pred, true, MEMBERS, NO_TTA)
    new_pred, new_true = _compressed(20000, 2)
    low, high = cal.bounds(cal.correct(new_pred))
    inside = (low <= new_true) & (new_true <= high)
    assert LEVEL - 0.02 <= inside.mean() <= LEVEL + 0.03
    width = high - low
    assert width[new_true < 36].mean() < 0.7 * width[new_true > 180].mean()


def test_conformal_rank_is_the_finite_sample_quantile():
    assert _conformal_rank(99, 0.05, upper=True) == 94  # ceil(100 * 0.95) - 1
    assert _conformal_rank(99, 0.05, upper=False) == 4  # floor(100 * 0.05) - 1
    assert _conformal_rank(10, 0.05, upper=True) == 9 and _conformal_rank(10, 0.05, upper=False) == 0
    scores = np.arange(99, dtype=float)[::-1]  # unsorted on purpose
    tail = (1 - 0.9) / 2  # 0.04999..., so the lower rank is 3 (a conservative, wider interval)
    assert conformal_quantiles(scores, 0.9) == (_conformal_rank(99, tail, False), _conformal_rank(99, tail, True))


def test_fit_refuses_too_few_or_mismatched_predictions():
    with pytest.raises(ValueError, match="at least"):
        fit_calibration(np.arange(5.0), np.arange(5.0), MEMBERS, NO_TTA)
    with pytest.raises(ValueError, match="same length"):
        fit_calibration(np.arange(50.0), np.arange(40.0), MEMBERS, NO_TTA)


def test_file_round_trip_and_staleness(tmp_path):
    pred, true = _compressed(500, 3)
    cal = fit_calibration(pred, true, MEMBERS, TTA_SCALES)
    assert (tmp_path / CALIBRATION_FILE) == cal.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back == cal
    assert back.stale_reason(MEMBERS, TTA_SCALES) is None
    assert "other weights" in back.stale_reason({"multihead.pt": "b" * 64}, TTA_SCALES)
    assert "no TTA" in back.stale_reason(MEMBERS, NO_TTA)
    assert "2 test-time views" in back.stale_reason(MEMBERS, (1.0, 0.94))
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text())["views"] == list(TTA_SCALES)
    assert load_calibration(tmp_path / "nowhere") is None
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_calibration(tmp_path)


def test_apply_corrects_only_the_age_and_gives_bounds():
    pred, true = _compressed(500, 4)
    cal = fit_calibration(pred, true, MEMBERS, NO_TTA)
    stage = np.array([[0.2, 0.8]])
    out, bounds = apply_calibration({AGE: np.array([30.0]), STAGE: stage}, cal)
    assert out[AGE][0] == pytest.approx(float(cal.correct(30.0))) and out[STAGE] is stage
    assert bounds[0][0] <= out[AGE][0] <= bounds[1][0]
    same, none = apply_calibration({AGE: np.array([30.0])}, None)
    assert same[AGE][0] == 30.0 and none is None
    interval = cal.interval(float(out[AGE][0]))
    assert interval.n_reference == cal.n_conformal


def test_coverage_report_by_age_group():
    low_col, high_col = interval_columns("cnn")
    frame = pd.DataFrame({"boneage": [10.0, 12.0, 100.0, 200.0], low_col: [5.0, 13.0, 90.0, 150.0],
                          high_col: [15.0, 20.0, 110.0, 250.0]})
    report = interval_coverage(frame, "cnn")
    assert report["n"] == 4 and report["coverage"] == pytest.approx(0.75)
    assert report["by_age_group"]["0-2 y"] == {"n": 2, "coverage": 0.5, "mean_width": pytest.approx(8.5)}
    assert report["by_age_group"]["2-5 y"]["n"] == 0 and report["by_age_group"]["2-5 y"]["coverage"] is None
    assert interval_coverage(frame.drop(columns=[low_col]), "cnn") is None


def test_from_dict_refuses_other_files():
    with pytest.raises(ArtifactError, match="not a bone-age calibration"):
        AgeCalibration.from_dict({"format": "something else"})


def test_files_written_before_view_sets_read_their_tta_flag(tmp_path):
    """calibration.json files with "tta": true/false (before view sets) keep applying to the same estimates."""
    cal = fit_calibration(*_compressed(500, 5), MEMBERS, TTA_SCALES)
    data = cal.to_dict()
    del data["views"]
    for flag, views in ((True, TTA_SCALES), (False, NO_TTA)):
        back = AgeCalibration.from_dict({**data, "tta": flag})
        assert back.views == views and back.stale_reason(MEMBERS, views) is None
    with pytest.raises(ArtifactError, match="must include 1.0"):
        AgeCalibration.from_dict({**data, "views": [0.94]})


def test_a_calibration_without_views_or_tta_is_refused():
    data = fit_calibration(*_compressed(500, 6), MEMBERS, NO_TTA).to_dict()
    del data["views"]
    with pytest.raises(ArtifactError, match="lacks 'views'"):
        AgeCalibration.from_dict(data)


def test_the_validation_table_it_was_fitted_on_is_recorded(tmp_path):
    """The sha256 of calibration_predictions.csv is kept in fitted_on: another table is named as not the one;
    a calibration written before the hash was recorded can't tell, and accepts any."""
    pred, true = _compressed(200, 4)
    cal = fit_calibration(pred, true, MEMBERS, TTA_SCALES, predictions_sha256="c" * 64)
    cal.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back.fitted_on[PREDICTIONS_SHA_KEY] == "c" * 64 and back.predictions_mismatch("c" * 64) is None
    assert "is not the table calibration.json was fitted on" in back.predictions_mismatch("d" * 64)
    legacy = fit_calibration(pred, true, MEMBERS, TTA_SCALES)
    assert PREDICTIONS_SHA_KEY not in legacy.fitted_on and legacy.predictions_mismatch("d" * 64) is None
