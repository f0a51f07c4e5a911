"""The Assess page, driven through AppTest with real full-size radiographs, corrupt bytes and a DICOM upload."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import dashboard
from boneage_core.clinical import gp_zscore, load_reference
from boneage_core.predictor import Predictor


def _metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return values[0]


def _is_male(label: pd.Series) -> bool:
    return str(label["male"]).strip().lower() in ("true", "1", "m")


def _sample_label(fullres_dir: Path, sample_id: str) -> pd.Series:
    labels = pd.read_csv(fullres_dir / "boneage-samples.csv", dtype={"id": str})
    row = labels[labels["id"] == sample_id]
    assert len(row) == 1, f"{sample_id} not in boneage-samples.csv"
    return row.iloc[0]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The same cached Predictor the app uses (one load for the whole module)."""
    return dashboard.get_predictor(str(dashboard.artifacts_dir()))


@pytest.fixture(scope="module")
def assessed(fullres_sample: Path, fullres_dir: Path, open_page) -> tuple[AppTest, pd.Series]:
    """The Assess page after uploading the real full-size 1377.png with its recorded sex."""
    label = _sample_label(fullres_dir, fullres_sample.stem)
    at = open_page("assess")
    at.radio(key="assess_sex").set_value("Male" if _is_male(label) else "Female")
    at.file_uploader(key="assess_upload").set_value((fullres_sample.name, fullres_sample.read_bytes(), "image/png"))
    at.run()
    return at, label


def test_empty_page_runs_and_asks_for_an_upload(open_page):
    at = open_page("assess")
    assert at.file_uploader(key="assess_upload").allowed_type  # the uploader is there
    assert any("Upload a radiograph" in i.value for i in at.info)
    assert not at.error


def test_real_sample_shows_bone_age_stage_and_heatmap(assessed, predictor, fullres_sample):
    at, label = assessed
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    shown = float(_metric(at, "Predicted bone age").split()[0])
    expected = predictor.predict(fullres_sample, male=_is_male(label))
    assert shown == pytest.approx(round(expected.bone_age_months, 1), abs=0.05)
    assert 0 < shown < 240
    assert abs(shown - float(label["boneage"])) < 48, "prediction implausibly far from the radiologist's read"
    assert _metric(at, "In years and months") == expected.years_months
    assert _metric(at, "Developmental stage") == expected.stage_name
    # model input, original and Grad-CAM overlay
    assert len(at.image) >= 3
    assert any("Grad-CAM" in s.value for s in at.subheader)
    assert any("interval" in m.value for m in at.markdown), "uncertainty statement missing"
    assert {b.label for b in at.download_button} >= {"Result (JSON)", "Result (CSV)", "Grad-CAM overlay (PNG)"}


def test_opacity_slider_and_target_switch_reuse_the_prediction(assessed, monkeypatch):
    at, _ = assessed

    def refuse(*args, **kwargs):
        raise AssertionError("the model was run again")

    monkeypatch.setattr(Predictor, "predict", refuse)
    at.slider(key="assess_cam_alpha").set_value(0.8).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) >= 3
    # a different Grad-CAM target is computed once (explain) but the prediction itself is reused
    at.radio(key="assess_cam_target").set_value("classifier").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("classifier" in (img.proto.imgs[0].caption if img.proto.imgs else "") for img in at.image)


def test_clinical_readout_matches_the_reference(assessed, gp_table, predictor, fullres_sample):
    at, label = assessed
    at.radio(key="assess_age_mode").set_value("Years and months").run()
    at.number_input(key="assess_age_years").set_value(14).run()
    at.number_input(key="assess_age_months").set_value(6).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    male = _is_male(label)
    bone_age = predictor.predict(fullres_sample, male=male).bone_age_months
    expected = gp_zscore(bone_age, 14 * 12 + 6, male, load_reference(gp_table))
    assert float(_metric(at, "z-score")) == pytest.approx(expected.z_score, abs=0.006)
    alerts = [a.value for a in list(at.warning) + list(at.success)]
    assert any(f"Category: {expected.category}." in a and "|z| > 2" in a for a in alerts), alerts


def test_corrupt_upload_shows_an_error_not_a_traceback(open_page):
    at = open_page("assess")
    at.file_uploader(key="assess_upload").set_value(("broken.png", b"not an image", "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, "expected an st.error for a corrupt upload"
    assert "readable" in at.error[0].value or "image" in at.error[0].value
    assert not [m for m in at.metric if m.label == "Predicted bone age"]
    # the page keeps working: a valid image afterwards gives a result
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((300, 240)) * 255).astype(np.uint8)).save(buffer, "PNG")
    at.file_uploader(key="assess_upload").set_value(("noise.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _metric(at, "Predicted bone age")
    assert any("does not look like a radiograph" in w.value for w in at.warning)


def test_dicom_upload_prefills_sex_and_chronological_age(fullres_sample, dicom_from, open_page):
    data = dicom_from(fullres_sample, PatientSex="M", PatientBirthDate="20100115", StudyDate="20250115")
    at = open_page("assess")
    assert at.radio(key="assess_sex").value == "Female"
    at.file_uploader(key="assess_upload").set_value(("case.dcm", data, "application/dicom")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.radio(key="assess_sex").value == "Male"
    assert at.radio(key="assess_age_mode").value == "Date of birth and study date"
    days = (pd.Timestamp("2025-01-15") - pd.Timestamp("2010-01-15")).days
    assert _metric(at, "Chronological age") == f"{days / 30.4375:.1f} months"
    assert _metric(at, "Predicted bone age")


def test_missing_reference_table_is_explained_and_can_be_uploaded(fullres_sample, gp_table, tmp_path, monkeypatch, open_page):
    monkeypatch.setenv("BONEAGE_GP_TABLE", str(tmp_path / "absent.csv"))
    at = open_page("assess")
    at.file_uploader(key="assess_upload").set_value((fullres_sample.name, fullres_sample.read_bytes(), "image/png"))
    at.radio(key="assess_age_mode").set_value("Years and months").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("clinical read-out is unavailable" in w.value for w in at.warning)
    assert not [m for m in at.metric if m.label == "z-score"]
    at.file_uploader(key="assess_reference_upload").set_value(("gp.csv", gp_table.read_bytes(), "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _metric(at, "z-score")
    assert not any("unavailable" in w.value for w in at.warning)


def test_display_image_downscales_only_large_images():
    big = np.random.default_rng(0).random((2044, 1514)).astype(np.float32)
    small = dashboard.display_image(big)
    assert max(small.shape) == dashboard.DISPLAY_MAX_SIDE
    assert abs(small.shape[0] / small.shape[1] - 2044 / 1514) < 0.01  # aspect ratio kept on screen
    assert dashboard.display_image(small) is small
    assert dashboard.display_image(big, like=small).shape == small.shape
