"""Clinical read-out: Greulich-Pyle/Brush z-scores against the prediction interval, chronological age, false calls."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import PredictionInterval, interval_columns
from .errors import BoneAgeError
from .heads import AGE, CNN, system_column
from .imaging import DAYS_PER_MONTH
from .vocab import FEMALE, MALE, parse_sex, sex_code

logger = logging.getLogger(__name__)

#: Environment variable naming the Greulich-Pyle/Brush reference CSV.
REFERENCE_ENV = "BONEAGE_GP_TABLE"
REFERENCE_FILE = "greulich-pyle-brush-foundation.csv"
#: A copy installed with the package (package data), where whoever builds it may place the table; the
#: repository does not carry it (shared/README.md: nothing under reference/ is copied into the repo).
PACKAGED_REFERENCE = Path(__file__).resolve().parent / "data" / REFERENCE_FILE
#: Where the table lies beside a checkout (the shared folder); it is never committed to the repo.
DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / REFERENCE_FILE
REFERENCE_COLUMNS = ("sex", "chronological_age_months", "mean_bone_age_months", "sd_months")
#: |z| above this is reported as advanced / delayed.
Z_LIMIT = 2.0


class ReferenceError(BoneAgeError, ValueError):
    """The reference table is missing, malformed, or does not cover the requested age."""


def reference_path() -> Path | None:
    """The reference table to use: $BONEAGE_GP_TABLE, else the packaged copy, else the shared copy beside the
    checkout, else None."""
    env = os.environ.get(REFERENCE_ENV)
    if env:
        return Path(env)
    return next((path for path in (PACKAGED_REFERENCE, DEFAULT_REFERENCE) if path.is_file()), None)


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
    if table.isna().any().any() or not set(table["sex"]) == {MALE, FEMALE} or (table["sd_months"] <= 0).any():
        raise ReferenceError(f"reference table {name} must have rows for both sexes (M/F), numbers in every "
                             "cell and positive SDs")
    table = table.sort_values(["sex", "chronological_age_months"]).reset_index(drop=True)
    if table.duplicated(["sex", "chronological_age_months"]).any():
        raise ReferenceError(f"reference table {name} repeats a chronological age for one sex")
    return table


#: The categories of a read-out, defined once (see categorise for the rule).
ADVANCED = "advanced"
DELAYED = "delayed"
NORMAL = "within normal limits"
INDETERMINATE = "indeterminate (uncertainty too wide)"
CATEGORIES = (ADVANCED, NORMAL, DELAYED, INDETERMINATE)
#: The rule in words, for a user interface.
RULE_TEXT = (f"one rule for every category, on the whole interval of z: advanced when it lies wholly above "
             f"+{Z_LIMIT:g}, delayed when it lies wholly below -{Z_LIMIT:g}, within normal limits when it lies wholly "
             f"within +/-{Z_LIMIT:g}; otherwise indeterminate (the interval crosses a limit)")


@dataclass(frozen=True)
class ClinicalReadout:
    """Bone age and its prediction interval against the reference for the patient's sex and chronological age."""

    bone_age_months: float
    interval_low_months: float
    interval_high_months: float
    chronological_age_months: float
    expected_bone_age_months: float
    sd_months: float
    difference_months: float
    z_score: float
    z_low: float
    z_high: float
    category: str  # one of CATEGORIES

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def explanation(self) -> str:
        """Why the category is what it is, in the numbers shown beside it."""
        z, low, high, lim = self.z_score, self.z_low, self.z_high, Z_LIMIT
        span = f"z {z:+.2f} (interval {low:+.2f} to {high:+.2f})"
        if self.category == ADVANCED:
            return f"{span}: the whole interval lies above +{lim:g}"
        if self.category == DELAYED:
            return f"{span}: the whole interval lies below -{lim:g}"
        if self.category == NORMAL:
            return f"{span}: the whole interval lies within +/-{lim:g}"
        ends = [f"{low:+.2f} is below -{lim:g}"] if low < -lim else []
        ends += [f"{high:+.2f} is above +{lim:g}"] if high > lim else []
        where = "within" if -lim <= z <= lim else "beyond"
        return (f"{span}: the estimate is {where} +/-{lim:g}, but the interval crosses a limit ({' and '.join(ends)}); "
                "the model's uncertainty is too wide to call this normal, advanced or delayed")

    @property
    def text(self) -> str:
        sign = "+" if self.difference_months >= 0 else "-"
        return (f"Bone age {self.bone_age_months:.1f} m (interval {self.interval_low_months:.1f}-"
                f"{self.interval_high_months:.1f} m) vs chronological age {self.chronological_age_months:.1f} m "
                f"({sign}{abs(self.difference_months):.1f} m); reference mean {self.expected_bone_age_months:.1f} m, "
                f"SD {self.sd_months:.1f} m; z = {self.z_score:+.2f} (interval {self.z_low:+.2f} to "
                f"{self.z_high:+.2f}): {self.category}.")


