"""Assess one radiograph: bone age, stage, Grad-CAM and (with a chronological age) the Greulich-Pyle read-out.

Sex is required and never defaulted. Every film is a new patient: the patient inputs (sex, age, dates, IDs) are
widgets keyed by the film (app.options.patient_key), so a browser cannot carry one child's choices over to the next;
only the film's own DICOM header may fill them, and the page says so.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from app import state
from app.options import (ACCESSION, AGE_MODE, AGE_MODES, AGE_MONTHS, AGE_YEARS, BIRTH_DATE, PATIENT_ID, PATIENT_STATE,
                         READER, SEX, SEXES, STUDY_DATE, patient_key)
from boneage_core.assess import Reference, run_assessment
from boneage_core.clinical import DATE_HELP, NORMAL, RULE_TEXT, age_from_years_months, chronological_age_months, parse_date
from boneage_core.heads import AGE, get_head
from boneage_core.imaging import ACCEPTED, read_dicom_info
from boneage_core.plots import stage_probability_figure
from boneage_core.predictor import Prediction, Predictor, overlay_heatmap
from boneage_core.report import (DISCLAIMER, REFERENCE_NAME, AssessmentReport, heatmap_png_with_colorbar, render_pdf,
                                 whole_months_range, years_months)
from boneage_core.spreadsheet import spreadsheet_safe_row

logger = logging.getLogger(__name__)

_DIGEST_KEY, _DICOM_KEY = "assess_digest", "assess_from_dicom"
#: The patient of an empty uploader.
NO_FILM = "none"


def _key(name: str) -> str:
    """The widget key of a patient input for the film now uploaded."""
    return patient_key(name, st.session_state.get(PATIENT_STATE, NO_FILM))


def _new_patient(data: bytes | None, name: str) -> None:
    """On a different file (or its removal): a new patient, whose inputs start empty but for its DICOM tags."""
    digest = state.file_digest(data) if data else None
    if digest == st.session_state.get(_DIGEST_KEY):
        return
    st.session_state[_DIGEST_KEY] = digest
    st.session_state[PATIENT_STATE] = digest[:16] if digest else NO_FILM
    st.session_state.pop(_DICOM_KEY, None)
    if not data:
        return
    try:
        info = read_dicom_info(data, name)
    except ValueError as exc:  # unreadable DICOM: predict() reports it
        logger.info("No DICOM tags from %s: %s", name, exc)
        return
    filled = {}
    if info is not None and info.male is not None:
        filled[SEX] = SEXES[int(info.male)]
    if info is not None and info.chronological_age_months is not None:
        filled.update({AGE_MODE: AGE_MODES[2], BIRTH_DATE: info.birth_date.isoformat(),
                       STUDY_DATE: info.study_date.isoformat()})
    st.session_state.update({_key(k): v for k, v in filled.items()})
    st.session_state[_DICOM_KEY] = filled


def _from_dicom(name: str) -> bool:
    """Whether a patient input still holds the value its file's DICOM header gave it."""
    filled = st.session_state.get(_DICOM_KEY) or {}
    return name in filled and st.session_state.get(_key(name)) == filled[name]


def _sex() -> bool | None:
    choice = st.radio("Sex (required)", SEXES, index=None, key=_key(SEX), horizontal=True,
                      help="The estimate depends on the sex; it is never guessed, and never kept from the last film.")
    if _from_dicom(SEX):
        st.caption("Sex: from DICOM (PatientSex).")
    return None if choice is None else choice == SEXES[1]


@dataclass(frozen=True)
class TypedAge:
    """The chronological age typed on the page: months, or why it cannot be used; the typed dates for the report."""

    months: float | None = None
    problem: str | None = None
    dates: dict[str, str] = field(default_factory=dict)  # birth_date / study_date (ISO) when both read as dates


def _chronological_age() -> TypedAge:
    mode = st.radio("Chronological age (optional, for the z-score)", AGE_MODES, key=_key(AGE_MODE), horizontal=True)
    if mode == AGE_MODES[1]:
        return _years_and_months()
    if mode == AGE_MODES[2]:
        return _dates()
    return TypedAge()


