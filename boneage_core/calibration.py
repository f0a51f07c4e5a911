"""Age calibration fitted on the validation split: a linear bias correction and split-conformal prediction intervals.

The ensemble's age estimate is pulled towards the mean (it over-estimates infants and under-estimates
the oldest). :func:`fit_calibration` fits ``true ~ intercept + slope * predicted`` on one half of the
validation split, together with a local error scale (the mean absolute residual of the nearest
validation predictions), and takes the conformal quantiles of the scaled residuals on the other half.
The interval around a corrected estimate ``a`` is ``[a + q_low * scale(a), a + q_high * scale(a)]``:
narrow for infants (small errors in months), wider in puberty. Split-conformal quantiles with the
finite-sample rank give at least the nominal coverage on exchangeable data; the test split's coverage,
by age group, is reported by :func:`interval_coverage`.

The file is tied to the members (sha256) and the test-time views (``views``) it was fitted with; ``Predictor`` and
``evaluate`` apply it through :func:`apply_calibration` (the one place the correction happens).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import CALIBRATION_PREDICTIONS_FILE, read_json, write_json
from .data import AGE_GROUPS, age_group
from .errors import ArtifactError
from .views import LEGACY_TTA_KEY, VIEWS_KEY, Views, as_views, describe_views, views_from_record
from .heads import AGE, system_column
from .vocab import clip_age

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "boneage-calibration/1"
#: Nominal coverage of the intervals shown.
LEVEL = 0.9
#: Predicted ages (months) at which the local error scale is tabulated; linear interpolation in between.
SCALE_KNOTS = tuple(float(a) for a in range(0, 241, 6))
#: Validation predictions nearest to a knot that set its error scale.
SCALE_NEIGHBOURS = 150
#: No error scale below this (months): keeps the scaled residuals finite.
MIN_SCALE = 1.0
#: Fewest validation predictions a calibration is fitted on.
MIN_CASES = 20
#: Key in ``fitted_on`` of the sha256 of the validation table (calibration_predictions.csv) it was fitted on.
PREDICTIONS_SHA_KEY = "predictions_sha256"


@dataclass(frozen=True)
class PredictionInterval:
    """A prediction interval around one (corrected) bone-age estimate."""

    low: float
    high: float
    level: float
    n_reference: int  # validation images the conformal quantiles came from
    method: str = "split-conformal"

    def to_dict(self) -> dict:
        return asdict(self)


def interval_columns(system: str) -> tuple[str, str]:
    """Prediction-table columns of a system's interval ends, e.g. ('cnn_age_low', 'cnn_age_high')."""
    column = system_column(system, AGE)
    return f"{column}_low", f"{column}_high"


def _conformal_rank(n: int, tail: float, upper: bool) -> int:
    """0-based rank of the finite-sample conformal quantile of n scores for one tail of probability `tail`."""
    if upper:
        return min(n - 1, math.ceil((n + 1) * (1 - tail)) - 1)
    return max(0, math.floor((n + 1) * tail) - 1)


