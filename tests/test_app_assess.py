"""The Assess page under AppTest: sex required, a new file is a new patient, the read-out, refusals and downloads."""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import state
from app.options import AGE_MODE, AGE_MONTHS, AGE_YEARS, BIRTH_DATE, PATIENT_STATE, SEX, STUDY_DATE, patient_key
from boneage_core.clinical import RULE_TEXT, gp_zscore, load_reference
from boneage_core.errors import InputError
from boneage_core.predictor import Predictor
from boneage_core.report import read_study, whole_months_range, years_months

UPLOAD_KEY = "assess_upload"


def _k(at: AppTest, name: str) -> str:
    """The widget key of a patient input (app.options) for the film now on the page."""
    return patient_key(name, at.session_state[PATIENT_STATE])


def _png(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/png"


def _sex_option(at: AppTest, male: bool) -> str:
    """The radio option for a sex, read from the widget (Female first, Male second), not re-typed."""
    return at.radio(key=_k(at, SEX)).options[int(male)]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "subheader", "caption", "info", "warning", "success", "error") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def _estimate_shown(at: AppTest) -> bool:
    return bool(at.metric) or bool(at.download_button)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The same cached Predictor the app uses (one load for the whole module)."""
    return state.get_predictor(str(state.artifacts_dir()))


@pytest.fixture(scope="module")
def sample(fullres_sample, sample_label):
    """(path, true months, male) of the full-size 1377.png."""
    months, male = sample_label(fullres_sample.stem)
    return fullres_sample, months, male


@pytest.fixture(scope="module")
def assessed(sample, open_page) -> AppTest:
    """The page after uploading 1377.png and choosing its recorded sex."""
    path, _, male = sample
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, male)).run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    return at


def test_empty_page_asks_for_an_upload_and_shows_no_estimate(open_page):
    at = open_page("assess")
    assert at.file_uploader(key=UPLOAD_KEY).value is None
    assert not at.radio, "no patient inputs before there is a film: the sex is chosen for the film on screen"
    assert at.info and not _estimate_shown(at) and not at.error


def test_upload_without_sex_gives_no_estimate(sample, open_page, monkeypatch):
    path, _, _ = sample

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran without a sex")

    monkeypatch.setattr(Predictor, "predict", refuse)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=_k(at, SEX)).value is None
    assert not _estimate_shown(at) and not at.image
    assert at.info, "the page must say that the sex is needed"


def test_choosing_sex_gives_the_library_estimate_heatmap_and_downloads(assessed, sample, predictor):
    path, true_months, male = sample
    expected = predictor.predict(path, male=male)
    values = [m.value for m in assessed.metric]
    assert f"{round(expected.bone_age_months)} months" in values  # whole months, no decimals
    assert expected.years_months in values
    assert abs(expected.bone_age_months - true_months) < 48, "implausibly far from the radiologist's read"
    text = _texts(assessed)
    assert expected.stage_name in text and expected.stage_source in text, "the stage and where it comes from"
    assert len(assessed.image) >= 3  # model input, original, Grad-CAM overlay
    if expected.interval is not None:
        assert f"{whole_months_range(expected.interval.low, expected.interval.high)} months" in text
    assert {b.key for b in assessed.download_button} >= {"assess_dl_pdf", "assess_dl_json", "assess_dl_csv",
                                                           "assess_dl_png"}
    assert predictor.version in text, "the model version the reports carry"


def test_stage_name_is_never_truncated(assessed, predictor, sample):
    path, _, male = sample
    name = predictor.predict(path, male=male).stage_name
    assert name in [h.value for h in assessed.subheader], "the stage is shown in full, as wrapping text"
    assert not any(m.value == name for m in assessed.metric), "st.metric would truncate a long stage name"


def test_age_modes_fill_in_nothing(assessed):
    modes = assessed.radio(key=_k(assessed, AGE_MODE)).options
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[1]).run()
    assert assessed.number_input(key=_k(assessed, AGE_YEARS)).value is None
    assert assessed.number_input(key=_k(assessed, AGE_MONTHS)).value is None
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[2]).run()
    assert assessed.text_input(key=_k(assessed, BIRTH_DATE)).value == ""
    assert assessed.text_input(key=_k(assessed, STUDY_DATE)).value == ""
    assert len(assessed.metric) == 2, "no z-score without an age"
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[0]).run()


def test_years_and_months_give_the_clinical_readout(assessed, sample, predictor, gp_table):
    path, _, male = sample
    modes = assessed.radio(key=_k(assessed, AGE_MODE)).options
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[1]).run()
    assessed.number_input(key=_k(assessed, AGE_YEARS)).set_value(14).run()  # a committed value (Enter / Tab / blur)
    assessed.number_input(key=_k(assessed, AGE_MONTHS)).set_value(6).run()
    assert not assessed.exception and not assessed.error
    pred = predictor.predict(path, male=male)
    interval = pred.interval or (pred.bone_age_months, pred.bone_age_months)
    readout = gp_zscore(pred.bone_age_months, interval, 14 * 12 + 6, male, load_reference(gp_table))
    values = [m.value for m in assessed.metric]
    assert f"{readout.z_score:+.2f}" in values
    assert f"{readout.z_low:+.2f} to {readout.z_high:+.2f}" in values
    text = _texts(assessed)
    assert f"**{readout.category}**" in text and RULE_TEXT in text
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[0]).run()


def test_dates_give_the_chronological_age(assessed):
    modes = assessed.radio(key=_k(assessed, AGE_MODE)).options
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[2]).run()
    birth, study = dt.date(2010, 3, 1), dt.date(2025, 3, 1)
    assessed.text_input(key=_k(assessed, BIRTH_DATE)).set_value(birth.isoformat()).run()
    assert len(assessed.metric) == 2, "one date is not enough"
    assessed.text_input(key=_k(assessed, STUDY_DATE)).set_value(study.strftime("%Y%m%d")).run()
    assert f"{(study - birth).days / 30.4375:.1f} months" in [m.value for m in assessed.metric]
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[0]).run()


def test_new_upload_clears_the_previous_patient(sample, fullres_dir, open_page):
    path, _, male = sample
    other = next(p for p in sorted(fullres_dir.glob("*.png")) if p != path)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, male)).run()
    modes = at.radio(key=_k(at, AGE_MODE)).options
    at.radio(key=_k(at, AGE_MODE)).set_value(modes[1]).run()
    at.number_input(key=_k(at, AGE_YEARS)).set_value(9).run()
    assert at.metric
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(other)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=_k(at, SEX)).value is None, "the previous patient's sex was kept"
    assert at.radio(key=_k(at, AGE_MODE)).value == modes[0], "the previous patient's age was kept"
    assert not _estimate_shown(at)


def test_an_invalid_typed_age_clears_the_readout_and_says_why(assessed):
    """30 years (beyond any child) or a date that is no date: no read-out from a previous value, and the reason."""
    modes = assessed.radio(key=_k(assessed, AGE_MODE)).options
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[1]).run()
    assessed.number_input(key=_k(assessed, AGE_YEARS)).set_value(9).run()
    assert len(assessed.metric) > 2, "a valid age gives the read-out"
    assessed.number_input(key=_k(assessed, AGE_YEARS)).set_value(30).run()
    assert not assessed.exception
    assert len(assessed.metric) == 2, "the read-out of the previous age was kept"
    assert any("30 years" in e.value for e in assessed.error)
    assert any("No read-out" in w.value for w in assessed.warning)
    assessed.number_input(key=_k(assessed, AGE_YEARS)).set_value(9).run()
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[2]).run()
    assessed.text_input(key=_k(assessed, BIRTH_DATE)).set_value("2015-02-30").run()
    assessed.text_input(key=_k(assessed, STUDY_DATE)).set_value("2025-03-01").run()
    assert len(assessed.metric) == 2 and any("2015-02-30" in e.value for e in assessed.error)
    assessed.text_input(key=_k(assessed, BIRTH_DATE)).set_value("2026-01-01").run()  # after the study
    assert len(assessed.metric) == 2 and any("before" in e.value for e in assessed.error)
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[0]).run()


def test_the_next_childs_film_starts_with_no_sex_and_is_read_with_its_own(sample, fullres_dir, open_page, predictor,
                                                                          sample_label):
    """A boy, then a girl's film in the same session: no sex carried over, no result until it is chosen, and the
    girl's film read as a girl (the same film read as a boy differs)."""
    path, _, _ = sample
    girl = next(p for p in sorted(fullres_dir.glob("*.png")) if not sample_label(p.stem)[1] and p != path)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, True)).run()
    assert _estimate_shown(at)
    first_patient = at.session_state[PATIENT_STATE]
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(girl)).run()
    assert at.session_state[PATIENT_STATE] != first_patient
    assert at.radio(key=_k(at, SEX)).value is None and not _estimate_shown(at)
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, False)).run()
    as_girl, as_boy = predictor.predict(girl, male=False), predictor.predict(girl, male=True)
    assert round(as_girl.bone_age_months) != round(as_boy.bone_age_months)
    assert f"{round(as_girl.bone_age_months)} months" in [m.value for m in at.metric]
    assert "for girls" in _texts(at)


