"""Output heads of a bone-age network: one small definition per head (loss, decoding, score, columns, metrics).

A network has named heads (``age``, ``stage``); everything that differs between them lives here, so no
other module tests head or model names. Decoded outputs are in user units (months; stage
probabilities), which is what makes views and ensemble members combinable by one mean.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .metrics import classification_breakdown, classification_metrics, regression_breakdown, regression_metrics
from .stages import StageScheme
from .vocab import clip_age

logger = logging.getLogger(__name__)

AGE, STAGE = "age", "stage"
#: System names in predictions.csv / metrics.json: the CNN ensemble and the HOG + XGBoost baseline.
CNN, BASELINE = "cnn", "baseline"
#: The CNN ensemble's age before the validation-fitted bias correction (column cnn_uncorrected_age).
UNCORRECTED = f"{CNN}_uncorrected"


class Head:
    """Base class: what a head outputs, how it learns, and how its outputs are read and scored."""

    name: str = ""
    label: str = ""  # shown to users
    score_name: str = ""  # what val_score measures (lower is better)
    cam_stage: int = -2  # backbone stage (index into blocks) whose activations HiResCAM explains

    def n_outputs(self, scheme: StageScheme) -> int:
        raise NotImplementedError

    def target(self, boneage: np.ndarray, male: np.ndarray, spec) -> torch.Tensor:
        """Training target for rows with true bone age (months) and sex."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, out: torch.Tensor, spec) -> np.ndarray:
        """Raw network output -> user units (float64 numpy)."""
        raise NotImplementedError

    def point(self, decoded: np.ndarray) -> np.ndarray:
        """The single answer per image (age in months, or stage index)."""
        raise NotImplementedError

    def val_score(self, decoded: np.ndarray, boneage: np.ndarray, male: np.ndarray, scheme: StageScheme) -> float:
        raise NotImplementedError

    def columns(self, prefix: str, decoded: np.ndarray) -> dict[str, np.ndarray]:
        """Prediction-table columns for this head's combined output."""
        return {f"{prefix}_{self.name}": self.point(decoded)}

    def from_columns(self, frame: pd.DataFrame, prefix: str) -> pd.Series:
        """The point prediction back from a prediction table."""
        return frame[f"{prefix}_{self.name}"]

    def metrics(self, frame: pd.DataFrame, column: str, scheme: StageScheme, n_boot: int, seed: int) -> dict:
        """Holdout metrics with by-sex / by-age-group breakdowns for one prediction column."""
        raise NotImplementedError

    def cam_target(self, class_index: int | None):
        """The Grad-CAM target (a callable on one image's head output) that explains this head's answer; it reads
        what it needs from the output of the CAM's own forward pass (no pass before it)."""
        raise NotImplementedError


class SignedScore:
    """Grad-CAM target: a single output times a sign (+1: what raises it, -1: what lowers it); without a sign, the
    sign of the output it is given (what moved it away from 0, in the direction it moved)."""

    def __init__(self, sign: float | None = None):
        self.sign = sign

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        score = model_output.reshape(-1)[0]
        sign = self.sign if self.sign is not None else (1.0 if float(score.detach()) >= 0 else -1.0)
        return sign * score


class ClassLogit:
    """Grad-CAM target: the logit of class `category`; without one, of the likeliest class of the output it is given
    (then kept in `category`, so the caller can say which class was explained)."""

    def __init__(self, category: int | None = None):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        logits = model_output.reshape(-1)
        if self.category is None:
            self.category = int(logits.detach().argmax())
        return logits[self.category]


class AgeHead(Head):
    """Bone age in months; trained on the standardised age with an L1 loss."""

    name, label, score_name = AGE, "bone age (months)", "MAE (months)"
    cam_stage = -3  # 1/16 resolution: the finest map that stays on the hand (benchmarks/bench_gradcam.py)

    def n_outputs(self, scheme: StageScheme) -> int:
        return 1

    def target(self, boneage, male, spec) -> torch.Tensor:
        scaled = (np.asarray(boneage, dtype=np.float64) - spec.age_mean) / spec.age_std
        return torch.tensor(scaled, dtype=torch.float32)

    def loss(self, out, target):
        return F.l1_loss(out.float().view(-1), target)

    def decode(self, out, spec) -> np.ndarray:
        return clip_age(out.float().view(-1).cpu().numpy().astype(np.float64) * spec.age_std + spec.age_mean)

    def point(self, decoded):
        return np.asarray(decoded, dtype=np.float64)

    def val_score(self, decoded, boneage, male, scheme) -> float:
        return float(np.abs(np.asarray(decoded) - np.asarray(boneage, dtype=np.float64)).mean())

    def cam_target(self, class_index):
        """What moved the estimate away from the training mean age, in the direction it moved.

        A raw-score target asks "what makes this hand look older", which for a young child points at the
        background; the signed target asks "what made this estimate young" for a young hand and "old" for an
        old one, which is the question a clinician has for every age.
        """
        return SignedScore()  # the standardised age: its sign says whether the estimate is above the mean

    def metrics(self, frame, column, scheme, n_boot, seed) -> dict:
        stats = regression_metrics(frame["boneage"], frame[column])
        stats.update(regression_breakdown(frame.assign(pred=frame[column]), n_boot, seed))
        return stats