def _refused(exc: ValueError) -> TypedAge:
    st.error(f"Chronological age: {exc}.")
    return TypedAge(problem=str(exc))


def _years_and_months() -> TypedAge:
    c1, c2 = st.columns(2)
    years = c1.number_input("Years", value=None, step=1, key=_key(AGE_YEARS), placeholder="years")
    months = c2.number_input("Months", value=None, step=1, key=_key(AGE_MONTHS), placeholder="0")
    if years is None:
        st.caption("Type the years and press Enter (or click elsewhere) to compare with the reference.")
        return TypedAge()
    try:
        return TypedAge(age_from_years_months(years, months))
    except ValueError as exc:
        return _refused(exc)


def _dates() -> TypedAge:
    c1, c2 = st.columns(2)
    birth = c1.text_input("Date of birth", key=_key(BIRTH_DATE), placeholder="YYYY-MM-DD")
    study = c2.text_input("Study date", key=_key(STUDY_DATE), placeholder="YYYY-MM-DD")
    if _from_dicom(BIRTH_DATE) and _from_dicom(STUDY_DATE):
        st.caption("Dates: from DICOM (PatientBirthDate, StudyDate).")
    if not birth.strip() or not study.strip():
        st.caption(f"Type both dates as {DATE_HELP} and press Enter to compare with the reference.")
        return TypedAge()
    try:
        born, taken = parse_date(birth, "date of birth"), parse_date(study, "study date")
        return TypedAge(chronological_age_months(born, taken), None,
                        {"birth_date": born.isoformat(), "study_date": taken.isoformat()})
    except ValueError as exc:
        return _refused(exc)


def _filing_details() -> dict[str, str]:
    """Optional patient ID, accession and reader for the report (never required, never logged)."""
    with st.expander("Report details (optional): patient ID, accession, reader"):
        c1, c2, c3 = st.columns(3)
        details = {"patient_id": c1.text_input("Patient ID", key=_key(PATIENT_ID)),
                   "accession": c2.text_input("Accession", key=_key(ACCESSION)),
                   "reader": c3.text_input("Reader", key=READER)}
        st.caption("Printed on the PDF and written to the JSON and CSV only; never stored or logged by the app.")
    return details


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def _headline(pred: Prediction, predictor: Predictor) -> None:
    c1, c2 = st.columns(2)  # two numbers a row: neither is cut off at 1024 px
    if pred.bone_age_months is not None:
        c1.metric("Bone age", f"{int(round(pred.bone_age_months))} months", border=True)
        c2.metric("In years and months", pred.years_months, border=True)
    else:
        c1.info("No bone-age head loaded: bone age in months is unavailable.")
    with st.container(border=True):  # markdown wraps: a long stage name is never cut off
        st.caption(f"Developmental stage (from the {pred.stage_source})")
        st.subheader(pred.stage_name, anchor=False)
        st.caption(f"Bone age {predictor.scheme.range_text(pred.stage, pred.male)} for "
                   f"{'boys' if pred.male else 'girls'}")
    if pred.interval is not None:
        iv = pred.interval
        st.markdown(
            f"**Uncertainty: {iv.level:.0%} interval {whole_months_range(iv.low, iv.high)} months.** "
            f"A {iv.method} interval "
            f"calibrated on {iv.n_reference} validation radiographs the model never trained on; its width follows "
            "the model's error at this age. Coverage on the holdout, by age group: Model performance page.")
    for warning in pred.warnings:  # the same warnings the PDF, JSON and CSV carry
        st.warning(_sentence(warning))