def categorise(z: float, z_low: float, z_high: float, limit: float = Z_LIMIT) -> str:
    """The read-out category of a z-score and the z-scores of its interval ends: one rule for every category.

      1. ADVANCED when z_low > +limit (the whole interval of z lies above the limit);
      2. DELAYED when z_high < -limit (the whole interval lies below -limit);
      3. NORMAL when -limit <= z_low and z_high <= +limit (the whole interval lies within the limits);
      4. otherwise INDETERMINATE: the interval crosses a limit, so neither "normal" nor a call is supported.
    Normal needs as much evidence as a call: an interval reaching beyond -2 is never reported as normal. With
    z_low == z == z_high (no uncertainty) this is the plain |z| > limit rule.
    """
    if z_low > z_high:
        raise ValueError(f"z interval is reversed: {z_low} > {z_high}")
    if z_low > limit:
        return ADVANCED
    if z_high < -limit:
        return DELAYED
    if -limit <= z_low and z_high <= limit:
        return NORMAL
    return INDETERMINATE


def _sex_curve(reference: pd.DataFrame, male: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chronological ages, mean bone ages, SDs) of one sex's reference rows."""
    rows = reference[reference["sex"] == sex_code(male)]
    if rows.empty:
        raise ReferenceError(f"reference table has no rows for sex {sex_code(male)}")
    ages, means, sds = (rows[c].to_numpy(dtype=float) for c in REFERENCE_COLUMNS[1:])
    return ages, means, sds


def _interval_ends(interval: tuple[float, float] | PredictionInterval) -> tuple[float, float]:
    """(low, high) of a pair or of an object with .low/.high; refuses anything else and reversed intervals."""
    if hasattr(interval, "low") and hasattr(interval, "high"):
        low, high = interval.low, interval.high
    elif isinstance(interval, (tuple, list)) and len(interval) == 2:
        low, high = interval
    else:
        raise TypeError(f"interval must be a (low, high) pair or a PredictionInterval, got {interval!r}; "
                        "pass (age, age) explicitly when there is no interval")
    if not float(low) <= float(high):
        raise ValueError(f"interval low {low} is above high {high}")
    return float(low), float(high)


def gp_zscore(bone_age_months: float, interval: tuple[float, float] | PredictionInterval,
              chronological_age_months: float, male: bool, reference: pd.DataFrame) -> ClinicalReadout:
    """z-scores of a bone age and of its interval ends at a chronological age, categorised by `categorise`.

    The reference is interpolated linearly between rows; an age outside the table raises ReferenceError.
    `interval` is required: pass (bone_age, bone_age) explicitly when there is none.
    """
    low, high = _interval_ends(interval)
    ages, means, sds = _sex_curve(reference, male)
    if not ages[0] <= chronological_age_months <= ages[-1]:
        raise ReferenceError(
            f"chronological age {chronological_age_months:.1f} months is outside the reference table "
            f"({ages[0]:g}-{ages[-1]:g} months for {'boys' if male else 'girls'})")
    mean = float(np.interp(chronological_age_months, ages, means))
    sd = float(np.interp(chronological_age_months, ages, sds))
    z, z_low, z_high = ((v - mean) / sd for v in (bone_age_months, low, high))
    return ClinicalReadout(float(bone_age_months), low, high, float(chronological_age_months), mean, sd,
                           float(bone_age_months - chronological_age_months), float(z), float(z_low),
                           float(z_high), categorise(z, z_low, z_high))


def _call_counts(categories: list[str]) -> dict:
    """Counts of each category and the share called advanced or delayed."""
    counts = {c: categories.count(c) for c in CATEGORIES}
    n = len(categories)
    false_calls = counts[ADVANCED] + counts[DELAYED]
    return {"n": n, "counts": counts, "false_calls": false_calls,
            "advanced_rate": counts[ADVANCED] / n if n else float("nan"),
            "delayed_rate": counts[DELAYED] / n if n else float("nan"),
            "false_call_rate": false_calls / n if n else float("nan")}


#: The age group reported on its own by false_call_rate (months of true bone age).
YOUNG_MONTHS = 24.0


