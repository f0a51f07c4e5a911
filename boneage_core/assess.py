"""One assessment of one radiograph: prediction -> Greulich-Pyle read-out -> AssessmentReport, for every front end."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from .clinical import ReferenceError, chronological_age_months as age_between, gp_zscore, load_reference, parse_date
from .errors import InputError
from .heads import AGE
from .imaging import DicomInfo, ImageSource, read_bytes, read_dicom_info, source_name
from .predictor import Explanation, Prediction, Predictor
from .report import AssessmentReport, read_study, render_pdf
from .views import Views
from .vocab import parse_sex, sex_missing

logger = logging.getLogger(__name__)

#: What a read-out may be computed against: a loaded table, a CSV path, or None for clinical.reference_path().
Reference = pd.DataFrame | str | os.PathLike | None


@dataclass(frozen=True)
class Assessment:
    """The report of one radiograph with what it was made from: the prediction (images) and the Grad-CAM if asked."""

    report: AssessmentReport
    prediction: Prediction
    explanation: Explanation | None = None

    def pdf(self) -> bytes:
        """The one-page PDF report with the input thumbnail and (when explained) the heatmap overlay."""
        overlay = None if self.explanation is None else self.explanation.overlay
        return render_pdf(self.report, self.prediction.original, overlay)


def as_date(value: date | str | None, what: str) -> date | None:
    """A date, a date text (clinical.parse_date: YYYY-MM-DD or YYYYMMDD) or None; InputError for anything else."""
    if value is None or isinstance(value, date):
        return value
    try:
        return parse_date(str(value), what)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def chronological_age(chronological_age_months: float | None = None, birth_date: date | str | None = None,
                      study_date: date | str | None = None, dicom: DicomInfo | None = None) -> float | None:
    """The patient's age at the study in months: given, else from both dates, else from the DICOM dates, else None.

    An age and dates together, one date without the other, a negative age or a study before birth are refused.
    """
    birth, study = as_date(birth_date, "birth date"), as_date(study_date, "study date")
    if chronological_age_months is not None:
        if birth is not None or study is not None:
            raise InputError("give either the chronological age or the birth and study dates, not both")
        months = float(chronological_age_months)
        if not months >= 0:
            raise InputError(f"chronological age must be a number of months >= 0, got {chronological_age_months!r}")
        return months
    if (birth is None) != (study is None):
        raise InputError("give both the birth date and the study date (or neither)")
    if birth is not None:
        try:
            return age_between(birth, study)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    return None if dicom is None else dicom.chronological_age_months


def _dicom_info(data: bytes | None, name: str) -> DicomInfo | None:
    """The DICOM header's sex and dates (None for other files; an unreadable header is left to the prediction)."""
    if data is None:
        return None
    try:
        return read_dicom_info(data, name)
    except ValueError as exc:
        logger.info("no DICOM tags: %s", exc)
        return None


def _sex(male: object, dicom: DicomInfo | None) -> bool:
    """The given sex; when none is given, the DICOM header's PatientSex; else SexError (it is never guessed)."""
    if sex_missing(male) and dicom is not None and dicom.male is not None:
        return dicom.male
    return parse_sex(male)


def _readout(prediction: Prediction, chrono: float | None, reference: Reference):
    """(read-out, None) or (None, why there is none)."""
    if chrono is None:
        return None, None
    if prediction.bone_age_months is None:
        return None, "the models have no bone-age head"
    try:
        table = reference if isinstance(reference, pd.DataFrame) else load_reference(reference)
        interval = prediction.interval or (prediction.bone_age_months, prediction.bone_age_months)
        return gp_zscore(prediction.bone_age_months, interval, chrono, prediction.male, table), None
    except ReferenceError as exc:
        return None, str(exc)


def run_assessment(predictor: Predictor, source: ImageSource | np.ndarray, male: object, *,
                   chronological_age_months: float | None = None, birth_date: date | str | None = None,
                   study_date: date | str | None = None, reference: Reference = None, name: str | None = None,
                   explain: bool = False, views: Views | None = None,
                   patient: Mapping[str, str] | None = None, prediction: Prediction | None = None,
                   age_from_dicom: bool = True) -> Assessment:
    """Assess one image (path, bytes, binary file, gray array or DICOM bytes); see :func:`assess`.

    With explain=True the Grad-CAM of the age head (or the stage head when there is no age head) is computed too.
    `prediction` is this source's prediction for this sex when the caller has it already (a front end's cache of
    ``predictor.predict``); `age_from_dicom=False` leaves out the DICOM header's dates (a page where the user cleared
    them).
    """
    name = name or ("array" if isinstance(source, np.ndarray) else source_name(source))
    data = None if isinstance(source, np.ndarray) else read_bytes(source)
    dicom = _dicom_info(data, name)
    sex = _sex(male, dicom)
    chrono = chronological_age(chronological_age_months, birth_date, study_date, dicom if age_from_dicom else None)
    if prediction is None:
        prediction = predictor.predict(source if data is None else data, sex, views=views, name=name)
    elif prediction.male != sex:
        raise InputError(f"{name}: the given prediction is for the other sex")
    readout, note = _readout(prediction, chrono, reference)
    report = AssessmentReport.from_prediction(prediction, readout, predictor.version,
                                              dicom=None if data is None else read_study(data), patient=patient)
    if note:
        report = dataclasses.replace(report, readout_note=note)
    explanation = None
    if explain:
        head = AGE if AGE in predictor.heads else predictor.heads[0]
        explanation = predictor.explain(prediction.original, sex, head=head, class_index=prediction.stage)
    return Assessment(report, prediction, explanation)


def assess(predictor: Predictor, source: ImageSource | np.ndarray, male: object, *,
           chronological_age_months: float | None = None, birth_date: date | str | None = None,
           study_date: date | str | None = None, reference: Reference = None, name: str | None = None,
           views: Views | None = None, patient: Mapping[str, str] | None = None) -> AssessmentReport:
    """The report of one radiograph: bone age, interval, stage and, when an age is known, the G&P read-out.

    `male` is required (True/False, M/F or any spelling of vocab.SEX_HELP); None is accepted only for a DICOM
    whose header gives PatientSex (a given sex always wins). The chronological age is `chronological_age_months`,
    else birth_date + study_date (dates or ISO texts), else the DICOM header's PatientBirthDate and StudyDate.
    `reference` is the Greulich-Pyle table (DataFrame or CSV path; default clinical.reference_path()). Without an
    age the report has no read-out; with one that cannot be read out (no table, age outside it) the report says
    why in `readout_note`. `patient` holds typed filing details (report.PATIENT_FIELDS: patient ID, accession,
    dates, reader) for the report. Unreadable or non-hand images raise InputError (gate.NotARadiographError included).
    """
    return run_assessment(predictor, source, male, chronological_age_months=chronological_age_months,
                          birth_date=birth_date, study_date=study_date, reference=reference, name=name,
                          views=views, patient=patient).report
