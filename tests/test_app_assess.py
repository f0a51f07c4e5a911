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
from boneage_core.clinical import RULE_TEXT, gp_zscore, load_reference
from boneage_core.errors import InputError
from boneage_core.predictor import Predictor
from boneage_core.report import read_study, years_months

SEX_KEY, UPLOAD_KEY = "assess_sex", "assess_upload"


def _png(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/png"


def _sex_option(at: AppTest, male: bool) -> str:
    """The radio option for a sex, read from the widget (Female first, Male second), not re-typed."""
    return at.radio(key=SEX_KEY).options[int(male)]


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
    at.radio(key=SEX_KEY).set_value(_sex_option(at, male)).run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    return at


def test_empty_page_asks_for_an_upload_and_shows_no_estimate(open_page):
    at = open_page("assess")
    assert at.file_uploader(key=UPLOAD_KEY).value is None
    assert at.radio(key=SEX_KEY).value is None, "sex must have no default"
    assert at.info and not _estimate_shown(at) and not at.error


def test_upload_without_sex_gives_no_estimate(sample, open_page, monkeypatch):
    path, _, _ = sample

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran without a sex")

    monkeypatch.setattr(Predictor, "predict", refuse)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=SEX_KEY).value is None
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
        assert f"{expected.interval.low:.0f}–{expected.interval.high:.0f} months" in text
    assert {b.key for b in assessed.download_button} >= {"assess_dl_pdf", "assess_dl_json", "assess_dl_csv",
                                                           "assess_dl_png"}
    assert predictor.version in text, "the model version the reports carry"


def test_stage_name_is_never_truncated(assessed, predictor, sample):
    path, _, male = sample
    name = predictor.predict(path, male=male).stage_name
    assert name in [h.value for h in assessed.subheader], "the stage is shown in full, as wrapping text"
    assert not any(m.value == name for m in assessed.metric), "st.metric would truncate a long stage name"


def test_age_modes_fill_in_nothing(assessed):
    modes = assessed.radio(key="assess_age_mode").options
    assessed.radio(key="assess_age_mode").set_value(modes[1]).run()
    assert assessed.number_input(key="assess_age_years").value is None
    assert assessed.number_input(key="assess_age_months").value is None
    assessed.radio(key="assess_age_mode").set_value(modes[2]).run()
    assert assessed.date_input(key="assess_birth_date").value is None
    assert assessed.date_input(key="assess_study_date").value is None
    assert len(assessed.metric) == 2, "no z-score without an age"
    assessed.radio(key="assess_age_mode").set_value(modes[0]).run()


def test_years_and_months_give_the_clinical_readout(assessed, sample, predictor, gp_table):
    path, _, male = sample
    modes = assessed.radio(key="assess_age_mode").options
    assessed.radio(key="assess_age_mode").set_value(modes[1]).run()
    assessed.number_input(key="assess_age_years").set_value(14).run()  # a committed value (Enter / Tab / blur)
    assessed.number_input(key="assess_age_months").set_value(6).run()
    assert not assessed.exception and not assessed.error
    pred = predictor.predict(path, male=male)
    interval = pred.interval or (pred.bone_age_months, pred.bone_age_months)
    readout = gp_zscore(pred.bone_age_months, interval, 14 * 12 + 6, male, load_reference(gp_table))
    values = [m.value for m in assessed.metric]
    assert f"{readout.z_score:+.2f}" in values
    assert f"{readout.z_low:+.2f} to {readout.z_high:+.2f}" in values
    text = _texts(assessed)
    assert f"**{readout.category}**" in text and RULE_TEXT in text
    assessed.radio(key="assess_age_mode").set_value(modes[0]).run()