def conformal_quantiles(scores: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Split-conformal quantiles of both tails of `scores` at nominal coverage `level` (finite-sample ranks)."""
    s, tail = np.sort(np.asarray(scores, dtype=np.float64)), (1 - level) / 2
    return float(s[_conformal_rank(len(s), tail, False)]), float(s[_conformal_rank(len(s), tail, True)])


def linear_correction(age: np.ndarray | float, intercept: float, slope: float) -> np.ndarray:
    """intercept + slope * age, clipped to the age range (the bias correction)."""
    return clip_age(intercept + slope * np.asarray(age, dtype=np.float64))


def error_scale(age: np.ndarray | float, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    """The local error scale tabulated at `knots`, linearly interpolated at `age`."""
    return np.interp(np.asarray(age, dtype=np.float64), knots, values)


def local_scale(predicted: np.ndarray, residual: np.ndarray, knots: tuple[float, ...] = SCALE_KNOTS,
                neighbours: int = SCALE_NEIGHBOURS) -> np.ndarray:
    """Mean |residual| of the `neighbours` predictions nearest each knot (at least MIN_SCALE months)."""
    predicted, absres = np.asarray(predicted, float), np.abs(np.asarray(residual, float))
    k = min(neighbours, len(predicted))
    out = []
    for knot in knots:
        nearest = np.argsort(np.abs(predicted - knot), kind="stable")[:k]
        out.append(max(MIN_SCALE, float(absres[nearest].mean())))
    return np.array(out)


@dataclass(frozen=True)
class AgeCalibration:
    """Linear bias correction + conformal interval of the age estimate, fitted on a held-out split."""

    intercept: float
    slope: float
    level: float
    q_low: float  # conformal quantile of (true - corrected) / scale, lower tail
    q_high: float  # ... upper tail
    scale_knots: tuple[float, ...]
    scale_values: tuple[float, ...]
    n_fit: int  # images the correction and the scale were fitted on
    n_conformal: int  # images the quantiles came from
    split: str
    views: Views  # the test-time zoom factors of the estimates it was fitted on (views.py)
    members: dict[str, str]  # model file -> sha256
    fitted_on: dict = field(default_factory=dict)  # validation MAE before / after, created

    def correct(self, age: np.ndarray | float) -> np.ndarray:
        """The bias-corrected estimate(s), clipped to the age range."""
        return linear_correction(age, self.intercept, self.slope)

    def scale(self, age: np.ndarray | float) -> np.ndarray:
        """The local error scale (months) at estimate(s) `age`."""
        return error_scale(age, self.scale_knots, self.scale_values)

    def bounds(self, corrected: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Interval ends around corrected estimate(s)."""
        corrected = np.asarray(corrected, dtype=np.float64)
        s = self.scale(corrected)
        return clip_age(corrected + self.q_low * s), clip_age(corrected + self.q_high * s)

    def interval(self, corrected: float) -> PredictionInterval:
        low, high = self.bounds(corrected)
        return PredictionInterval(float(low), float(high), self.level, self.n_conformal)

    def stale_reason(self, members: dict[str, str], views: Views) -> str | None:
        """Why this calibration does not belong to these members / test-time views, or None."""
        if self.members != members:
            return (f"{CALIBRATION_FILE} was fitted for {sorted(self.members)} with other weights than the members "
                    f"now served ({sorted(members)}); re-run `train.py --stages calibrate,evaluate`")
        return self.views_mismatch(views)

    def views_mismatch(self, views: Views) -> str | None:
        """Why this calibration does not apply to estimates made with these test-time views, or None."""
        if tuple(self.views) != tuple(views):
            return (f"{CALIBRATION_FILE} was fitted with {describe_views(self.views)}, the estimates are made with "
                    f"{describe_views(views)}")
        return None

    def predictions_mismatch(self, sha256: str) -> str | None:
        """Why a validation table with this sha256 is not the one this calibration was fitted on, or None.

        Calibrations written before the table's hash was recorded (no ``fitted_on["predictions_sha256"]``) can't
        tell, and accept it."""
        recorded = self.fitted_on.get(PREDICTIONS_SHA_KEY)
        if recorded is not None and recorded != sha256:
            return (f"{CALIBRATION_PREDICTIONS_FILE} is not the table {CALIBRATION_FILE} was fitted on (its sha256 "
                    "differs); re-run `train.py --stages calibrate,evaluate`")
        return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scale_knots"], out["scale_values"] = list(self.scale_knots), list(self.scale_values)
        out[VIEWS_KEY] = list(self.views)
        return {"format": CALIBRATION_FORMAT, **out}

    @classmethod
    def from_dict(cls, data: dict, source: str = CALIBRATION_FILE) -> "AgeCalibration":
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ArtifactError(f"{source}: not a bone-age calibration file")
        try:
            kwargs = {k: data[k] for k in cls.__dataclass_fields__ if k not in ("fitted_on", VIEWS_KEY)}
            if VIEWS_KEY not in data and LEGACY_TTA_KEY not in data:
                raise KeyError(VIEWS_KEY)
            kwargs[VIEWS_KEY] = views_from_record(data, source)  # files before view sets say "tta": true/false
        except KeyError as exc:
            raise ArtifactError(f"{source}: calibration lacks {exc}") from exc
        except ValueError as exc:
            raise ArtifactError(f"{source}: {exc}") from exc
        kwargs["scale_knots"], kwargs["scale_values"] = tuple(kwargs["scale_knots"]), tuple(kwargs["scale_values"])
        return cls(**kwargs, fitted_on=dict(data.get("fitted_on", {})))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write calibration.json into `folder` (atomically)."""
        return write_json(Path(folder) / CALIBRATION_FILE, self.to_dict())


def load_calibration(folder: str | os.PathLike) -> AgeCalibration | None:
    """The folder's calibration, None when it has none; ArtifactError when unreadable."""
    path = Path(folder) / CALIBRATION_FILE
    data = read_json(path, "calibration", "; re-run `train.py --stages calibrate,evaluate` on that folder")
    return None if data is None else AgeCalibration.from_dict(data, str(path))


def fit_calibration(predicted: np.ndarray, true: np.ndarray, members: dict[str, str], views: Views,
                    level: float = LEVEL, split: str = "val", seed: int = 0,
                    predictions_sha256: str | None = None) -> AgeCalibration:
    """Fit the correction and error scale on a random half of (predicted, true), the conformal quantiles on the other.

    `predictions_sha256` (of the saved table the estimates come from) is recorded in ``fitted_on``."""
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    if predicted.shape != true.shape or predicted.ndim != 1:
        raise ValueError("predicted and true must be 1-D arrays of the same length")
    if len(predicted) < MIN_CASES:
        raise ValueError(f"need at least {MIN_CASES} predictions to calibrate, got {len(predicted)}")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(predicted))
    fit_part, conf_part = order[: len(order) // 2], order[len(order) // 2:]
    slope, intercept = (float(v) for v in np.polyfit(predicted[fit_part], true[fit_part], 1))
    fit_corrected = linear_correction(predicted[fit_part], intercept, slope)
    values = tuple(local_scale(fit_corrected, true[fit_part] - fit_corrected))
    corrected = linear_correction(predicted[conf_part], intercept, slope)
    q_low, q_high = conformal_quantiles((true[conf_part] - corrected) / error_scale(corrected, SCALE_KNOTS, values),
                                        level)
    fitted_on = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "n": int(len(predicted)), "mae_uncorrected": float(np.abs(true - predicted).mean()),
                 "mae_corrected": float(np.abs(true - linear_correction(predicted, intercept, slope)).mean())}
    if predictions_sha256 is not None:
        fitted_on[PREDICTIONS_SHA_KEY] = predictions_sha256
    calibration = AgeCalibration(intercept, slope, level, float(q_low), float(q_high), SCALE_KNOTS, values,
                                 len(fit_part), len(conf_part), split, as_views(views), dict(members), fitted_on)
    logger.info("Calibration on %d %s images: true = %.2f + %.3f x predicted; %s MAE %.2f -> %.2f; %g%% conformal "
                "quantiles %.2f / %.2f of the local error scale", len(predicted), split, intercept, slope, split,
                fitted_on["mae_uncorrected"], fitted_on["mae_corrected"], level * 100, q_low, q_high)
    return calibration