def _stage_and_input(pred: Prediction, predictor: Predictor) -> None:
    left, right = st.columns([1, 2])
    with left:
        st.subheader("What the model saw")
        st.image(pred.model_input, clamp=True, width="stretch",
                 caption=f"{pred.model_input.shape[1]}×{pred.model_input.shape[0]} px model input")
    with right:
        st.subheader("Stage probabilities")
        if pred.stage_probabilities:
            st.plotly_chart(stage_probability_figure(pred.stage_probabilities, pred.stage_name),
                            key="assess_stage_chart")
        else:
            st.caption(f"No stage head loaded: the stage shown is the one of the {pred.stage_source}.")


def _gradcam(pred: Prediction, predictor: Predictor, data: bytes):
    """The Grad-CAM section; returns (screen-size overlay, head label), or None when nothing was explained."""
    st.subheader("Where the model looked (Grad-CAM)")
    heads = sorted(predictor.heads, key=lambda h: h != AGE)
    c1, c2 = st.columns(2)
    head = c1.radio("Explain", heads, format_func=lambda h: get_head(h).label, key="assess_cam_head",
                    horizontal=True)
    alpha = c2.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="assess_cam_alpha")
    with st.spinner("Computing Grad-CAM…"):
        explanation = state.cached_explanation(predictor, data, pred, head)
    if explanation.is_blank:
        st.info("Grad-CAM found no region that raised this output (its map is empty): nothing to highlight.")
    shown = state.display_image(pred.original)  # screen-sized copies: fast to blend and to send
    overlay = overlay_heatmap(shown, state.display_image(explanation.heatmap, like=shown), alpha)
    label = get_head(head).label
    left, right = st.columns(2)
    left.image(shown, clamp=True, width="stretch", caption="Original")
    right.image(overlay, width="stretch", caption=f"Grad-CAM of the {label} head")
    st.caption("Red areas contributed most to the output. Grad-CAM is a coarse, model-specific hint, "
               "not a finding: it can highlight image borders or labels.")
    return overlay, label


def _reference(pred: Prediction, age: TypedAge) -> Reference:
    """The Greulich-Pyle table a read-out is made with: the one found, else an uploaded CSV (asked for here); None
    when no read-out is asked for or nothing was uploaded."""
    if age.months is None or pred.bone_age_months is None:
        return None
    table, _ = state.get_reference()
    if table is not None:
        return table
    upload = st.file_uploader("Greulich-Pyle reference CSV (columns sex, chronological_age_months, "
                              "mean_bone_age_months, sd_months)", type=["csv"], key="assess_reference_upload")
    if upload is None:
        return None
    table, _ = state.get_reference(upload.getvalue())
    return table if table is not None else io.BytesIO(upload.getvalue())  # assess says why it can't be read


def _clinical(pred: Prediction, report: AssessmentReport, age: TypedAge) -> None:
    """The read-out the assessment made (report.readout), or why there is none."""
    if age.problem is not None:
        st.warning(f"No read-out: the chronological age cannot be used ({age.problem}).")
        return
    if age.months is None:
        st.info("Give a chronological age above to compare the bone age with the reference.")
        return
    if pred.bone_age_months is None:
        st.info("The clinical read-out needs a bone-age head, which is not loaded.")
        return
    readout = report.readout
    if readout is None:
        st.warning(f"The clinical read-out is unavailable: {report.readout_note}")
        return
    c1, c2 = st.columns(2)  # a 2 x 2 grid: every number fits at 1024 px
    c1.metric("Chronological age", f"{readout.chronological_age_months:.1f} months",
              help=years_months(readout.chronological_age_months))
    c2.metric("z-score", f"{readout.z_score:+.2f}")
    c1.metric("z interval", f"{readout.z_low:+.2f} to {readout.z_high:+.2f}",
              help="z of the ends of the bone-age interval" if pred.interval is not None else
              "no prediction interval: both ends are the point estimate")
    c2.metric("Expected bone age", f"{readout.expected_bone_age_months:.0f} months",
              help=f"SD {readout.sd_months:.1f} months, for a {'boy' if pred.male else 'girl'} of this age")
    shout = st.success if readout.category == NORMAL else st.warning
    shout(f"Category: **{readout.category}**: {readout.explanation}. Bone age "
          f"{readout.bone_age_months:.0f} months vs expected {readout.expected_bone_age_months:.0f} months "
          f"(SD {readout.sd_months:.1f}) for a {'boy' if pred.male else 'girl'} of this age ({REFERENCE_NAME}).")
    st.caption(f"Rule: {RULE_TEXT}.")


