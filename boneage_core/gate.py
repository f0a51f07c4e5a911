"""Input gate: is this a hand radiograph, upright, a left hand? Read off the network's own features.

Three small models on the pooled backbone features of the ensemble's first age-head member (its
features separate radiographs from other images better than the stage head's), all fitted on the
training split and calibrated on the validation split:

* an out-of-distribution score: the cosine distance to the k-th nearest of a bank of training
  features (deep k-NN, Sun et al. 2022), refused above the largest validation score (or its
  quantile ``1 - refuse_rate``);
* orientation: a linear classifier of the quarter turn (0, 90, 180, 270 degrees) that the image
  needs, learnt by rotating training inputs (self-supervised, no labels needed);
* laterality: a linear classifier of mirrored (right-hand-like) against original inputs.

An image the orientation model is sure about (p >= TURN_ABOVE) is turned back and scored with a
warning; a less certain turn, and any suspected mirroring (right hands occur in the training data
too, and the laterality model is weak), are flagged with a warning but scored as given. An image
whose features lie outside the training distribution is refused with its score and the limit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import ArtifactError, InputError
from .heads import AGE

logger = logging.getLogger(__name__)

GATE_FILE = "gate.npz"
#: Probability from which a quarter turn is applied before scoring (one tilted film in the 24 samples had 0.91).
TURN_ABOVE = 0.99
#: Probability from which a suspected turn or mirroring is flagged (a warning, the image is scored as given).
FLAG_ABOVE = 0.9
QUARTER_TURNS = (0, 1, 2, 3)  # np.rot90 k that was applied to the upright image


class NotARadiographError(InputError):
    """The image does not look like the hand radiographs the models were trained on."""


@dataclass(frozen=True)
class GateVerdict:
    """What the gate found for one image: its OOD score, and the turn / mirror it needs."""

    score: float
    limit: float
    turn: int = 0  # quarter turns (np.rot90 k) that undo the detected rotation (applied when sure)
    turn_probability: float = 0.0
    mirrored: bool = False  # looks like a right hand or a mirrored film (flagged only)
    mirror_probability: float = 0.0

    @property
    def apply_turn(self) -> bool:
        return bool(self.turn) and self.turn_probability >= TURN_ABOVE

    def warnings(self) -> list[str]:
        """What a reader should know about the orientation of this image."""
        notes = []
        if self.apply_turn:
            notes.append(f"the image looked rotated (p = {self.turn_probability:.2f}); it was turned by "
                         f"{90 * self.turn} degrees counter-clockwise before scoring")
        elif self.turn:
            notes.append(f"the image may be rotated (p = {self.turn_probability:.2f}, not sure enough to turn it): "
                         "check that the fingers point up")
        if self.mirrored:
            notes.append(f"the image may show a right hand or a mirrored film (p = {self.mirror_probability:.2f}); "
                         "the reference is the left hand: check the laterality marker")
        return notes

    @property
    def refused(self) -> bool:
        return self.score > self.limit

    def reason(self) -> str:
        return (f"this does not look like a hand radiograph like those the models were trained on "
                f"(out-of-distribution score {self.score:.1f}, limit {self.limit:.1f}); no bone age is given")


@dataclass
class InputGate:
    """The fitted gate (see the module docstring); `member` and `member_sha256` name the network it reads."""

    reference: np.ndarray  # (n, F) L2-normalised training features (float16)
    k: int
    limit: float
    turn_w: np.ndarray  # (4, F) logistic regression over QUARTER_TURNS
    turn_b: np.ndarray  # (4,)
    mirror_w: np.ndarray  # (F,)
    mirror_b: float
    member: str = ""
    member_sha256: str = ""
    stats: dict = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """OOD score per row: cosine distance to the k-th nearest training feature (0 = identical direction)."""
        distances = 1.0 - _unit(np.atleast_2d(features)) @ self.reference.astype(np.float64).T
        return np.partition(distances, self.k - 1, axis=1)[:, self.k - 1]

    def turn_probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = np.atleast_2d(features) @ self.turn_w.T + self.turn_b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def mirror_probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.atleast_2d(features) @ self.mirror_w + self.mirror_b)))

    def verdicts(self, features: np.ndarray) -> list[GateVerdict]:
        """One verdict per feature row."""
        scores, turns, mirrors = self.score(features), self.turn_probabilities(features), self.mirror_probability(features)
        out = []
        for s, t, m in zip(scores, turns, mirrors):
            k = int(t.argmax())
            out.append(GateVerdict(float(s), self.limit, k if t[k] >= FLAG_ABOVE else 0, float(t[k]),
                                   bool(m >= FLAG_ABOVE), float(m)))
        return out

    def save(self, path: str | os.PathLike) -> None:
        arrays = {k: np.asarray(getattr(self, k)) for k in ("reference", "turn_w", "turn_b", "mirror_w")}
        scalars = {"k": self.k, "limit": self.limit, "mirror_b": self.mirror_b}
        np.savez(path, **arrays, **{k: np.asarray(v) for k, v in scalars.items()}, member=np.asarray(self.member),
                 member_sha256=np.asarray(self.member_sha256), stats=np.asarray(repr(self.stats)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InputGate":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["reference"], int(z["k"]), float(z["limit"]), z["turn_w"], z["turn_b"], z["mirror_w"],
                           float(z["mirror_b"]), str(z["member"]), str(z["member_sha256"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a readable input gate ({exc})") from exc


def _unit(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _logistic(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=0.5, max_iter=2000, random_state=seed)
    return model.fit(x, y)


def fit_gate(train: np.ndarray, val: np.ndarray, turned: dict[int, np.ndarray], mirrored: np.ndarray,
             upright: np.ndarray, refuse_rate: float = 0.0, k: int = 20, seed: int = 0) -> InputGate:
    """Fit the gate from features: training split (the reference bank), validation split (calibration),
    quarter-turned and mirrored copies.

    `turned[k]` holds features of training inputs rotated by np.rot90(k); `upright` the same images unturned
    (the mirror classifier's negatives, `mirrored` its positives). The OOD limit is the validation
    quantile 1 - refuse_rate (the largest validation score by default).
    """
    gate = InputGate(_unit(train).astype(np.float16), min(k, len(train)), 0.0, np.zeros((4, train.shape[1])),
                     np.zeros(4), np.zeros(train.shape[1]), 0.0)
    gate.limit = float(np.quantile(gate.score(val), 1.0 - refuse_rate))
    x = np.concatenate([upright] + [turned[k] for k in QUARTER_TURNS[1:]])
    # an image rotated by k quarter turns needs (4 - k) % 4 more to be upright again
    y = np.concatenate([np.zeros(len(upright), int)] + [np.full(len(turned[k]), (4 - k) % 4) for k in QUARTER_TURNS[1:]])
    turn = _logistic(x, y, seed)
    order = list(turn.classes_)
    gate.turn_w = turn.coef_[[order.index(k) for k in QUARTER_TURNS]]
    gate.turn_b = turn.intercept_[[order.index(k) for k in QUARTER_TURNS]]
    mirror = _logistic(np.concatenate([upright, mirrored]), np.r_[np.zeros(len(upright)), np.ones(len(mirrored))], seed)
    gate.mirror_w, gate.mirror_b = mirror.coef_[0], float(mirror.intercept_[0])
    gate.stats = {"n_train": len(train), "n_val": len(val), "refuse_rate": refuse_rate, "k": gate.k}
    logger.info("Input gate: OOD limit %.2f (validation quantile %.4f)", gate.limit, 1 - refuse_rate)
    return gate


def gate_member(heads_by_member: Mapping[str, Sequence[str]]) -> str:
    """The member whose features the gate reads: the first with an age head, else the first."""
    for name, heads in heads_by_member.items():
        if AGE in heads:
            return name
    return next(iter(heads_by_member))


def load_gate(folder: str | os.PathLike, member: str, member_sha256: str) -> InputGate | None:
    """The folder's gate when it was fitted on exactly this member file, else None (with the reason logged)."""
    path = Path(folder) / GATE_FILE
    if not path.is_file():
        return None
    gate = InputGate.load(path)
    if gate.member != member or gate.member_sha256 != member_sha256:
        raise ArtifactError(f"{path} was fitted on {gate.member} ({gate.member_sha256[:12]}), not on the current "
                            f"{member} ({member_sha256[:12]}); re-run `train.py --stages gate`")
    return gate