def test_dates_give_the_chronological_age(assessed):
    modes = assessed.radio(key="assess_age_mode").options
    assessed.radio(key="assess_age_mode").set_value(modes[2]).run()
    birth, study = dt.date(2010, 3, 1), dt.date(2025, 3, 1)
    assessed.date_input(key="assess_birth_date").set_value(birth).run()
    assert len(assessed.metric) == 2, "one date is not enough"
    assessed.date_input(key="assess_study_date").set_value(study).run()
    assert f"{(study - birth).days / 30.4375:.1f} months" in [m.value for m in assessed.metric]
    assessed.radio(key="assess_age_mode").set_value(modes[0]).run()


def test_new_upload_clears_the_previous_patient(sample, fullres_dir, open_page):
    path, _, male = sample
    other = next(p for p in sorted(fullres_dir.glob("*.png")) if p != path)
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(path)).run()
    at.radio(key=SEX_KEY).set_value(_sex_option(at, male)).run()
    modes = at.radio(key="assess_age_mode").options
    at.radio(key="assess_age_mode").set_value(modes[1]).run()
    at.number_input(key="assess_age_years").set_value(9).run()
    assert at.metric
    at.file_uploader(key=UPLOAD_KEY).set_value(_png(other)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=SEX_KEY).value is None, "the previous patient's sex was kept"
    assert at.radio(key="assess_age_mode").value == modes[0], "the previous patient's age was kept"
    assert not _estimate_shown(at)


def test_dicom_prefills_sex_and_dates_and_says_so(fullres_sample, dicom_from, open_page):
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20100115", StudyDate="20250115",
                      StudyInstanceUID="1.2.3.4", AccessionNumber="ACC42", PatientName="Doe^Jane")
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("case.dcm", data, "application/dicom")).run()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    assert at.radio(key=SEX_KEY).value == _sex_option(at, True)
    assert at.date_input(key="assess_birth_date").value == dt.date(2010, 1, 15)
    assert at.date_input(key="assess_study_date").value == dt.date(2025, 1, 15)
    days = (dt.date(2025, 1, 15) - dt.date(2010, 1, 15)).days
    assert f"{days / 30.4375:.1f} months" in [m.value for m in at.metric]
    dicom_notes = [c.value for c in at.caption if "from DICOM" in c.value]
    assert len(dicom_notes) == 2, dicom_notes  # sex and dates, each labelled
    # changing the sex by hand drops its "from DICOM" label
    at.radio(key=SEX_KEY).set_value(_sex_option(at, False)).run()
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
    at.radio(key=SEX_KEY).set_value(_sex_option(at, False)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(reason in e.value for e in at.error)
    assert not _estimate_shown(at) and not at.image


def test_non_hand_image_is_refused_real(text_page_png, open_page):
    """The real predictor refuses a page of text (needs the library's input gate)."""
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("page.png", text_page_png, "image/png")).run()
    at.radio(key=SEX_KEY).set_value(_sex_option(at, False)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, "a page of text was assessed as a hand"
    assert not _estimate_shown(at)


def test_corrupt_upload_shows_an_error_then_the_page_recovers(open_page, predictor):
    at = open_page("assess")
    at.file_uploader(key=UPLOAD_KEY).set_value(("broken.png", b"not an image", "image/png")).run()
    at.radio(key=SEX_KEY).set_value(_sex_option(at, True)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and "broken.png" in at.error[0].value
    assert not _estimate_shown(at)
    buffer = io.BytesIO()
    noise = (np.random.default_rng(0).random((300, 240)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    at.file_uploader(key=UPLOAD_KEY).set_value(("noise.png", buffer.getvalue(), "image/png")).run()
    at.radio(key=SEX_KEY).set_value(_sex_option(at, True)).run()
    if at.error:  # the input gate may refuse noise: then no number
        assert not _estimate_shown(at)
        return
    pred = predictor.predict(buffer.getvalue(), male=True)
    warnings = [w.value for w in at.warning]
    assert all(any(w in shown for shown in warnings) for w in pred.warnings), (pred.warnings, warnings)


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
    at.radio(key=SEX_KEY).set_value(_sex_option(at, male)).run()
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