def _downloads(pred: Prediction, report: AssessmentReport, overlay, head_label: str | None) -> None:
    st.subheader("Download")
    stem = pred.name.rsplit(".", 1)[0] or "result"
    thumbnail = state.display_image(pred.original)
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("Report (PDF)", lambda: render_pdf(report, thumbnail, overlay), f"{stem}_boneage.pdf",
                       "application/pdf", key="assess_dl_pdf", on_click="ignore", type="primary")
    c2.download_button("Result (JSON)", report.to_json(), f"{stem}_boneage.json", "application/json",
                       key="assess_dl_json", on_click="ignore")
    c3.download_button("Result (CSV)", pd.DataFrame([spreadsheet_safe_row(report.csv_row())]).to_csv(index=False), f"{stem}_boneage.csv",
                       "text/csv", key="assess_dl_csv", on_click="ignore")
    if overlay is not None:
        c4.download_button(
            "Heatmap (PNG)", lambda: heatmap_png_with_colorbar(overlay, report.bone_age_text, report.sex,
                                                                f"Grad-CAM, {head_label} head"),
            f"{stem}_gradcam.png", "image/png", key="assess_dl_png", on_click="ignore")
    st.caption(f"Model version {report.model_version}. The files carry no patient name; from a DICOM header only "
               "study identifiers; a patient ID, dates or reader only when typed above.")


def main() -> None:
    st.title("Assess a radiograph")
    st.caption(f"Left-hand radiograph → bone age, developmental stage and Grad-CAM. {DISCLAIMER}")
    upload = st.file_uploader(f"Hand radiograph ({ACCEPTED})", type=state.IMAGE_TYPES,
                              key="assess_upload")
    predictor = state.predictor_or_none()  # loaded when the page opens (with a spinner), not on the first upload
    data = upload.getvalue() if upload is not None else None
    _new_patient(data, upload.name if upload is not None else "")
    if upload is None:
        st.info("Upload a radiograph to start; then choose the sex. Each new film starts a new patient. The models "
                "were trained on left-hand radiographs of children (RSNA 2017).")
        return
    c1, c2 = st.columns([1, 2])
    with c1:
        male = _sex()
    with c2:
        age = _chronological_age()
    details = _filing_details()
    if male is None:
        st.info("Choose the patient's sex to get an estimate: bone age is read against sex-specific standards, "
                "so it is never guessed.")
        return
    if predictor is None:
        return
    try:
        with st.spinner("Predicting…"):
            pred = state.cached_prediction(predictor, data, upload.name, male)
    except ValueError as exc:  # InputError / ImageLoadError: a message meant for the user, and no number
        st.error(f"Not assessed: {exc}")
        return
    st.divider()
    _headline(pred, predictor)
    for note in dict.fromkeys(predictor.notes):
        st.info(note)
    _stage_and_input(pred, predictor)
    overlay, head_label = None, None
    try:
        overlay, head_label = _gradcam(pred, predictor, data)
    except ValueError as exc:
        st.error(f"Grad-CAM failed: {exc}")
    st.subheader(f"Clinical read-out ({REFERENCE_NAME})")
    # the page's inputs (the DICOM's dates are in them, prefilled) and its cached prediction, read out by assess
    report = run_assessment(predictor, data, male, chronological_age_months=age.months, name=upload.name,
                            reference=_reference(pred, age), patient={**details, **age.dates}, prediction=pred,
                            age_from_dicom=False).report
    _clinical(pred, report, age)
    _downloads(pred, report, overlay, head_label)


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Assess page failed")
    st.error("Something went wrong while assessing this image. The details are in the server log; "
             "please try another file.")