def apply_calibration(combined: dict[str, np.ndarray], calibration: AgeCalibration | None
                      ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Combined ensemble outputs with the age corrected, and the interval ends (None without a calibration)."""
    if calibration is None or AGE not in combined:
        return combined, None
    corrected = calibration.correct(combined[AGE])
    return {**combined, AGE: corrected}, calibration.bounds(corrected)


def interval_coverage(frame: pd.DataFrame, system: str) -> dict | None:
    """Coverage and mean width of a system's intervals on a labelled table, overall and by true-age group."""
    low_col, high_col = interval_columns(system)
    if low_col not in frame or high_col not in frame:
        return None
    rows = frame[frame[low_col].notna() & frame[high_col].notna()]
    if rows.empty:
        return None
    true = rows["boneage"].to_numpy(float)
    low, high = rows[low_col].to_numpy(float), rows[high_col].to_numpy(float)
    inside, width = (low <= true) & (true <= high), high - low

    def stats(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        return {"n": n, "coverage": float(inside[mask].mean()) if n else None,
                "mean_width": float(width[mask].mean()) if n else None}

    groups = age_group(true)
    return {"level": LEVEL, **stats(np.ones(len(rows), bool)),
            "by_age_group": {label: stats(groups == label) for label, _, _ in AGE_GROUPS}}
