"""Clinical read-out: Greulich-Pyle/Brush z-scores, chronological age, and prediction intervals from holdout errors."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from .imaging import DAYS_PER_MONTH

logger = logging.getLogger(__name__)

#: Environment variable naming the Greulich-Pyle/Brush reference CSV.
REFERENCE_ENV = "BONEAGE_GP_TABLE"
#: Where the table lies beside a checkout (the shared folder); it is never committed to the repo.
DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "greulich-pyle-brush-foundation.csv"
REFERENCE_COLUMNS = ("sex", "chronological_age_months", "mean_bone_age_months", "sd_months")
#: |z| above this is reported as advanced / delayed.
Z_LIMIT = 2.0


class ReferenceError(ValueError):
    """The reference table is missing, malformed, or does not cover the requested age."""


def reference_path() -> Path | None:
    """The reference table to use: $BONEAGE_GP_TABLE, else the shared copy beside the checkout, else None."""
    env = os.environ.get(REFERENCE_ENV)
    if env:
        return Path(env)
    return DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_file() else None


def load_reference(source: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a reference CSV (sex M/F, chronological age, mean bone age, SD; months), sorted by sex and age."""
    if source is None:
        source = reference_path()
        if source is None:
            raise ReferenceError(
                f"no Greulich-Pyle reference table found; set {REFERENCE_ENV} to a CSV with columns "
                f"{', '.join(REFERENCE_COLUMNS)}")
    name = getattr(source, "name", None) or (str(source) if isinstance(source, (str, os.PathLike)) else "uploaded table")
    try:
        table = pd.read_csv(source)
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' parser and empty-data errors are ValueErrors
        raise ReferenceError(f"cannot read reference table {name}: {exc}") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise ReferenceError(f"reference table {name} lacks column(s) {missing}; found {list(table.columns)}")
    table = table[list(REFERENCE_COLUMNS)].copy()
    table["sex"] = table["sex"].astype(str).str.strip().str.upper()
    for column in REFERENCE_COLUMNS[1:]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    if table.isna().any().any() or not set(table["sex"]) == {"M", "F"} or (table["sd_months"] <= 0).any():
        raise ReferenceError(f"reference table {name} must have rows for both sexes (M/F), numbers in every "
                             "cell and positive SDs")
    table = table.sort_values(["sex", "chronological_age_months"]).reset_index(drop=True)
    if table.duplicated(["sex", "chronological_age_months"]).any():
        raise ReferenceError(f"reference table {name} repeats a chronological age for one sex")
    return table


@dataclass(frozen=True)
class ClinicalReadout:
    """Bone age against the reference for the patient's sex and chronological age."""

    bone_age_months: float
    chronological_age_months: float
    expected_bone_age_months: float
    sd_months: float
    difference_months: float
    z_score: float
    category: str  # "advanced", "within normal limits" or "delayed"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def text(self) -> str:
        sign = "+" if self.difference_months >= 0 else "-"
        return (f"Bone age {self.bone_age_months:.1f} m vs chronological age {self.chronological_age_months:.1f} m "
                f"({sign}{abs(self.difference_months):.1f} m); reference mean {self.expected_bone_age_months:.1f} m, "
                f"SD {self.sd_months:.1f} m; z = {self.z_score:+.2f}: {self.category}.")


def categorise(z: float, limit: float = Z_LIMIT) -> str:
    """'advanced' for z > limit, 'delayed' for z < -limit, else 'within normal limits'."""
    if z > limit:
        return "advanced"
    if z < -limit:
        return "delayed"
    return "within normal limits"


def gp_zscore(bone_age_months: float, chronological_age_months: float, male: bool,
              reference: pd.DataFrame) -> ClinicalReadout:
    """z-score of a bone age at a chronological age, interpolating the reference linearly between rows."""
    rows = reference[reference["sex"] == ("M" if male else "F")]
    ages = rows["chronological_age_months"].to_numpy(dtype=float)
    if len(ages) == 0:
        raise ReferenceError(f"reference table has no rows for sex {'M' if male else 'F'}")
    if not ages[0] <= chronological_age_months <= ages[-1]:
        raise ReferenceError(
            f"chronological age {chronological_age_months:.1f} months is outside the reference table "
            f"({ages[0]:g}-{ages[-1]:g} months for {'boys' if male else 'girls'})")
    mean = float(np.interp(chronological_age_months, ages, rows["mean_bone_age_months"].to_numpy(dtype=float)))
    sd = float(np.interp(chronological_age_months, ages, rows["sd_months"].to_numpy(dtype=float)))
    z = (bone_age_months - mean) / sd
    return ClinicalReadout(float(bone_age_months), float(chronological_age_months), mean, sd,
                           float(bone_age_months - chronological_age_months), float(z), categorise(z))


def chronological_age_months(birth_date: date, study_date: date) -> float:
    """Age at the study in months (days / 30.4375); refuses a study before birth."""
    days = (study_date - birth_date).days
    if days < 0:
        raise ValueError(f"study date {study_date} is before date of birth {birth_date}")
    return days / DAYS_PER_MONTH


@dataclass(frozen=True)
class PredictionInterval:
    """An empirical interval for a prediction, from holdout errors of predictions of similar size."""

    low: float
    high: float
    level: float
    n_reference: int
    window_months: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def text(self) -> str:
        return (f"{self.level:.0%} interval {self.low:.0f}-{self.high:.0f} months (from {self.n_reference} holdout "
                f"cases with predictions within +/-{self.window_months:g} months)")


class ErrorModel:
    """Holdout residuals (true - predicted) indexed by prediction, for intervals around new predictions."""

    def __init__(self, predicted: np.ndarray | list[float], true: np.ndarray | list[float], min_cases: int = 100):
        self.predicted = np.asarray(predicted, dtype=float)
        self.residual = np.asarray(true, dtype=float) - self.predicted
        if len(self.predicted) < 20:
            raise ValueError(f"need at least 20 holdout predictions for an error model, got {len(self.predicted)}")
        self.min_cases = min(min_cases, len(self.predicted))

    @classmethod
    def from_predictions(cls, frame: pd.DataFrame, column: str = "regressor") -> "ErrorModel":
        """From a predictions table (evaluate's CSV): uses the test split when a split column is present."""
        if "split" in frame:
            frame = frame[frame["split"] == "test"]
        frame = frame[frame[column].notna()]
        return cls(frame[column], frame["boneage"])

    def interval(self, prediction: float, level: float = 0.9) -> PredictionInterval:
        """Residual quantiles of the nearest holdout predictions (a window of at least 12 months / min_cases)."""
        if not 0 < level < 1:
            raise ValueError("level must be in (0, 1)")
        distance = np.abs(self.predicted - prediction)
        window = max(12.0, float(np.sort(distance)[self.min_cases - 1]))
        near = self.residual[distance <= window]
        lo_q, hi_q = np.quantile(near, [(1 - level) / 2, (1 + level) / 2])
        return PredictionInterval(float(max(0.0, prediction + lo_q)), float(prediction + hi_q), level, int(len(near)),
                                  round(window, 1))
