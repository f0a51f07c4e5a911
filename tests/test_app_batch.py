"""The Batch page: several real radiographs plus a broken file, a per-id sex CSV, one row per file."""

from __future__ import annotations


import pytest

import dashboard


def test_empty_batch_page_runs(open_page):
    at = open_page("batch")
    assert any("Upload one or more" in i.value for i in at.info)
    assert not at.error


def test_batch_of_real_and_broken_files(fullres_dir, open_page):
    paths = sorted(fullres_dir.glob("*.png"))[:2]
    assert len(paths) == 2, "need two full-size samples"
    files = [(p.name, p.read_bytes(), "image/png") for p in paths] + [("broken.png", b"not an image", "image/png")]
    at = open_page("batch")
    at.file_uploader(key="batch_uploads").set_value(files)
    at.file_uploader(key="batch_sex_csv").set_value(("sex.csv", f"id,sex\n{paths[1].stem},M\n".encode(), "text/csv"))
    at.radio(key="batch_sex").set_value("Female")
    at.run()
    at.button(key="batch_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["file"]) == [p.name for p in paths] + ["broken.png"]
    ok = table[table["error"] == ""]
    assert len(ok) == 2 and ok["bone_age_months"].between(0, 240).all()
    assert table.set_index("file").loc["broken.png", "error"], "the broken file must carry an error message"
    assert list(table["sex"]) == ["F", "M", "F"]
    assert list(table["sex_from"]) == ["batch default", "CSV", "batch default"]
    # the table is the library's output for the same file and sex
    predictor = dashboard.get_predictor(str(dashboard.artifacts_dir()))
    expected = predictor.predict(paths[1], male=True).bone_age_months
    assert ok.iloc[1]["bone_age_months"] == pytest.approx(expected, abs=0.01)
    assert any("1 of 3" in w.value for w in at.warning)
    assert any("use the batch sex" in w.value and paths[0].name in w.value for w in at.warning)
    assert [b.label for b in at.download_button] == ["Results (CSV)"]


def test_malformed_sex_csv_is_reported(open_page):
    at = open_page("batch")
    at.file_uploader(key="batch_uploads").set_value([("broken.png", b"xx", "image/png")])
    at.file_uploader(key="batch_sex_csv").set_value(("sex.csv", b"name,gender\na,b\n", "text/csv")).run()
    assert not at.exception
    assert at.error and "id and sex" in at.error[0].value


def test_parse_sex_table():
    assert dashboard.parse_sex_table(b"id,sex\n12,M\n13,female\n") == {"12": True, "13": False}
    with pytest.raises(ValueError):
        dashboard.parse_sex_table(b"id,sex\n12,X\n")
    assert dashboard.sex_for("12.png", {"12": True}, False) == (True, "CSV")
    assert dashboard.sex_for("99.png", {"12": True}, False) == (False, "batch default")


@pytest.mark.parametrize("csv,match", [(b"id,sex\n12,M\n12,F\n", "both sexes"), (b"id,sex\n,M\n", "without an id"),
                                       (b"name,sex\n12,M\n", "needs columns id and sex")])
def test_parse_sex_table_refuses_ambiguous_rows(csv, match):
    with pytest.raises(ValueError, match=match):
        dashboard.parse_sex_table(csv)


def test_sex_comes_from_csv_then_dicom_then_default(fullres_sample, dicom_from):
    data = dicom_from(fullres_sample, PatientSex="M")
    assert dashboard.sex_for("a.dcm", {"a": False}, default=False, data=data) == (False, "CSV")
    assert dashboard.sex_for("b.dcm", {}, default=False, data=data) == (True, "DICOM")
    assert dashboard.sex_for("c.png", {}, default=True, data=fullres_sample.read_bytes()) == (True, "batch default")