def test_typed_filing_details_and_dates_reach_the_report(assessed, monkeypatch):
    """Patient ID, reader and the typed dates go into the report the downloads are made of; blank ones do not."""
    from boneage_core.report import AssessmentReport

    made: list[AssessmentReport] = []
    original = AssessmentReport.from_prediction.__func__

    def spy(cls, *args, **kwargs):
        made.append(original(cls, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(AssessmentReport, "from_prediction", classmethod(spy))
    assessed.text_input(key=_k(assessed, "assess_patient_id")).set_value("P-0815").run()
    assessed.text_input(key="assess_reader").set_value("Dr Reader").run()
    modes = assessed.radio(key=_k(assessed, AGE_MODE)).options
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[2]).run()
    assessed.text_input(key=_k(assessed, BIRTH_DATE)).set_value("20100301").run()
    assessed.text_input(key=_k(assessed, STUDY_DATE)).set_value("2025-03-01").run()
    assert not assessed.exception and made
    assert dict(made[-1].patient) == {"patient_id": "P-0815", "reader": "Dr Reader", "birth_date": "2010-03-01",
                                      "study_date": "2025-03-01"}
    assert made[-1].readout is not None
    assessed.text_input(key=_k(assessed, "assess_patient_id")).set_value("").run()
    assessed.text_input(key="assess_reader").set_value("").run()
    assessed.radio(key=_k(assessed, AGE_MODE)).set_value(modes[0]).run()
    assert dict(made[-1].patient) == {}


def test_dicom_prefills_sex_and_dates_and_says_so(fullres_sample, dicom_from, open_page):
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20100115", StudyDate="20250115",
                      StudyInstanceUID="1.2.3.4", AccessionNumber="ACC42", PatientName="Doe^Jane")
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("case.dcm", data, "application/dicom")).run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    assert at.radio(key=_k(at, SEX)).value == _sex_option(at, True)
    assert at.text_input(key=_k(at, BIRTH_DATE)).value == "2010-01-15"
    assert at.text_input(key=_k(at, STUDY_DATE)).value == "2025-01-15"
    days = (dt.date(2025, 1, 15) - dt.date(2010, 1, 15)).days
    assert f"{days / 30.4375:.1f} months" in [m.value for m in at.metric]
    dicom_notes = [c.value for c in at.caption if "from DICOM" in c.value]
    assert len(dicom_notes) == 2, dicom_notes  # sex and dates, each labelled
    # changing the sex by hand drops its "from DICOM" label
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, False)).run()
    assert len([c for c in at.caption if "from DICOM" in c.value]) == 1


