"""Assess one radiograph: bone age, stage, Grad-CAM and (with a chronological age) the Greulich-Pyle read-out."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pandas as pd
import streamlit as st

import dashboard
from boneage_core.clinical import Z_LIMIT, ClinicalReadout, ReferenceError, chronological_age_months, gp_zscore
from boneage_core.imaging import read_dicom_info
from boneage_core.plots import stage_probability_figure
from boneage_core.predictor import Prediction, Predictor, overlay_heatmap

logger = logging.getLogger(__name__)

SEXES = ("Female", "Male")
AGE_MODES = ("Not given", "Years and months", "Date of birth and study date")
TARGET_LABELS = {"regressor": "Bone-age regressor", "classifier": "Stage classifier"}


def _defaults() -> None:
    today = dt.date.today()
    ten_years_ago = dt.date(today.year - 10, today.month, min(today.day, 28))  # 29 February safe
    for key, value in (("assess_sex", SEXES[0]), ("assess_age_mode", AGE_MODES[0]), ("assess_age_years", 10),
                       ("assess_age_months", 0), ("assess_birth_date", ten_years_ago),
                       ("assess_study_date", today)):
        st.session_state.setdefault(key, value)


def _prefill_from_dicom(data: bytes, name: str) -> None:
    """Once per DICOM upload: take sex and dates from its tags into the widgets below."""
    digest = dashboard.file_digest(data)
    if st.session_state.get("assess_prefilled") == digest:
        return
    st.session_state["assess_prefilled"] = digest
    st.session_state.pop("assess_prefill_note", None)  # a note from an earlier upload no longer applies
    try:
        info = read_dicom_info(data, name)
    except ValueError as exc:  # unreadable DICOM: predict() will report it
        logger.info("No DICOM tags from %s: %s", name, exc)
        return
    if info is None:
        return
    filled = []
    if info.male is not None:
        st.session_state["assess_sex"] = SEXES[int(info.male)]
        filled.append("sex")
    if info.chronological_age_months is not None:
        st.session_state["assess_age_mode"] = AGE_MODES[2]
        st.session_state["assess_birth_date"] = info.birth_date
        st.session_state["assess_study_date"] = info.study_date
        filled.append("date of birth and study date")
    st.session_state["assess_prefill_note"] = (
        f"Filled in from the DICOM header: {', '.join(filled)}." if filled else None)


def _chronological_age() -> float | None:
    """Chronological age in months from the inputs, or None when not given."""
    mode = st.radio("Chronological age", AGE_MODES, key="assess_age_mode", horizontal=True)
    if mode == AGE_MODES[1]:
        c1, c2 = st.columns(2)
        years = c1.number_input("Years", min_value=0, max_value=25, step=1, key="assess_age_years")
        months = c2.number_input("Months", min_value=0, max_value=11, step=1, key="assess_age_months")
        return float(years) * 12 + float(months)
    if mode == AGE_MODES[2]:
        c1, c2 = st.columns(2)
        birth = c1.date_input("Date of birth", key="assess_birth_date", min_value=dt.date(1900, 1, 1),
                              format="YYYY-MM-DD")
        study = c2.date_input("Study date", key="assess_study_date", min_value=dt.date(1900, 1, 1),
                              format="YYYY-MM-DD")
        try:
            return chronological_age_months(birth, study)
        except ValueError as exc:
            st.error(str(exc))
    return None


def _headline(pred: Prediction, predictor: Predictor) -> None:
    c1, c2, c3 = st.columns(3)
    if pred.bone_age_months is not None:
        c1.metric("Predicted bone age", f"{pred.bone_age_months:.1f} months", border=True)
        c2.metric("In years and months", pred.years_months, border=True)
    else:
        c1.info("No regressor loaded: bone age in months is unavailable.")
    c3.metric("Developmental stage", pred.stage_name, border=True,
              help=f"Stage from the {pred.stage_source}; range for this sex: "
                   f"{predictor.scheme.range_text(pred.stage, pred.male)} of bone age")
    if pred.interval is not None:
        iv = pred.interval
        st.markdown(
            f"**Uncertainty: {iv.level:.0%} interval {iv.low:.0f}–{iv.high:.0f} months.** It spans the middle "
            f"{iv.level:.0%} of the errors the model made on the {iv.n_reference} holdout cases whose prediction "
            f"was within ±{iv.window_months:g} months of this one.")
    for warning in pred.warnings:
        st.warning(f"Check the input: {warning}.")
    if pred.stages_agree is False and pred.stage_from_age is not None:
        st.warning(
            f"The models disagree: the classifier says **{pred.stage_name}**, but the predicted bone age "
            f"falls in **{predictor.scheme.names[pred.stage_from_age]}** "
            f"({predictor.scheme.range_text(pred.stage_from_age, pred.male)}). Treat the result with caution.")


def _stage_and_input(pred: Prediction, predictor: Predictor) -> None:
    left, right = st.columns([1, 2])
    with left:
        st.subheader("What the model saw")
        st.image(pred.model_input, clamp=True, width="stretch",
                 caption=f"{pred.model_input.shape[1]}×{pred.model_input.shape[0]} px model input")
    with right:
        st.subheader("Stage")
        st.markdown(f"**{pred.stage_name}**: {predictor.scheme.range_text(pred.stage, pred.male)} of bone age "
                    f"for {'boys' if pred.male else 'girls'} (from the {pred.stage_source}).")
        if pred.stage_probabilities:
            st.plotly_chart(stage_probability_figure(pred.stage_probabilities, pred.stage_name),
                            key="assess_stage_chart")
        else:
            st.caption("No classifier loaded: the stage is derived from the predicted bone age.")


def _gradcam(pred: Prediction, predictor: Predictor, data: bytes) -> Callable[[], bytes] | None:
    """The Grad-CAM section; returns a callable making the full-resolution overlay PNG (run only on download)."""
    st.subheader("Where the model looked (Grad-CAM)")
    targets = [t for t in ("regressor", "classifier") if t in predictor.models]
    c1, c2 = st.columns(2)
    target = c1.radio("Explain", targets, format_func=TARGET_LABELS.get, key="assess_cam_target", horizontal=True)
    alpha = c2.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="assess_cam_alpha")
    with st.spinner("Computing Grad-CAM…"):
        explanation = dashboard.cached_explanation(predictor, data, pred, target)
    if explanation.is_blank:
        st.info("Grad-CAM found no region that raised this output (its map is empty), so there is nothing to "
                "highlight for this image.")
    shown = dashboard.display_image(pred.original)  # screen-sized copies: fast to blend and to send
    overlay = overlay_heatmap(shown, dashboard.display_image(explanation.heatmap, like=shown), alpha)
    left, right = st.columns(2)
    left.image(shown, clamp=True, width="stretch", caption="Original")
    right.image(overlay, width="stretch", caption=f"Grad-CAM of the {TARGET_LABELS[target].lower()}")
    st.caption("Red areas contributed most to the output. Grad-CAM is a coarse, model-specific hint, "
               "not a finding: it can highlight image borders or labels.")
    return lambda: dashboard.png_bytes(overlay_heatmap(pred.original, explanation.heatmap, alpha))


def _clinical(pred: Prediction, chrono: float | None) -> ClinicalReadout | None:
    st.subheader("Clinical read-out (Greulich-Pyle / Brush)")
    if chrono is None:
        st.info("Enter a chronological age above to compare the bone age with the reference.")
        return None
    if pred.bone_age_months is None:
        st.info("The clinical read-out needs the bone-age regressor, which is not loaded.")
        return None
    table, why = dashboard.get_reference()
    if table is None:
        upload = st.file_uploader("Greulich-Pyle reference CSV (columns sex, chronological_age_months, "
                                  "mean_bone_age_months, sd_months)", type=["csv"], key="assess_reference_upload")
        if upload is not None:
            table, why = dashboard.get_reference(upload.getvalue())
    if table is None:
        st.warning(f"The clinical read-out is unavailable: {why}. Upload the reference table above, or set "
                   "BONEAGE_GP_TABLE to its path before starting the app.")
        return None
    try:
        readout = gp_zscore(pred.bone_age_months, chrono, pred.male, table)
    except ReferenceError as exc:
        st.warning(f"The clinical read-out is unavailable: {exc}")
        return None
    c1, c2, c3 = st.columns(3)
    c1.metric("Chronological age", f"{readout.chronological_age_months:.1f} months")
    c2.metric("Bone age − chronological age", f"{readout.difference_months:+.1f} months")
    c3.metric("z-score", f"{readout.z_score:+.2f}",
              help=f"(bone age − reference mean {readout.expected_bone_age_months:.1f} m) / "
                   f"SD {readout.sd_months:.1f} m")
    message = (f"**Category: {readout.category}.** {readout.text} Rule: |z| > {Z_LIMIT:g} is reported as "
               f"advanced (z > {Z_LIMIT:g}) or delayed (z < −{Z_LIMIT:g}); otherwise within normal limits.")
    (st.success if readout.category == "within normal limits" else st.warning)(message)
    return readout


def _downloads(pred: Prediction, readout: ClinicalReadout | None, overlay_png: Callable[[], bytes] | None) -> None:
    st.subheader("Download")
    stem = pred.name.rsplit(".", 1)[0] or "result"
    c1, c2, c3 = st.columns(3)
    c1.download_button("Result (JSON)", dashboard.result_json(pred, readout), f"{stem}_boneage.json",
                       "application/json", key="assess_dl_json", on_click="ignore")
    csv = pd.DataFrame([dashboard.result_record(pred, readout)]).to_csv(index=False)
    c2.download_button("Result (CSV)", csv, f"{stem}_boneage.csv", "text/csv", key="assess_dl_csv",
                       on_click="ignore")
    if overlay_png is not None:
        c3.download_button("Grad-CAM overlay (PNG)", overlay_png, f"{stem}_gradcam.png", "image/png",
                           key="assess_dl_png", on_click="ignore")


def main() -> None:
    st.title("Assess a radiograph")
    st.caption(f"Left-hand radiograph → bone age, developmental stage and Grad-CAM. {dashboard.DISCLAIMER}")
    _defaults()
    upload = st.file_uploader("Hand radiograph (PNG, JPEG, WebP or DICOM)", type=dashboard.IMAGE_TYPES,
                              key="assess_upload")
    data = upload.getvalue() if upload is not None else None
    if data:
        _prefill_from_dicom(data, upload.name)
    c1, c2 = st.columns([1, 3])
    male = c1.radio("Sex", SEXES, key="assess_sex", horizontal=True) == "Male"
    with c2:
        chrono = _chronological_age()
    if data and st.session_state.get("assess_prefill_note"):
        st.caption(st.session_state["assess_prefill_note"])
    if upload is None:
        st.info("Upload a radiograph to start. The models were trained on left-hand radiographs of children "
                "(RSNA 2017).")
        return
    predictor = dashboard.predictor_or_none()
    if predictor is None:
        return
    try:
        with st.spinner("Predicting…"):
            pred = dashboard.cached_prediction(predictor, data, upload.name, male)
    except ValueError as exc:  # ImageLoadError included: a message meant for the user
        st.error(f"Could not assess this file. {exc}")
        return
    st.divider()
    _headline(pred, predictor)
    _stage_and_input(pred, predictor)
    overlay_png = None
    try:
        overlay_png = _gradcam(pred, predictor, data)
    except ValueError as exc:
        st.error(f"Grad-CAM failed: {exc}")
    readout = _clinical(pred, chrono)
    _downloads(pred, readout, overlay_png)


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Assess page failed")
    st.error("Something went wrong while assessing this image. The details are in the server log; "
             "please try another file.")
