"""One assessment as a report: a frozen record (JSON/CSV), a one-page PDF and a heatmap PNG with its colour scale."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .clinical import RULE_TEXT, ClinicalReadout
from .vocab import FEMALE, MALE, parse_sex, sex_code

logger = logging.getLogger(__name__)

DISCLAIMER = "Research demo, not a medical device: not for diagnosis or treatment decisions."
REFERENCE_NAME = "Greulich & Pyle (Brush Foundation)"
#: DICOM tags a report may carry: study identifiers only, never patient identity (name, ID, birth date).
STUDY_TAGS = ("StudyInstanceUID", "AccessionNumber", "StudyDate")
#: Optional filing details a user may type for the report (never read from a header, never required, never logged),
#: with their labels.
PATIENT_FIELDS = {"patient_id": "Patient ID", "accession": "Accession", "birth_date": "Date of birth",
                  "study_date": "Study date", "reader": "Reader"}
#: The read-out's columns of AssessmentReport.csv_row (always there: empty without a read-out).
READOUT_COLUMNS = ("chronological_age_months", "z_score", "z_low", "z_high", "clinical_category",
                   "clinical_explanation")
#: Where a stage came from, in a report's words, keyed by Prediction.stage_source.
COLOUR_SCALE_LABEL = "low → high contribution"
HEATMAP_CMAP = "jet"  # the colour map of the Grad-CAM overlays (pytorch_grad_cam's default)
#: Longest side (px) of the images embedded in a PDF.
PDF_IMAGE_SIDE = 900
#: Warnings written in full in a PDF (more are counted; the JSON has them all).
PDF_MAX_WARNINGS = 6
#: Where (mm from the top of the A4 page) the footer (model version, time, study, warnings) starts.
FOOTER_TOP = 250.0


#: Decimals of the interval's bounds in the CSV; every display shows those bounds in whole months
#: (:func:`whole_months_range`), so the report, the PDF, the Assess page and the Batch page's table agree.
INTERVAL_DECIMALS = 1


def _csv_bound(months: float | None) -> float | None:
    """An interval bound as the CSV holds it (INTERVAL_DECIMALS)."""
    return None if months is None else round(months, INTERVAL_DECIMALS)


def whole_months_range(low: float, high: float) -> str:
    """'19–31': an interval in whole months, rounded half up from its bounds as the CSV holds them (never from the raw
    ones: 19.46 is 19.5 in the CSV, so 20 wherever it is shown; 20.5 is 21, not the 20 of Python's half-to-even)."""
    def whole(x: float) -> int:
        return math.floor(_csv_bound(float(x)) + 0.5)

    return f"{whole(low)}–{whole(high)}"


def years_months(months: float) -> str:
    """124.6 -> '10 y 5 m' (rounded to whole months)."""
    total = int(round(months))
    return f"{total // 12} y {total % 12} m"


def utc_timestamp(when: datetime | None = None) -> str:
    """ISO 8601 UTC time to the second (now when not given; a naive datetime is taken as UTC)."""
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


def study_identifiers(dicom: Any) -> tuple[tuple[str, str], ...]:
    """The STUDY_TAGS present in a mapping or a pydicom Dataset (anything with .get), as (tag, text) pairs."""
    if dicom is None:
        return ()
    pairs = []
    for tag in STUDY_TAGS:
        value = dicom.get(tag) if isinstance(dicom, Mapping) or hasattr(dicom, "get") else None
        value = getattr(value, "value", value)  # a pydicom DataElement
        if value not in (None, ""):
            pairs.append((tag, str(value).strip()))
    return tuple(pairs)


def read_study(data: bytes) -> dict[str, str]:
    """The STUDY_TAGS of a DICOM file's header ({} for other files or an unreadable header); nothing else is read."""
    from .imaging import is_dicom

    if not is_dicom(data):
        return {}
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(STUDY_TAGS))
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, EOFError) as exc:
        logger.info("no study identifiers: unreadable DICOM header (%s)", exc)
        return {}
    return dict(study_identifiers(dataset))