def test_read_study_keeps_study_identifiers_only(fullres_sample, dicom_from):
    data = dicom_from(fullres_sample, StudyInstanceUID="1.2.3.4", AccessionNumber="ACC42", StudyDate="20250115",
                      PatientName="Doe^Jane", PatientID="P123")
    study = read_study(data)
    assert study == {"StudyInstanceUID": "1.2.3.4", "AccessionNumber": "ACC42", "StudyDate": "20250115"}
    assert read_study(fullres_sample.read_bytes()) == {}


def test_non_hand_image_is_refused(text_page_png, open_page, monkeypatch):
    """The library's refusal (InputError) is shown as an error and no number appears (gate simulated)."""
    reason = f"not a hand radiograph ({os.urandom(4).hex()})"

    def gate(self, source, male, *args, **kwargs):
        raise InputError(reason)

    monkeypatch.setattr(Predictor, "predict", gate)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("page.png", text_page_png, "image/png")).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, False)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(reason in e.value for e in at.error)
    assert not _estimate_shown(at) and not at.image


def test_non_hand_image_is_refused_real(text_page_png, open_page):
    """The real predictor refuses a page of text (needs the library's input gate)."""
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("page.png", text_page_png, "image/png")).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, False)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, "a page of text was assessed as a hand"
    assert not _estimate_shown(at)


def test_corrupt_upload_shows_an_error_then_the_page_recovers(open_page, predictor):
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("broken.png", b"not an image", "image/png")).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, True)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and "broken.png" in at.error[0].value
    assert not _estimate_shown(at)
    buffer = io.BytesIO()
    noise = (np.random.default_rng(0).random((300, 240)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    at.file_uploader(key=UPLOAD_KEY).set_value(("noise.png", buffer.getvalue(), "image/png")).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, True)).run()
    if at.error:  # the input gate may refuse noise: then no number
        assert not _estimate_shown(at)
        return
    pred = predictor.predict(buffer.getvalue(), male=True)
    warnings = [w.value for w in at.warning]
    assert all(any(w in shown for shown in warnings) for w in pred.warnings), (pred.warnings, warnings)


@pytest.mark.slow
def test_predictor_notes_are_shown_once(tmp_path, committed_artifacts, sample, open_page, monkeypatch):
    """A folder without manifest.json: the predictor's note (no intervals) appears once, not per section."""
    for member in committed_artifacts.glob("*.pt"):
        (tmp_path / member.name).symlink_to(member)
    monkeypatch.setenv(state.ARTIFACTS_ENV, str(tmp_path))
    notes = state.get_predictor(str(tmp_path)).notes
    assert notes
    path, _, male = sample
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    at.radio(key=_k(at, SEX)).set_value(_sex_option(at, male)).run()
    shown = [i.value for i in at.info]
    assert all(shown.count(note) == 1 for note in notes), shown


def test_display_image_downscales_only_large_images():
    big = np.random.default_rng(0).random((2044, 1514)).astype(np.float32)
    small = state.display_image(big)
    assert max(small.shape) == state.DISPLAY_MAX_SIDE
    assert abs(small.shape[0] / small.shape[1] - 2044 / 1514) < 0.01  # aspect ratio kept on screen
    assert state.display_image(small) is small
    assert state.display_image(big, like=small).shape == small.shape


def test_years_months_of_the_headline_is_whole_months():
    assert years_months(185.4) == "15 y 5 m"