class StageHead(Head):
    """Developmental stage; trained with label-smoothed cross-entropy, decoded to probabilities."""

    name, label, score_name = STAGE, "developmental stage", "NLL"
    cam_stage = -2  # 1/32 resolution (benchmarks/bench_gradcam.py)

    def n_outputs(self, scheme: StageScheme) -> int:
        return scheme.n_classes

    def target(self, boneage, male, spec) -> torch.Tensor:
        return torch.tensor(spec.scheme.stage_of(boneage, male), dtype=torch.long)

    def loss(self, out, target):
        return F.cross_entropy(out.float(), target, label_smoothing=0.05)

    def decode(self, out, spec) -> np.ndarray:
        return torch.softmax(out.float(), dim=1).cpu().numpy().astype(np.float64)

    def point(self, decoded):
        return np.asarray(decoded).argmax(axis=1)

    def val_score(self, decoded, boneage, male, scheme) -> float:
        true = scheme.stage_of(boneage, male)
        p = np.clip(np.asarray(decoded)[np.arange(len(true)), true], 1e-12, 1.0)
        return float(-np.log(p).mean())

    def columns(self, prefix, decoded):
        out = {f"{prefix}_{self.name}": self.point(decoded)}
        out.update({self._probability_column(prefix, k): decoded[:, k] for k in range(decoded.shape[1])})
        return out

    def _probability_column(self, prefix: str, k: int) -> str:
        return f"{prefix}_{self.name}_p{k}"

    def probabilities(self, frame: pd.DataFrame, prefix: str, n_classes: int) -> np.ndarray:
        """The stage probabilities (n, n_classes) back from a prediction table's columns."""
        return frame[[self._probability_column(prefix, k) for k in range(n_classes)]].to_numpy(dtype=np.float64)

    def cam_target(self, class_index):
        """The logit of the stage shown (class_index), or of the most likely stage."""
        return ClassLogit(None if class_index is None else int(class_index))

    def metrics(self, frame, column, scheme, n_boot, seed) -> dict:
        true = scheme.stage_of(frame["boneage"], frame["male"])
        pred = frame[column].astype(int)
        stats = classification_metrics(true, pred, scheme.n_classes, scheme.names)
        stats.update(classification_breakdown(frame.assign(stage=true, pred_stage=pred), scheme.n_classes, n_boot, seed))
        return stats


HEADS: dict[str, Head] = {h.name: h for h in (AgeHead(), StageHead())}


def get_head(name: str) -> Head:
    """The head definition for a name; ValueError for an unknown one."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
    return HEADS[name]


def parse_heads(text: str | Sequence[str]) -> tuple[str, ...]:
    """'age,stage' or ['age', 'stage'] -> validated, de-duplicated tuple in the given order."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError("a model needs at least one head")
    for name in names:
        get_head(name)
    return tuple(dict.fromkeys(names))


def combine(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """THE combination of test-time views and ensemble members, for every head: the arithmetic mean.

    Outputs are decoded first (ages in months, stage probabilities), so members with different age
    scalings combine correctly and combined stage probabilities still sum to 1.
    """
    if not outputs:
        raise ValueError("nothing to combine")
    return np.mean(np.stack([np.asarray(o, dtype=np.float64) for o in outputs]), axis=0)


def system_column(system: str, head: str) -> str:
    """Prediction column / metrics key of a system's head, e.g. ('cnn', 'age') -> 'cnn_age'."""
    return f"{system}_{head}"


def age_stage_column(system: str) -> str:
    """Column of the stage derived from a system's predicted age (scored like a stage head), e.g. 'cnn_age_stage'."""
    return f"{system}_{AGE}_{STAGE}"


def head_metrics(frame: pd.DataFrame, columns: Mapping[str, str], scheme: StageScheme, n_boot: int,
                 seed: int) -> dict:
    """{column: metrics} for prediction columns given as {column: head name} (rows without a value left out)."""
    results = {}
    for column, head in columns.items():
        if column not in frame or frame[column].isna().all():
            continue
        results[column] = get_head(head).metrics(frame[frame[column].notna()], column, scheme, n_boot, seed)
    return results
