"""Batch assessment: many radiographs at once, one results row per file (errors included), CSV download.

Sex comes from a patient CSV (id, sex, optional chronological_age_months) or the DICOM header; a file
without one is reported as "sex missing" and not scored.
"""

from __future__ import annotations

import io
import logging

import pandas as pd
import streamlit as st

from app import state
from app.tables import for_machines, for_people
from boneage_core.batch import CHRONO_COLUMN, BatchSetupError, Patient, patient_for, read_patient_table
from boneage_core.predictor import Predictor
from boneage_core.imaging import ACCEPTED
from boneage_core.report import DISCLAIMER
from boneage_core.vocab import sex_code

logger = logging.getLogger(__name__)

def _patient_table() -> dict[str, Patient] | None:
    """The optional patient CSV as {id: Patient}; None (with an error shown) when it is malformed."""
    upload = st.file_uploader(f"CSV with columns id, sex (M/F) and optionally {CHRONO_COLUMN} "
                              "(id = file name with or without extension)", type=["csv"], key="batch_sex_csv")
    if upload is None:
        return {}
    try:
        table = read_patient_table(io.BytesIO(upload.getvalue()), upload.name)
    except BatchSetupError as exc:
        st.error(f"Patient CSV not used: {exc}")
        return None
    st.caption(f"Patient CSV: {len(table)} ids.")
    return table


def _row(predictor: Predictor, name: str, data: bytes, patient: Patient) -> dict:
    """One results row: the report's CSV row (boneage_core.assess), or the reason the file was not scored."""
    base = {"file": name, "sex": "" if patient.male is None else sex_code(patient.male),
            "sex_from": patient.sex_from}
    if patient.male is None:
        return {**base, "error": patient.sex_error or "sex missing"}
    table, _ = state.get_reference()
    try:
        report = state.assessment(predictor, data, name, patient.male, patient.chronological_age_months, table).report
    except ValueError as exc:  # unreadable image, not a hand
        return {**base, "error": str(exc)}
    except Exception as exc:  # one bad file must not stop the batch
        logger.error("Batch prediction failed for %s", name, exc_info=exc)
        return {**base, "error": "unexpected internal error (see the server log)"}
    row = report.csv_row()
    row.pop("name")
    return {**base, **row, "error": ""}


def _results(uploads, table: dict[str, Patient]) -> pd.DataFrame | None:
    """The batch's results, computed on the button and kept while the files and the table stay the same."""
    jobs = [(u.name, u.getvalue()) for u in uploads]
    patients = [patient_for(name, table, data) for name, data in jobs]
    signature = (tuple((state.file_digest(data), name) for name, data in jobs), tuple(patients))
    stored = st.session_state.get("batch_result")
    if stored is not None and stored[0] == signature:
        return stored[1]
    missing = sum(p.male is None for p in patients)
    if missing:
        st.warning(f"{missing} of {len(jobs)} file(s) have no usable sex (not in the CSV, no DICOM PatientSex): "
                   "they will be reported, not scored.")
    if not st.button(f"Assess {len(jobs)} file(s)", key="batch_run", type="primary"):
        return None
    predictor = state.predictor_or_none()
    if predictor is None:
        return None
    progress = st.progress(0.0, text="Starting…")
    rows = []
    for i, ((name, data), patient) in enumerate(zip(jobs, patients), start=1):
        progress.progress((i - 1) / len(jobs), text=f"{i}/{len(jobs)}: {name}")
        rows.append(_row(predictor, name, data, patient))
    progress.progress(1.0, text=f"Done: {len(jobs)} file(s)")
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
    st.session_state["batch_result"] = (signature, frame)
    return frame


def main() -> None:
    st.title("Batch assessment")
    st.caption(f"Bone age and stage for many radiographs at once (no Grad-CAM). {DISCLAIMER}")
    uploads = st.file_uploader(f"Radiographs ({ACCEPTED})", type=state.IMAGE_TYPES,
                               accept_multiple_files=True, key="batch_uploads")
    table = _patient_table()
    if not uploads:
        st.info("Upload one or more radiographs to start. Each needs its sex: give a CSV with columns id and sex "
                "(DICOM files may carry PatientSex).")
        return
    if table is None:
        return
    results = _results(uploads, table)
    if results is None:
        return
    failed = int((results["error"] != "").sum())
    if failed:
        st.warning(f"{failed} of {len(results)} file(s) were not assessed; see the error column.")
    else:
        st.success(f"All {len(results)} file(s) assessed.")
    st.dataframe(for_people(results), hide_index=True, key="batch_table")
    st.download_button("Results (CSV)", for_machines(results).to_csv(index=False), "boneage_batch.csv", "text/csv",
                       key="batch_dl_csv", on_click="ignore")


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Batch page failed")
    st.error("Something went wrong with this batch. The details are in the server log.")
