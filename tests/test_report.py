"""AssessmentReport (JSON/CSV), the one-page PDF read back with pypdf, and the heatmap PNG with its colour scale."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pypdf import PdfReader

from boneage_core.vocab import STAGE_FROM_AGE, STAGE_FROM_HEAD
from boneage_core.clinical import INDETERMINATE, gp_zscore, load_reference
from boneage_core.report import (DISCLAIMER, REFERENCE_NAME, AssessmentReport, heatmap_png_with_colorbar,
                                 render_pdf, study_identifiers, utc_timestamp)

PATIENT = "Doe^Janette"
DICOM_TAGS = {"PatientName": PATIENT, "PatientID": "PID-778", "StudyInstanceUID": "1.2.840.99.7",
              "AccessionNumber": "ACC-4711", "StudyDate": "20240131"}
PROBABILITIES = {"infancy/toddler": 0.01, "pre-puberty": 0.81, "early/mid puberty": 0.16, "late puberty": 0.01,
                 "post-puberty": 0.01}


def _prediction(**changes) -> SimpleNamespace:
    values = dict(name="hand-0042.dcm", male=False, bone_age_months=124.6,
                  interval=SimpleNamespace(low=108.3, high=141.7, level=0.9), stage=1, stage_name="pre-puberty",
                  stage_source=STAGE_FROM_HEAD, stage_probabilities=PROBABILITIES, warnings=["the image is very dark"])
    values.update(changes)
    return SimpleNamespace(**values)


@pytest.fixture(scope="module")
def readout(gp_table):
    return gp_zscore(124.6, (108.3, 141.7), 150.0, False, load_reference(gp_table))


@pytest.fixture(scope="module")
def report(readout):
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    return AssessmentReport.from_prediction(_prediction(), readout, "manifest-9f3c2e1", dicom=DICOM_TAGS,
                                            timestamp=when)


@pytest.fixture
def images(hand_like):
    """(gray thumbnail, a red-only RGB 'overlay' of it)."""
    overlay = np.zeros(hand_like.shape + (3,), np.uint8)
    overlay[..., 0] = (hand_like * 255).astype(np.uint8)
    return hand_like, overlay


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(data))
    return len(reader.pages), " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_from_prediction_reads_the_prediction_and_keeps_only_study_tags(report, readout):
    assert (report.name, report.sex, report.bone_age_months) == ("hand-0042.dcm", "F", 124.6)
    assert report.bone_age_whole_months == 125
    assert report.bone_age_text == "125 months (10 y 5 m)"
    assert (report.interval_low, report.interval_high, report.interval_level) == (108.3, 141.7, 0.9)
    assert report.stage_source == STAGE_FROM_HEAD
    assert dict(report.stage_probabilities) == PROBABILITIES
    assert report.readout is readout and readout.category == INDETERMINATE
    assert dict(report.study) == {k: DICOM_TAGS[k] for k in ("StudyInstanceUID", "AccessionNumber", "StudyDate")}
    assert report.timestamp == "2025-03-04T05:06:07+00:00"
    assert report.warnings == ("the image is very dark",)
    assert PATIENT not in report.to_json() and "PID-778" not in report.to_json()


def test_stage_derived_from_age_and_missing_parts():
    rep = AssessmentReport.from_prediction(
        _prediction(stage_source=STAGE_FROM_AGE, stage_probabilities=None, interval=None, male=True), None, "v1")
    assert rep.stage_source == STAGE_FROM_AGE
    assert rep.sex == "M" and rep.interval_text is None and rep.study == ()
    row = rep.csv_row()
    assert row["z_score"] is None and row["clinical_category"] is None and not any(k.startswith("p_") for k in row)
    assert datetime.fromisoformat(rep.timestamp).tzinfo is not None


def test_json_round_trip(report):
    payload = json.loads(report.to_json())
    assert payload["bone_age_months"] == 124.6 and payload["bone_age_whole_months"] == 125
    assert payload["clinical"]["z_low"] == pytest.approx(report.readout.z_low)
    assert payload["reference"] == REFERENCE_NAME and payload["disclaimer"] == DISCLAIMER
    assert payload["study"]["AccessionNumber"] == "ACC-4711"


def test_csv_row_has_the_stage_name_and_z(report, readout):
    row = report.csv_row()
    assert row["stage_name"] == "pre-puberty" and "stage" not in row
    assert row["z_score"] == pytest.approx(readout.z_score, abs=1e-3)
    assert (row["z_low"], row["z_high"]) == (pytest.approx(readout.z_low, abs=1e-3),
                                             pytest.approx(readout.z_high, abs=1e-3))
    assert row["chronological_age_months"] == 150.0 and row["clinical_category"] == INDETERMINATE
    assert row["p_pre-puberty"] == 0.81 and row["model_version"] == "manifest-9f3c2e1"
    assert PATIENT not in json.dumps(row)


def test_pdf_is_one_page_with_the_result_and_no_patient_name(report, images):
    gray, overlay = images
    data = render_pdf(report, gray, overlay)
    assert data.startswith(b"%PDF")
    pages, text = _pdf_text(data)
    assert pages == 1
    for expected in ("125 months (10 y 5 m)", "90% interval 108–142 months", "pre-puberty (stage head)",
                     "manifest-9f3c2e1", DISCLAIMER, REFERENCE_NAME, INDETERMINATE, "ACC-4711", "1.2.840.99.7",
                     "2025-03-04T05:06:07+00:00", "Warning: The image is very dark.", "low → high contribution"):
        assert expected in text, expected
    assert PATIENT not in text and "Janette" not in text and "PID-778" not in text
    assert len(PdfReader(io.BytesIO(data)).pages[0].images) == 2


def test_pdf_without_images_readout_or_many_warnings_stays_one_page():
    rep = AssessmentReport.from_prediction(_prediction(warnings=[f"warning number {i}" for i in range(9)]), None,
                                           "v2", timestamp="2025-01-01T00:00:00+00:00")
    pages, text = _pdf_text(render_pdf(rep, None, None))
    assert pages == 1
    assert "no chronological age given" in text and "not available" in text
    assert "Warning number 5" in text and "Warning number 6" not in text and "3 more warning" in text


def test_typed_patient_details_are_in_every_export_and_blank_ones_are_left_out(readout, images):
    """Patient ID, accession, dates and reader, when typed, are in the PDF, JSON and CSV (a clinician files it)."""
    typed = {"patient_id": "P-0815", "accession": "A-77", "birth_date": "2012-05-01", "study_date": "2025-03-01",
             "reader": "Dr Reader", "unused": None}
    typed.pop("unused")
    rep = AssessmentReport.from_prediction(_prediction(), readout, "v3", patient={**typed, "reader": "Dr Reader"})
    assert dict(rep.patient) == typed
    assert json.loads(rep.to_json())["patient"] == typed
    assert all(rep.csv_row()[k] == v for k, v in typed.items())
    _, text = _pdf_text(render_pdf(rep, *images))
    for label, value in (("Patient ID", "P-0815"), ("Accession", "A-77"), ("Date of birth", "2012-05-01"),
                         ("Study date", "2025-03-01"), ("Reader", "Dr Reader")):
        assert f"{label}: {value}" in text, label
    blank = AssessmentReport.from_prediction(_prediction(), None, "v3", patient={"patient_id": " ", "reader": ""})
    assert blank.patient == () and "Patient ID" not in _pdf_text(render_pdf(blank))[1]
    with pytest.raises(ValueError, match="patient fields"):
        AssessmentReport.from_prediction(_prediction(), None, "v3", patient={"name": "Doe^Jane"})


def test_the_readout_explanation_is_in_every_export(report, readout):
    assert readout.explanation in report.to_json() and report.csv_row()["clinical_explanation"] == readout.explanation
    assert any(readout.explanation in line for line in report.readout_lines())


def test_heatmap_png_has_a_colour_scale(images):
    gray, overlay = images
    png = Image.open(io.BytesIO(heatmap_png_with_colorbar(overlay, "125 months", "F")))
    rgb = np.asarray(png.convert("RGB")).astype(int)
    assert png.format == "PNG" and png.height > png.width  # portrait hand plus the colour bar under it
    blue = (rgb[..., 2] > 100) & (rgb[..., 0] < 60) & (rgb[..., 1] < 60)
    assert blue.sum() > 50  # the jet bar's low end: the overlay itself holds no blue


def test_report_refuses_bad_sex_and_identity_tags():
    base = dict(name="x", bone_age_months=1.0, interval_low=None, interval_high=None, interval_level=None,
                stage_name="s", stage_source=STAGE_FROM_HEAD, model_version="v", timestamp="t")
    with pytest.raises(ValueError, match="sex"):
        AssessmentReport(sex="female", **base)
    with pytest.raises(ValueError, match="study tags"):
        AssessmentReport(sex="F", study=(("PatientName", PATIENT),), **base)


def test_study_identifiers_and_timestamp():
    assert study_identifiers(None) == ()
    assert study_identifiers({"StudyDate": "", "AccessionNumber": " A1 "}) == (("AccessionNumber", "A1"),)
    assert utc_timestamp(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05+00:00"


def test_study_identifiers_from_a_real_dicom_dataset(dicom_from, fullres_sample):
    import pydicom

    data = dicom_from(fullres_sample, PatientName=PATIENT, PatientBirthDate="20140101", StudyDate="20240131",
                      AccessionNumber="ACC-9", StudyInstanceUID="1.2.3.4")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert dict(study_identifiers(ds)) == {"StudyInstanceUID": "1.2.3.4", "AccessionNumber": "ACC-9",
                                           "StudyDate": "20240131"}
    rep = AssessmentReport.from_prediction(_prediction(), None, "v3", dicom=ds)
    assert PATIENT not in rep.to_json() and PATIENT not in _pdf_text(render_pdf(rep))[1]


def test_an_interval_is_shown_in_the_same_whole_months_everywhere():
    """19.46 is 19.5 in the CSV, so 20 on the Batch page's table; the report text and the Assess page round the same
    one-decimal bound, never the raw one (which would give 19)."""
    from app.tables import for_people
    from boneage_core.report import whole_months_range

    report = AssessmentReport.from_prediction(_prediction(interval=SimpleNamespace(low=19.46, high=40.44, level=0.9)),
                                              None, "v1")
    row = report.csv_row()
    assert (row["interval_low_months"], row["interval_high_months"]) == (19.5, 40.4)
    assert whole_months_range(19.46, 40.44) == "20–40" and report.interval_text == "90% interval 20–40 months"
    assert whole_months_range(20.46, 21.44) == "21–21"  # 20.5 in the CSV: half up, not Python's half-to-even 20
    table = for_people(pd.DataFrame([{**row, "file": "x.png", "error": ""}]))
    assert table.loc[0, "90 % interval (months)"] == "20–40"
