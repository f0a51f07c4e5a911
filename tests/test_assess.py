"""assess(): the same numbers as Predictor.predict + gp_zscore; sex, ages and dates, DICOM tags, why no read-out."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from boneage_core.assess import as_date, assess, chronological_age, run_assessment
from boneage_core.clinical import chronological_age_months, gp_zscore, load_reference
from boneage_core.errors import InputError
from boneage_core.imaging import DicomInfo
from boneage_core.report import AssessmentReport
from boneage_core.vocab import SexError


@pytest.fixture(scope="module")
def reference(gp_table):
    return load_reference(gp_table)


@pytest.fixture(scope="module")
def sample_bytes(fullres_sample) -> bytes:
    return fullres_sample.read_bytes()


def test_assess_equals_predict_plus_gp_zscore(committed_predictor, fullres_sample, reference):
    report = assess(committed_predictor, fullres_sample, "F", chronological_age_months=150.0, reference=reference)
    pred = committed_predictor.predict(fullres_sample, male=False)
    readout = gp_zscore(pred.bone_age_months, pred.interval, 150.0, False, reference)
    expected = AssessmentReport.from_prediction(pred, readout, committed_predictor.version, timestamp=report.timestamp)
    assert report == expected
    assert report.readout.z_score == readout.z_score and report.readout_note is None
    assert report.name == fullres_sample.name and report.model_version == committed_predictor.version


def test_bytes_and_dates_give_the_same_read_out_as_the_age(committed_predictor, sample_bytes, reference):
    birth, study = date(2012, 3, 1), date(2024, 9, 15)
    by_dates = assess(committed_predictor, sample_bytes, "female", birth_date=birth.isoformat(),
                      study_date=study.isoformat(), reference=reference, name="x.png")
    by_age = assess(committed_predictor, sample_bytes, False,
                    chronological_age_months=chronological_age_months(birth, study), reference=reference)
    assert by_dates.readout == by_age.readout and by_dates.name == "x.png" and by_age.name == "upload"


def test_dicom_gives_sex_dates_and_study_tags_but_a_given_sex_wins(committed_predictor, dicom_from, fullres_sample,
                                                                    reference):
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20120301", StudyDate="20240915",
                      AccessionNumber="ACC-1", PatientName="Doe^Jane")
    report = assess(committed_predictor, data, None, reference=reference, name="hand.dcm")
    assert report.sex == "M" and report.readout is not None
    assert report.readout.chronological_age_months == pytest.approx(
        chronological_age_months(date(2012, 3, 1), date(2024, 9, 15)))
    assert dict(report.study) == {"AccessionNumber": "ACC-1", "StudyDate": "20240915"}
    assert "Doe" not in report.to_json()
    overridden = assess(committed_predictor, data, "F", chronological_age_months=100.0, reference=reference)
    assert overridden.sex == "F" and overridden.readout.chronological_age_months == 100.0


@pytest.mark.parametrize("sex", [None, "", "X", "unknown"])
def test_sex_is_required_for_a_non_dicom_image(committed_predictor, sample_bytes, sex):
    with pytest.raises(SexError):
        assess(committed_predictor, sample_bytes, sex)


def test_no_age_no_read_out_and_why_when_it_cannot_be_made(committed_predictor, sample_bytes, reference, tmp_path,
                                                          monkeypatch):
    plain = assess(committed_predictor, sample_bytes, "M")
    assert plain.readout is None and plain.readout_note is None
    outside = assess(committed_predictor, sample_bytes, "M", chronological_age_months=400.0, reference=reference)
    assert outside.readout is None and "outside the reference table" in outside.readout_note
    monkeypatch.setenv("BONEAGE_GP_TABLE", str(tmp_path / "missing.csv"))
    missing = assess(committed_predictor, sample_bytes, "M", chronological_age_months=120.0)
    assert missing.readout is None and "cannot read reference table" in missing.readout_note
    assert missing.to_dict()["clinical_note"] == missing.readout_note
    assert missing.readout_note in missing.readout_lines()[0]


def test_ages_and_dates_are_checked():
    assert chronological_age() is None
    assert chronological_age(dicom=DicomInfo(True, date(2010, 1, 1), date(2011, 1, 1))) == pytest.approx(12, abs=0.1)
    assert chronological_age(24.0, dicom=DicomInfo(True, date(2010, 1, 1), date(2011, 1, 1))) == 24.0
    with pytest.raises(InputError, match="not both"):
        chronological_age(12.0, birth_date="2010-01-01", study_date="2011-01-01")
    with pytest.raises(InputError, match="both the birth date and the study date"):
        chronological_age(birth_date="2010-01-01")
    with pytest.raises(InputError, match="before date of birth"):
        chronological_age(birth_date="2011-01-01", study_date="2010-01-01")
    with pytest.raises(InputError, match=">= 0"):
        chronological_age(-1.0)
    with pytest.raises(InputError, match="is not a date"):
        as_date("01/02/2010", "birth date")


def test_non_hand_image_is_refused_with_the_gates_reason(committed_predictor, text_page_png):
    with pytest.raises(InputError, match="does not look like a hand radiograph"):
        assess(committed_predictor, text_page_png, "F")


def test_run_assessment_explains_and_renders_the_pdf(committed_predictor, sample_bytes):
    result = run_assessment(committed_predictor, sample_bytes, "F", chronological_age_months=150.0, explain=True)
    assert result.explanation is not None and result.explanation.heatmap.shape == result.prediction.original.shape
    assert result.pdf().startswith(b"%PDF")


def test_a_front_ends_cached_prediction_is_read_out_without_predicting_again(committed_predictor, dicom_from,
                                                                             fullres_sample, reference, monkeypatch):
    """run_assessment(prediction=...) (the app's cache) gives the report of a fresh run; age_from_dicom=False leaves
    the header's dates out (a page where the user cleared them); a prediction of the other sex is refused."""
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20120301", StudyDate="20240915")
    fresh = run_assessment(committed_predictor, data, "M", reference=reference, name="hand.dcm")
    monkeypatch.setattr(committed_predictor, "predict", lambda *a, **k: pytest.fail("predicted again"))
    cached = run_assessment(committed_predictor, data, "M", reference=reference, name="hand.dcm",
                            prediction=fresh.prediction)
    assert cached.report == dataclasses.replace(fresh.report, timestamp=cached.report.timestamp)
    assert cached.report.readout is not None
    no_dates = run_assessment(committed_predictor, data, "M", reference=reference, prediction=fresh.prediction,
                              age_from_dicom=False)
    assert no_dates.report.readout is None and no_dates.report.readout_note is None
    with pytest.raises(InputError, match="other sex"):
        run_assessment(committed_predictor, data, "F", reference=reference, prediction=fresh.prediction)