@dataclass(frozen=True)
class AssessmentReport:
    """Everything a report of one radiograph shows: no patient name; from a DICOM header only study identifiers;
    patient ID, dates and reader only when the user typed them (`patient`, keys of PATIENT_FIELDS)."""

    name: str  # file name / id
    sex: str  # "M" or "F"
    bone_age_months: float | None  # exact; displayed rounded to whole months
    interval_low: float | None
    interval_high: float | None
    interval_level: float | None
    stage_name: str
    stage_source: str  # "stage head" or "derived from predicted age"
    model_version: str
    timestamp: str  # UTC ISO 8601
    stage_probabilities: tuple[tuple[str, float], ...] | None = None
    readout: ClinicalReadout | None = None
    study: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    patient: tuple[tuple[str, str], ...] = ()
    readout_note: str | None = None  # why there is no read-out (None: not asked for, or there is one)
    reference_name: str = REFERENCE_NAME
    disclaimer: str = field(default=DISCLAIMER)

    def __post_init__(self) -> None:
        if self.sex not in (MALE, FEMALE):
            raise ValueError(f"sex must be 'M' or 'F', got {self.sex!r}")
        if any(tag not in STUDY_TAGS for tag, _ in self.study):
            raise ValueError(f"a report carries only the study tags {STUDY_TAGS}")
        if any(key not in PATIENT_FIELDS for key, _ in self.patient):
            raise ValueError(f"a report carries only the patient fields {tuple(PATIENT_FIELDS)}")

    @classmethod
    def from_prediction(cls, prediction: Any, readout: ClinicalReadout | None, model_version: str,
                        dicom: Any = None, timestamp: datetime | str | None = None,
                        patient: Mapping[str, Any] | None = None) -> "AssessmentReport":
        """From a Prediction-like object (name, male, bone_age_months, interval, stage_name, stage_source,
        stage_probabilities, warnings); `dicom` is a mapping or pydicom Dataset, of which only STUDY_TAGS are kept;
        `patient` holds typed filing details (PATIENT_FIELDS; blank ones are left out)."""
        interval = getattr(prediction, "interval", None)
        probabilities = getattr(prediction, "stage_probabilities", None)
        source = str(getattr(prediction, "stage_source", ""))
        return cls(
            name=str(prediction.name), sex=sex_code(prediction.male),
            bone_age_months=None if prediction.bone_age_months is None else float(prediction.bone_age_months),
            interval_low=None if interval is None else float(interval.low),
            interval_high=None if interval is None else float(interval.high),
            interval_level=None if interval is None else float(interval.level),
            stage_name=str(prediction.stage_name), stage_source=source,
            model_version=str(model_version),
            timestamp=timestamp if isinstance(timestamp, str) else utc_timestamp(timestamp),
            stage_probabilities=None if probabilities is None else tuple(
                (str(k), float(v)) for k, v in probabilities.items()),
            readout=readout, study=study_identifiers(dicom),
            warnings=tuple(str(w) for w in (getattr(prediction, "warnings", None) or ())),
            patient=tuple((k, str(v).strip()) for k, v in (patient or {}).items() if v is not None and str(v).strip()))

    @property
    def bone_age_whole_months(self) -> int | None:
        return None if self.bone_age_months is None else int(round(self.bone_age_months))

    @property
    def bone_age_text(self) -> str:
        """'125 months (10 y 5 m)', or a note when no bone age was predicted."""
        if self.bone_age_months is None:
            return "not available (no age head)"
        return f"{self.bone_age_whole_months} months ({years_months(self.bone_age_months)})"

    @property
    def interval_text(self) -> str | None:
        """'90% interval 108–142 months' (whole months, :func:`whole_months_range`), or None without an interval."""
        if self.interval_low is None or self.interval_high is None:
            return None
        return f"{self.interval_level:.0%} interval {whole_months_range(self.interval_low, self.interval_high)} months"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict."""
        return {
            "name": self.name, "sex": self.sex, "bone_age_months": self.bone_age_months,
            "bone_age_whole_months": self.bone_age_whole_months,
            "bone_age_years_months": None if self.bone_age_months is None else years_months(self.bone_age_months),
            "interval": None if self.interval_low is None else {
                "low": self.interval_low, "high": self.interval_high, "level": self.interval_level},
            "stage_name": self.stage_name, "stage_source": self.stage_source,
            "stage_probabilities": None if self.stage_probabilities is None else dict(self.stage_probabilities),
            "clinical": None if self.readout is None else self.readout.to_dict(),
            "reference": self.reference_name, "model_version": self.model_version, "timestamp": self.timestamp,
            "clinical_explanation": None if self.readout is None else self.readout.explanation,
            "clinical_note": self.readout_note,
            "study": dict(self.study), "patient": dict(self.patient), "warnings": list(self.warnings),
            "disclaimer": self.disclaimer,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def csv_row(self) -> dict[str, Any]:
        """A flat row: stage by name, probabilities as p_<stage>, the read-out (chronological age, z; empty without one)."""
        row: dict[str, Any] = {
            "name": self.name, "sex": self.sex,
            "bone_age_months": None if self.bone_age_months is None else round(self.bone_age_months, 2),
            "bone_age_whole_months": self.bone_age_whole_months,
            "interval_low_months": _csv_bound(self.interval_low),
            "interval_high_months": _csv_bound(self.interval_high),
            "interval_level": self.interval_level, "stage_name": self.stage_name, "stage_source": self.stage_source,
        }
        row.update({f"p_{stage}": round(p, 4) for stage, p in (self.stage_probabilities or ())})
        r = self.readout
        row.update(zip(READOUT_COLUMNS, (None,) * len(READOUT_COLUMNS) if r is None else (
            round(r.chronological_age_months, 2), round(r.z_score, 3), round(r.z_low, 3), round(r.z_high, 3),
            r.category, r.explanation)))
        row.update(clinical_note=self.readout_note)
        row.update(reference=self.reference_name, model_version=self.model_version, timestamp=self.timestamp)
        row.update({tag: dict(self.study).get(tag) for tag in STUDY_TAGS})  # every tag: one header fits all rows
        row.update({key: dict(self.patient).get(key) for key in PATIENT_FIELDS})
        row.update(warnings="; ".join(self.warnings), disclaimer=self.disclaimer)
        return row

    def readout_lines(self) -> list[str]:
        """The clinical read-out in words, naming the reference."""
        if self.readout is None:
            why = self.readout_note or "no chronological age given"
            return [f"Not computed: {why} (reference: {self.reference_name})."]
        r = self.readout
        return [f"Chronological age {r.chronological_age_months:.1f} months; reference ({self.reference_name}) "
                f"mean bone age {r.expected_bone_age_months:.1f} months, SD {r.sd_months:.1f} months.",
                f"Category: {r.category}: {r.explanation}.",
                f"Rule: {RULE_TEXT}."]


# --- images --------------------------------------------------------------------------------------------------

def _fit(image: np.ndarray, max_side: int) -> Image.Image:
    """A PIL copy of a uint8 RGB or float [0, 1] gray array, downscaled to max_side."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def heatmap_png_with_colorbar(overlay: np.ndarray, bone_age_text: str, sex: str, title: str = "Grad-CAM",
                              max_side: int = 1024, dpi: int = 150) -> bytes:
    """PNG of a heatmap overlay (uint8 RGB) with bone age, sex and the jet colour scale burnt in."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    img = _fit(overlay, max_side)
    aspect = img.height / img.width
    fig = Figure(figsize=(5.0, 5.0 * aspect + 1.1), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.2, 0.96, 0.72))
    ax.imshow(np.asarray(img))
    ax.set_axis_off()
    ax.set_title(f"{title}\nbone age {bone_age_text}, sex {sex}", fontsize=8, wrap=True)  # inside the margins
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=HEATMAP_CMAP), cax=fig.add_axes((0.15, 0.1, 0.7, 0.03)),
                       orientation="horizontal", ticks=[0, 1])
    bar.ax.set_xticklabels(["low", "high"], fontsize=7)
    bar.set_label(COLOUR_SCALE_LABEL, fontsize=8)
    fig.text(0.5, 0.015, DISCLAIMER, ha="center", fontsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --- PDF -----------------------------------------------------------------------------------------------------

def _unicode_font() -> Path:
    """DejaVu Sans as shipped with matplotlib (arrows, en dashes and ± in PDF text)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _pdf_lines(report: AssessmentReport) -> list[tuple[str, str]]:
    """(label, text) rows of the result block."""
    rows = [(PATIENT_FIELDS[key], value) for key, value in report.patient]
    rows += [("File", report.name), ("Sex", "male" if parse_sex(report.sex) else "female"),
            ("Bone age", report.bone_age_text),
            ("Uncertainty", report.interval_text or "no interval available"),
            ("Stage", f"{report.stage_name} ({report.stage_source})")]
    if report.stage_probabilities:
        rows.append(("Stage probabilities", ", ".join(f"{k} {p:.0%}" for k, p in report.stage_probabilities)))
    return rows


