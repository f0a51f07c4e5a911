"""The Batch page: real radiographs, a broken file and one without sex; a patient CSV with ages; one row per file."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from app import state
from boneage_core.batch import BatchSetupError, Patient, patient_for, read_patient_table
from boneage_core.clinical import gp_zscore, load_reference
from boneage_core.report import whole_months_range


def test_empty_batch_page_runs(open_page):
    at = open_page("batch")
    assert at.info and not at.error and not at.dataframe


def test_batch_reports_missing_sex_and_scores_the_rest(fullres_dir, sample_label, gp_table, open_page):
    paths = sorted(fullres_dir.glob("*.png"))[:3]
    assert len(paths) == 3, "need three full-size samples"
    (age0, male0), (_, male1) = sample_label(paths[0].stem), sample_label(paths[1].stem)
    csv = (f"id,sex,chronological_age_months\n{paths[0].stem},{'M' if male0 else 'F'},{age0:g}\n"
           f"{paths[1].name},{'male' if male1 else 'female'},\n").encode()
    files = [(p.name, p.read_bytes(), "image/png") for p in paths] + [("broken.png", b"not an image", "image/png")]
    at = open_page("batch")
    at.file_uploader(key="batch_uploads").set_value(files)
    at.file_uploader(key="batch_sex_csv").set_value(("patients.csv", csv, "text/csv")).run()
    at.button(key="batch_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    shown = at.dataframe[0].value
    # what a clinician scans first, in the first columns
    assert list(shown.columns[:8]) == ["File", "Bone age (months)", "90 % interval (months)", "Stage", "Category",
                                       "z (interval)", "Warnings", "Error"]
    table = shown.set_index("File")
    assert list(table.index) == [p.name for p in paths] + ["broken.png"]
    # no sex -> reported, not scored (no batch default)
    for name in (paths[2].name, "broken.png"):
        assert table.loc[name, "Error"] == "sex missing" and pd.isna(table.loc[name, "Bone age (months)"])
    predictor = state.get_predictor(str(state.artifacts_dir()))
    for path, male in ((paths[0], male0), (paths[1], male1)):
        pred = predictor.predict(path, male=male)
        row = table.loc[path.name]
        assert row["Error"] == "" and row["Sex"] == ("M" if male else "F")
        assert row["Bone age (months)"] == round(pred.bone_age_months)
        assert row["Stage"] == pred.stage_name  # a name, not an integer code
        # whole months, rounded from the report row's one-decimal months (report.py), as the CSV holds them: 19.456
        # is 19.5 there and 20 on screen
        assert row["90 % interval (months)"] == whole_months_range(pred.interval.low, pred.interval.high)
    pred0 = predictor.predict(paths[0], male=male0)
    interval = pred0.interval or (pred0.bone_age_months,) * 2
    readout = gp_zscore(pred0.bone_age_months, interval, age0, male0, load_reference(gp_table))
    # to two decimals from the report row's three (report.py), as the CSV holds them: 1.5654 is 1.565 there and 1.56
    # on screen
    z_score, z_low, z_high = (round(z, 3) for z in (readout.z_score, readout.z_low, readout.z_high))
    assert table.loc[paths[0].name, "z (interval)"] == f"{z_score:+.2f} ({z_low:+.2f} to {z_high:+.2f})"
    assert table.loc[paths[0].name, "Category"] == readout.category
    assert table.loc[paths[1].name, "z (interval)"] == "", "no age given -> no z"
    assert [b.key for b in at.download_button] == ["batch_dl_csv"]


def test_malformed_patient_csv_is_reported(open_page):
    at = open_page("batch")
    at.file_uploader(key="batch_uploads").set_value([("broken.png", b"xx", "image/png")])
    at.file_uploader(key="batch_sex_csv").set_value(("sex.csv", b"name,gender\na,b\n", "text/csv")).run()
    assert not at.exception
    assert at.error and "sex.csv" in at.error[0].value
    assert not at.dataframe


def test_read_patient_table():
    table = read_patient_table(io.BytesIO(b"id,sex,chronological_age_months\n12,M,100\n13,female,\n14,,\n"), "p.csv")
    assert table["12"] == Patient(True, "csv", None, 100.0)
    assert table["13"] == Patient(False, "csv", None, None)
    assert table["14"].male is None and table["14"].sex_error == "sex missing"
    assert patient_for("12.png", table).male is True
    assert patient_for("99.png", table) == Patient(None, "", "sex missing")


@pytest.mark.parametrize("csv,match", [(b"id,sex\n12,M\n12,F\n", "twice"), (b"id,sex\n,M\n", "no id"),
                                       (b"name,sex\n12,M\n", "needs columns id, sex"),
                                       (b"id,sex,chronological_age_months\n12,M,ten\n", "not a number")])
def test_read_patient_table_refuses_ambiguous_rows(csv, match):
    with pytest.raises(BatchSetupError, match=match):
        read_patient_table(io.BytesIO(csv), "p.csv")


def test_sex_comes_from_the_table_then_dicom(fullres_sample, dicom_from):
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20100115", StudyDate="20200115")
    assert patient_for("a.dcm", {"a": Patient(False, "csv")}, data).male is False
    from_dicom = patient_for("b.dcm", {}, data)
    assert (from_dicom.male, from_dicom.sex_from) == (True, "dicom")
    assert from_dicom.chronological_age_months == pytest.approx(3652 / 30.4375)
    assert patient_for("c.png", {}, fullres_sample.read_bytes()).male is None

