"""Batch assessment: many radiographs at once, one results row per file (errors included), CSV download."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

import dashboard

logger = logging.getLogger(__name__)

SEXES = ("Female", "Male")


def _sex_table() -> dict[str, bool] | None:
    """The optional id,sex CSV as {id: male}; None (with an error shown) when it is malformed."""
    upload = st.file_uploader("Optional: CSV with columns id, sex (M/F) to set the sex per file "
                              "(id = file name with or without extension)", type=["csv"], key="batch_sex_csv")
    if upload is None:
        return {}
    try:
        table = dashboard.parse_sex_table(upload.getvalue())
    except ValueError as exc:
        st.error(f"Sex CSV not used: {exc}")
        return None
    st.caption(f"Sex CSV: {len(table)} ids.")
    return table


def _report_unmatched(jobs: list, table: dict[str, bool]) -> None:
    """Say which files took the batch default and which CSV ids matched no file."""
    defaulted = [upload.name for upload, _, source in jobs if source == "batch default"]
    used = {key for upload, _, _ in jobs for key in (upload.name, upload.name.rsplit(".", 1)[0])}
    unused = sorted(set(table) - used)
    if defaulted:
        st.warning(f"{len(defaulted)} file(s) are not in the sex CSV and use the batch sex: "
                   f"{', '.join(defaulted[:10])}{' …' if len(defaulted) > 10 else ''}")
    if unused:
        st.info(f"{len(unused)} id(s) in the sex CSV match no uploaded file: "
                f"{', '.join(unused[:10])}{' …' if len(unused) > 10 else ''}")


def main() -> None:
    st.title("Batch assessment")
    st.caption(f"Bone age and stage for many radiographs at once (no Grad-CAM). {dashboard.DISCLAIMER}")
    uploads = st.file_uploader("Radiographs (PNG, JPEG, WebP or DICOM)", type=dashboard.IMAGE_TYPES,
                               accept_multiple_files=True, key="batch_uploads")
    default_male = st.radio("Sex for the whole batch", SEXES, key="batch_sex", horizontal=True) == "Male"
    table = _sex_table()
    if not uploads:
        st.info("Upload one or more radiographs to start.")
        return
    if table is None:
        return
    jobs = []
    for upload in uploads:
        male, source = dashboard.sex_for(upload.name, table, default_male, upload.getvalue())
        jobs.append((upload, male, source))
    if table:
        _report_unmatched(jobs, table)
    signature = tuple((dashboard.file_digest(u.getvalue()), u.name, male) for u, male, _ in jobs)
    stored = st.session_state.get("batch_result")
    if stored is None or stored[0] != signature:
        if not st.button(f"Assess {len(jobs)} file(s)", key="batch_run", type="primary"):
            return
        predictor = dashboard.predictor_or_none()
        if predictor is None:
            return
        progress = st.progress(0.0, text="Starting…")
        rows = []
        for i, (upload, male, source) in enumerate(jobs, start=1):
            progress.progress((i - 1) / len(jobs), text=f"{i}/{len(jobs)}: {upload.name}")
            rows.append(dashboard.batch_row(predictor, upload.getvalue(), upload.name, male, source))
        progress.progress(1.0, text=f"Done: {len(jobs)} file(s)")
        stored = (signature, pd.DataFrame(rows))
        st.session_state["batch_result"] = stored
    results: pd.DataFrame = stored[1]
    failed = int((results["error"] != "").sum())
    if failed:
        st.warning(f"{failed} of {len(results)} file(s) could not be assessed; see the error column.")
    else:
        st.success(f"All {len(results)} file(s) assessed.")
    st.dataframe(results, hide_index=True, key="batch_table")
    st.download_button("Results (CSV)", results.to_csv(index=False), "boneage_batch.csv", "text/csv",
                       key="batch_dl_csv", on_click="ignore")


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Batch page failed")
    st.error("Something went wrong with this batch. The details are in the server log.")