def false_call_rate(predicted: np.ndarray, low: np.ndarray, high: np.ndarray, true_age: np.ndarray,
                    male: np.ndarray, reference: pd.DataFrame) -> dict:
    """How often a normal child is called advanced or delayed: chronological age is set to the true bone age.

    Every case is normal by construction, so any ADVANCED or DELAYED call is a false call. Cases whose true age
    lies outside the reference table for their sex are skipped and counted (`n_outside_reference`).
    Returns {"n", "n_outside_reference", "overall": counts, "under_2y": counts (true age < 24 months)}, where
    counts = {"n", "counts" per category, "false_calls", "advanced_rate", "delayed_rate", "false_call_rate"}.
    Pass low = high = predicted for the rule without uncertainty (|z| > limit on the point estimate).
    """
    arrays = [np.asarray(a, dtype=float) for a in (predicted, low, high, true_age)]
    male = np.asarray(male, dtype=bool)
    if len({len(a) for a in arrays} | {len(male)}) != 1:
        raise ValueError("predicted, low, high, true_age and male must have the same length")
    predicted, low, high, true_age = arrays
    categories = np.full(len(true_age), "", dtype=object)
    for sex in (False, True):
        ages, means, sds = _sex_curve(reference, sex)
        rows = (male == sex) & (true_age >= ages[0]) & (true_age <= ages[-1])
        mean, sd = np.interp(true_age[rows], ages, means), np.interp(true_age[rows], ages, sds)
        z, z_low, z_high = ((v[rows] - mean) / sd for v in (predicted, low, high))
        categories[rows] = [categorise(*zs) for zs in zip(z, z_low, z_high)]
    scored = categories != ""
    young = scored & (true_age < YOUNG_MONTHS)
    outside = int((~scored).sum())
    if outside:
        logger.info("false_call_rate: %d case(s) outside the reference table skipped", outside)
    return {"n": int(len(true_age)), "n_outside_reference": outside,
            "overall": _call_counts(list(categories[scored])), "under_2y": _call_counts(list(categories[young]))}


#: The oldest chronological age a typed age may give (years): the reference ends at 19 y, RSNA's labels at 19 y.
MAX_AGE_YEARS = 25


def age_from_years_months(years: float, months: float | None = None) -> float:
    """A typed age (whole years, optional months 0-11) in months; ValueError saying what is wrong otherwise."""
    if years != int(years) or not 0 <= years <= MAX_AGE_YEARS:
        raise ValueError(f"{years:g} years is not a child's age in whole years: type 0 to {MAX_AGE_YEARS}")
    months = 0 if months is None else months
    if months != int(months) or not 0 <= months <= 11:
        raise ValueError(f"{months:g} months is not 0 to 11: type the months beside the whole years")
    return float(years) * 12 + float(months)


#: Date formats a typed date may use: ISO (2015-03-01) or DICOM's (20150301).
DATE_HELP = "YYYY-MM-DD (or YYYYMMDD)"


def parse_date(text: str, what: str = "date") -> date:
    """A typed date (ISO 2015-03-01 or DICOM 20150301) -> date; ValueError naming `what` and the format otherwise."""
    value = str(text).strip()
    try:
        if len(value) == 8 and value.isdigit():
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a date: type it as {DATE_HELP}") from None


def chronological_age_months(birth_date: date, study_date: date) -> float:
    """Age at the study in months (days / 30.4375); refuses a study before birth."""
    days = (study_date - birth_date).days
    if days < 0:
        raise ValueError(f"study date {study_date} is before date of birth {birth_date}")
    return days / DAYS_PER_MONTH


def holdout_false_calls(frame: pd.DataFrame, reference: pd.DataFrame, system: str = CNN) -> dict[str, dict]:
    """false_call_rate on a predictions table (evaluate's CSV) with the point rule and with the served interval.

    "point": the |z| > limit rule on the point estimate; "interval": the rule of `categorise` with the
    interval columns evaluate wrote (the validation-fitted calibration, as the app shows it). Rows of the
    test split when a split column is present.
    """
    column, (low_col, high_col) = system_column(system, AGE), interval_columns(system)
    missing = [c for c in (column, low_col, high_col, "boneage", "male") if c not in frame]
    if missing:
        raise KeyError(f"predictions table lacks {missing}; re-run `train.py --stages calibrate,evaluate`")
    test = frame[frame["split"] == "test"] if "split" in frame else frame
    test = test[test[[column, low_col, high_col]].notna().all(axis=1)]
    predicted, low, high = (test[c].to_numpy(dtype=float) for c in (column, low_col, high_col))
    true, male = test["boneage"].to_numpy(dtype=float), test["male"].map(parse_sex).to_numpy(dtype=bool)
    return {"point": false_call_rate(predicted, predicted, predicted, true, male, reference),
            "interval": false_call_rate(predicted, low, high, true, male, reference)}