def render_pdf(report: AssessmentReport, thumbnail: np.ndarray | None = None,
               overlay: np.ndarray | None = None) -> bytes:
    """A one-page A4 PDF of a report, with the input thumbnail (float gray) and the heatmap overlay (uint8 RGB)."""
    from fpdf import FPDF

    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_margins(15, 12, 15)
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(_unicode_font()))
    pdf.set_font("DejaVu", size=16)
    pdf.cell(0, 9, "Bone-age assessment report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", size=8)
    pdf.set_text_color(160, 0, 0)
    pdf.multi_cell(0, 4, report.disclaimer, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    pdf.set_font("DejaVu", size=10)
    for label, text in _pdf_lines(report):
        pdf.cell(38, 6, f"{label}:")
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    _pdf_warnings(pdf, report)
    pdf.ln(1)
    pdf.set_font("DejaVu", size=11)
    pdf.cell(0, 7, "Clinical read-out (z-score)", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", size=9)
    for line in report.readout_lines():
        pdf.multi_cell(0, 4.5, line, new_x="LMARGIN", new_y="NEXT")
    _pdf_images(pdf, report, thumbnail, overlay, top=pdf.get_y() + 3)
    _pdf_footer(pdf, report)
    return bytes(pdf.output())


def _pdf_warnings(pdf: Any, report: AssessmentReport) -> None:
    """Every warning of the result, in full, in the result block (what the screen shows beside the estimate)."""
    if not report.warnings:
        return
    pdf.set_font("DejaVu", size=9)
    pdf.set_text_color(170, 80, 0)
    lines = [f"Warning: {w[:1].upper()}{w[1:]}." for w in report.warnings[:PDF_MAX_WARNINGS]]
    if len(report.warnings) > PDF_MAX_WARNINGS:
        lines.append(f"... and {len(report.warnings) - PDF_MAX_WARNINGS} more warning(s): see the JSON result.")
    for line in lines:
        pdf.multi_cell(0, 4.5, line, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)


def _pdf_images(pdf: Any, report: AssessmentReport, thumbnail: np.ndarray | None, overlay: np.ndarray | None,
                top: float) -> None:
    """Input thumbnail (left) and heatmap with its colour bar (right), each in an 85 mm wide box down to the footer."""
    heatmap = None if overlay is None else Image.open(io.BytesIO(
        heatmap_png_with_colorbar(overlay, report.bone_age_text, report.sex, max_side=PDF_IMAGE_SIDE)))
    boxes = ((15.0, None if thumbnail is None else _fit(thumbnail, PDF_IMAGE_SIDE), "Input image"),
             (110.0, heatmap, f"Grad-CAM heatmap (colour scale: {COLOUR_SCALE_LABEL})"))
    pdf.set_font("DejaVu", size=8)
    for x, picture, caption in boxes:
        pdf.set_xy(x, top)
        pdf.cell(85, 4, caption)
        if picture is None:
            pdf.set_xy(x, top + 6)
            pdf.cell(85, 4, "not available")
        else:
            pdf.image(picture, x=x, y=top + 5, keep_aspect_ratio=True, w=85, h=FOOTER_TOP - top - 8)


def _pdf_footer(pdf: Any, report: AssessmentReport) -> None:
    """Model version, time, study identifiers and the disclaimer at the foot of the page."""
    pdf.set_xy(15, FOOTER_TOP)
    pdf.set_font("DejaVu", size=8)
    lines = [f"Model version: {report.model_version}", f"Generated: {report.timestamp}",
             "Study: " + ("; ".join(f"{tag} {value}" for tag, value in report.study) or "no DICOM study identifiers")]
    for line in lines:
        pdf.multi_cell(0, 4, line, new_x="LMARGIN", new_y="NEXT")
    pdf.set_xy(15, 282)
    pdf.set_font("DejaVu", size=9)
    pdf.set_text_color(160, 0, 0)
    pdf.multi_cell(0, 4.5, report.disclaimer, align="C", new_x="LMARGIN", new_y="NEXT")
