"""Input gate: is this a hand radiograph, upright, a left hand? Read off the network's own features.

Small models on the features of the gate's network (``gate.npz`` names it: a model file of the artifacts folder),
all fitted on the training split and calibrated on the validation split:

* an out-of-distribution score at two levels of the same backbone pass: the pooled features, and
  the texture statistics of a mid-level block (``models.TEXTURE_BLOCK``; fine-tuning specialises the
  pooled features so much that a photograph or a page of text can land among the hands there, while
  the mid-level statistics keep them apart). At each level, the cosine distance to the k-th nearest
  of a bank of training features (deep k-NN, Sun et al. 2022) is divided by that level's limit, the
  largest validation distance (or its quantile ``1 - refuse_rate / 2``); the score is the larger of
  the two ratios, and an image scoring above 1 is refused;
* orientation: a linear classifier of the quarter turn (0, 90, 180, 270 degrees) that the image
  needs, learnt by rotating training inputs (self-supervised, no labels needed);
* grey scale: a linear classifier of inverted (MONOCHROME1-like: bone dark on white) against original inputs,
  on the texture statistics (they keep the intensity statistics that pooling blurs), fitted on films under
  ordinary acquisition shifts too (as given: negatives; inverted: positives), so that noise or white padding
  is not read as an inversion;
* laterality: an antisymmetric test on the pair of an image and its mirror image, ``w . (f(flip x) - f(x)) > 0``
  for a mirrored film (a right hand). Pooled features are nearly mirror-invariant, so a linear model of one image
  is weak; the difference of the pair cancels what both share. Exactly antisymmetric: a film and its mirror image
  always get opposite answers. It costs one more pass of the gate member per image.

A radiograph-or-not model (logistic regressions on both levels, averaged over bootstrap fits), fitted on training
films under acquisition shifts (noise of 2-8 grey levels, strong JPEG, any pose) against images that are not hand
radiographs made offline (``counterexamples``: other photographs, DICOM test files, charts, documents, textures,
other body parts, parts of films, films inside photographs; none of the test set's). Its uses: a grainy image
(input grain >= VOUCH_GRAIN) that the OOD score would refuse is scored with "unusual image: check it" when the model
gives it P >= RADIOGRAPH_ABOVE (a grainy film's texture lies as far from the training films as a photograph's, but the
model tells them apart: docs/shift.md); an image it gives P < RADIOGRAPH_BELOW is refused whatever its OOD score;
and an image the OOD score lets through that it gives P < DOUBT_BELOW is scored with an "unusual image: check it"
warning that says so (the served ensemble read such films with 2-5 times the usual error).
It does not reliably refuse kinds of image it has never seen, hence it overrules the score only for grainy images and
for images near the limit (VOUCH_NEAR); and a correction (inverting, turning, mirroring) rescues an image refused as
given only when the model reads the corrected image as a radiograph (RESCUE_ABOVE).

A fifth, plain check reads no network: the grey-level entropy of the model input (``preprocess.grey_entropy``, the
last gate feature). A radiograph is a continuum of grey; a drawing, a phantom or a screenshot is a few flat levels
and is refused below MIN_GREY_ENTROPY bits, however near the hands its deep features lie (the Shepp-Logan phantom's
do: it scored 0.92).

Between a level's limit and REFUSE_ABOVE times it an image is "unusual: check it" (scored with a warning); beyond
it is refused. The banks and limits hold films as filmed: fitted with films under ordinary acquisition shifts too
(``acquisition.MILD``), noise of 3 grey levels passed, but so did photographs, CT / MR slices and a phantom, whose
features lie as near the hands as those of noisy hands (docs/shift.md, last section).

An inverted grey scale is inverted back, a right hand (mirrored film) mirrored back, and an image the orientation
model is sure about (p >= TURN_ABOVE) turned back, each with a warning; a less certain turn is flagged but scored as
given. An image whose features lie outside the training distribution is refused with its score and the limit,
unless the radiograph-or-not model vouches for it (above), or a suggested turn (p >= TURN_FLAG_ABOVE) or the inversion
brings it inside: a sideways film is then scored
turned, with a warning. One correction may rescue an image refused as given, not two: a photograph refused as given
passed once inverted *and* turned (:meth:`InputGate.decide`, the one rule, used by ``Predictor`` and ``evaluate``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import ArtifactError, InputError
from .heads import AGE

logger = logging.getLogger(__name__)

GATE_FILE = "gate.npz"
#: Probability from which a quarter turn is applied before scoring (one tilted film in the 24 samples had 0.91).
TURN_ABOVE = 0.99
#: Probability from which the grey scale is read as inverted: the image is inverted back before scoring when the
#: image inverted back confirms it (INVERT_CONFIRM_BELOW).
INVERT_ABOVE = 0.5
#: P(inverted) of the image inverted back up to which an inversion is confirmed; otherwise the image is scored as given
#: with a warning. On 1,000 validation films (docs/shift.md, "False inversions"): of the 997 inverted copies found, 996
#: read at most 0.183 inverted back (99.5 % at most 0.038); the one left reads inverted both ways, and so does the film as
#: filmed. Of 33 copies read as inverted that were not (as filmed, gamma 0.6, JPEG q30, tilted by 20 degrees, upside
#: down, white padding), which P(inverted) alone inverted (on the test split such readings moved 25 months from the
#: clean reading on average), 9 are still inverted, all of 4 films that read inverted as filmed too. The OOD score is
#: no check: inverted back, 3 of the 997 lay farther from the training films than as given.
INVERT_CONFIRM_BELOW = 0.2
#: How the warning for an inversion not confirmed begins (GateVerdict.inverted_unsure_note).
INVERT_UNSURE = "the grey scale may be inverted"
#: Probability from which a film is read as mirrored (a right hand): it is mirrored back before scoring. Chosen on 400
#: validation films as given and mirrored (issue 29: at most 1 % of clean films flagged, at least 95 % of mirrored ones
#: found): at 0.5, 1.75 % and 97.75 %; at 0.65, 1.0 % (4 films, some of them right hands as filmed) and 96.75 %;
#: at 0.7, 1.0 % and 95.5 % (docs/shift.md). Between 1 - MIRROR_ABOVE and it, neither way is sure: scored as given.
MIRROR_ABOVE = 0.65
#: OOD score (relative to the limit where the validation films end) above which an image is refused; between 1 and
#: it, the image is scored with an "unusual image: check it" warning. At 1.1 each ordinary acquisition shift but noise
#: has at most 0.5 % of 400 validation films refused, and 28 of the 29 generated non-radiographs are.
REFUSE_ABOVE = 1.1
#: Grey-level entropy (bits; padding trimmed, the background level left out) below which an image is refused as a
#: drawing, phantom or screenshot. Measured on every 8th training film (1,577) at 256 px: clean >= 4.28, the lowest
#: under any acquisition shift 3.26 (20 % white padding each side; its 0.1 % quantile 3.69); the Shepp-Logan phantom
#: 2.68, a single-frame DICOM of a flat test pattern 1.13. A heuristic with ~0.3 bit of margin on either side.
MIN_GREY_ENTROPY = 3.0
#: Version of gate.npz; 3 added the radiograph-or-not model, 2 the grey-scale model and the pair laterality test.
GATE_FORMAT = 3
#: P(a hand radiograph) from which the radiograph-or-not model overrules the OOD score's refusal of a grainy image
#: (scored with "unusual image: check it"). Measured with the model fitted on three draws of its examples
#: (docs/shift.md, "A radiograph-or-not model"): at 0.5, 1.0-1.7 % of 300 validation films with noise of 3 grey levels
#: stayed refused, at 0.9, 2.0-3.0 %; but at 0.5 and 0.7 one draw of three let the test set's photograph of a screen
#: through (P 0.87), at 0.9 none. That test image decided the threshold: a refusal of what is not a radiograph weighs
#: more than a noisy film refused.
RADIOGRAPH_ABOVE = 0.9
#: P(a hand radiograph) below which an image is refused whatever its OOD score: the radiograph-or-not model reads it as
#: clearly not one. No validation film, clean or under any shift tried (2,700 images: clean, noise of 3 and 6 grey
#: levels, JPEG q30, blur, white padding, inverted, turned), that the OOD score lets through falls below 0.05; a
#: photograph turned or inverted that the OOD score let through got 0.000 (docs/shift.md, "A radiograph-or-not model").
RADIOGRAPH_BELOW = 0.01
#: An image the OOD score lets through that the radiograph-or-not model does not read as a radiograph (P below this, but
#: not below RADIOGRAPH_BELOW) is scored with "unusual image: check it": the same line as RADIOGRAPH_ABOVE. The served
#: ensemble's error on such films is 2-5 times the rest's (model version c877f9986816): on the validation split 5 of
#: 1,892 films (0.26 %), MAE 15.7 months against 7.51; on the test split 4 (0.21 %), MAE 41.0 against 7.55, among them
#: two small low-contrast films in wide black frames read 31 and 65 months too old, with no warning before
#: (docs/shift.md, "Doubtful films").
DOUBT_BELOW = RADIOGRAPH_ABOVE
#: Grain of the gate's input (``preprocess.input_grain``) from which the radiograph-or-not model may overrule the OOD
#: score: the overrule is for grainy films. Gate inputs (256 px) of the 5,784 films of the gate's banks, validation
#: and test splits: at most 0.0046 (median 0.0015); with noise of 2 / 3 grey levels at least 0.0034 / 0.0045; CT and
#: MR slices, drawings, phantoms and smooth photographs lie below it, so for them the OOD score's refusal stands
#: whatever the model says (docs/shift.md).
VOUCH_GRAIN = 0.003
#: OOD score, in multiples of the limit, up to which the radiograph-or-not model (P >= RADIOGRAPH_ABOVE) may overrule
#: the score for an image that is not grainy too: a film just past the limit (blurred, down-sampled, strongly
#: compressed) is scored as unusual, not refused. With each kind of counterexample held out of the model's fit in turn
#: (873 images of 30 kinds), 5 got P >= 0.9 within 1.3 x the limit, all of them pieces of hand films or films shown on
#: a light box; at 1.5 x, 11, the same kinds. Of the test set's generated non-radiographs none has P above 0.55.
VOUCH_NEAR = 1.3
#: Bootstrap fits averaged in the radiograph-or-not model (one fit's P on an unseen kind of image swung with the draw).
RADIOGRAPH_FITS = 5
#: P(a hand radiograph) the corrected image must reach when a correction (inverting, turning, mirroring back) lets an
#: image refused as given pass: a correction rescues a film, not a photograph. On 100 validation films under every
#: shift of acquisition.SHIFTS, the 9 rescued (inverted, upside down, sideways) got P >= 0.998; the one generated
#: non-radiograph a correction let through (a camera photograph, given inverted, turned by 270 degrees) got 0.13.
#: Without a radiograph model (P is NaN) the rule is not applied.
RESCUE_ABOVE = 0.5
#: Columns after the two levels in the gate features: the input's grain, then its grey-level entropy.
N_SCALARS = 2
#: Probability of "not upright" from which a suspected turn is flagged: lower than TURN_ABOVE, because a
#: turned film scored as given is far off (a 2-year-old upside down read 57 months at p = 0.63), and summed
#: over the three turns, because the model can be sure a film is sideways but not which way
#: (docs/ablations.md, section 6). On the served ensemble it flags 26 of the 1,892 upright holdout films (1.4 %).
TURN_FLAG_ABOVE = 0.6
#: P(not upright) of the best of the three turns of a film flagged as maybe rotated, up to which that turn is applied:
#: the turn confirmed by the image it makes. On 300 validation films, 45 upside-down or sideways copies were flagged
#: and not turned; for 44 of them one turn gave at most 0.10 (most below 0.03) and the other two at least 0.47
#: (mostly above 0.8); the one clean film flagged gave 0.69 at best (runs: docs/shift.md).
TURN_CONFIRM_BELOW = 0.15
#: Neighbours for the k-NN out-of-distribution distance (the k-th nearest training image).
DEFAULT_K = 20
QUARTER_TURNS = (0, 1, 2, 3)  # np.rot90 k that was applied to the upright image


class NotARadiographError(InputError):
    """The image does not look like the hand radiographs the models were trained on."""


@dataclass(frozen=True)
class Correction:
    """What is undone before an image is scored, in this order: its grey scale inverted, quarter turns, a mirroring."""

    invert: bool = False
    turn: int = 0  # np.rot90 k
    mirror: bool = False

    def apply(self, gray: np.ndarray) -> np.ndarray:
        """The gray image (float in [0, 1]) corrected; the image itself when nothing is corrected."""
        if self.invert:
            gray = 1.0 - gray
        if self.turn:
            gray = np.rot90(gray, self.turn)
        if self.mirror:
            gray = gray[:, ::-1]
        return np.ascontiguousarray(gray)

    def __bool__(self) -> bool:
        return self.invert or bool(self.turn) or self.mirror

    def describe(self) -> str:
        """What is undone, in words ("grey scale inverted back, turned by 90 degrees"); "as given" when nothing."""
        steps = (["grey scale inverted back"] * self.invert + [f"turned by {90 * self.turn} degrees"] * bool(self.turn)
                 + ["mirrored"] * self.mirror)
        return ", ".join(steps) or "as given"


NO_CORRECTION = Correction()


@dataclass(frozen=True)
class GateVerdict:
    """What the gate found for one image: its OOD score, the turn it needs and whether its grey scale is inverted."""

    score: float
    limit: float  # the score above which the image is refused
    turn: int = 0  # quarter turns (np.rot90 k) that undo the detected rotation (applied when sure)
    turn_probability: float = 0.0
    rotated_probability: float = 0.0  # 1 - P(upright): the image needs some turn
    inverted_probability: float = 0.0  # P(the grey scale is inverted)
    usual_limit: float = 1.0  # the score up to which an image is as usual as the validation films
    grey_entropy: float = 8.0  # bits of the input's grey-level histogram (background left out); see MIN_GREY_ENTROPY
    radiograph_probability: float = float("nan")  # P(a hand radiograph) of the radiograph-or-not model (NaN: no model)
    grain: float = 0.0  # the input's noise relative to its grey range (preprocess.input_grain); see VOUCH_GRAIN

    @property
    def flat(self) -> bool:
        """Too few grey levels for a radiograph (a drawing, a phantom, a screenshot): refused whatever its score."""
        return self.grey_entropy < MIN_GREY_ENTROPY

    @property
    def inverted(self) -> bool:
        return self.inverted_probability >= INVERT_ABOVE

    @property
    def apply_turn(self) -> bool:
        return bool(self.turn) and self.turn_probability >= TURN_ABOVE

    @property
    def turn_flagged(self) -> bool:
        """A turn is suspected but not sure enough to apply: the reader is asked to check the orientation."""
        return bool(self.turn) and not self.apply_turn

    def turned_note(self, searched_turn: int | None = None) -> str:
        """The warning for an image turned before scoring: by its suggested turn, or (`searched_turn`) by the turn
        found when trying all three (:meth:`InputGate.decide`)."""
        if searched_turn is not None:
            why, turn = (f"p = {self.rotated_probability:.2f} that it was not upright; of the three turns this one "
                         "made it look upright"), searched_turn
        elif self.apply_turn:
            why, turn = f"p = {self.turn_probability:.2f} that it needed this turn", self.turn
        else:
            why, turn = (f"p = {self.rotated_probability:.2f} that it was not upright; refused as given, it passed "
                         "the gate turned"), self.turn
        return f"the image looked rotated ({why}); it was turned by {90 * turn} degrees counter-clockwise before scoring"

    def inverted_note(self) -> str:
        return (f"the grey scale was inverted (bone dark on a light background, a MONOCHROME1-like film; p = "
                f"{self.inverted_probability:.2f}): it was read inverted back")

    def inverted_unsure_note(self, back: "GateVerdict") -> str:
        """The warning for an image that reads as inverted but whose inverted-back image does not confirm it."""
        return (f"{INVERT_UNSURE} (p = {self.inverted_probability:.2f} that it is), but inverted back the image does "
                f"not read surely right either (p = {back.inverted_probability:.2f} that it is still inverted): it was "
                "read as given; check that bone is shown white")

    def confirms_inversion(self, back: "GateVerdict") -> bool:
        """Whether `back`, the verdict on this image inverted back, confirms that its grey scale was inverted."""
        return back.inverted_probability <= INVERT_CONFIRM_BELOW

    def warnings(self) -> list[str]:
        """What a reader should know about the orientation of this image (as scored)."""
        notes = []
        if self.apply_turn:
            notes.append(self.turned_note())
        elif self.turn_flagged:
            notes.append(f"the image may be rotated (p = {self.rotated_probability:.2f} that it is not upright, too "
                         "low to turn it automatically): it was scored as given; check that the fingers point up")
        return notes

    @property
    def vouched(self) -> bool:
        """Beyond the OOD limit, but the radiograph-or-not model reads it as a radiograph, and it is grainy or near the
        limit (VOUCH_NEAR): scored, with a warning."""
        return (self.score > self.limit and self.radiograph_probability >= RADIOGRAPH_ABOVE and not self.flat
                and (self.grain >= VOUCH_GRAIN or self.score <= VOUCH_NEAR * self.limit))

    @property
    def clearly_not(self) -> bool:
        """The radiograph-or-not model reads it as clearly not a hand radiograph: refused whatever its OOD score."""
        return self.radiograph_probability < RADIOGRAPH_BELOW

    @property
    def doubtful(self) -> bool:
        """Within the OOD limit, but the radiograph-or-not model does not read it as a radiograph (not clearly not one
        either): scored, with a warning."""
        return self.score <= self.limit and RADIOGRAPH_BELOW <= self.radiograph_probability < DOUBT_BELOW

    @property
    def refused(self) -> bool:
        return (self.score > self.limit and not self.vouched) or self.flat or self.clearly_not

    @property
    def unusual(self) -> bool:
        """Scored, but farther from the training films than the validation films, or doubted by the radiograph model."""
        return ((self.usual_limit < self.score <= self.limit or self.vouched or self.doubtful)
                and not (self.flat or self.clearly_not))

    def unusual_note(self) -> str:
        score, limit = distinct_numbers(self.score, self.usual_limit)
        if self.doubtful and self.score <= self.usual_limit:
            return (f"unusual image, check it: the radiograph model is not sure this is a hand radiograph like the "
                    f"training films (P(radiograph) {self.radiograph_probability:.2f}, below {DOUBT_BELOW:g}), though "
                    f"its out-of-distribution score ({score}) is usual. Films it doubts were read with 2 to 5 times "
                    "the usual error; the estimate is given, but check the film's contrast and framing and that it is a "
                    "whole left-hand radiograph")
        if self.vouched:
            return (f"unusual image, check it: its texture lies far from the training radiographs (out-of-distribution "
                    f"score {score}, refused above {self.limit:.2f} unless, as here, the radiograph model reads it as a "
                    f"radiograph: p = {self.radiograph_probability:.2f}); a grainy, noisy or differently processed film "
                    "reads like this. The estimate is given; check the image quality and that this is a whole left-hand "
                    "radiograph")
        doubt = (f"; the radiograph model is not sure it is a hand radiograph either (P(radiograph) "
                 f"{self.radiograph_probability:.2f}, below {DOUBT_BELOW:g})" if self.doubtful else "")
        return (f"unusual image, check it: it lies farther from the training radiographs than any validation "
                f"radiograph (out-of-distribution score {score}, above {limit}; refused above "
                f"{self.limit:.2f}){doubt}; the estimate is given, but check that this is a whole left-hand radiograph "
                "of usual quality")

    def reason(self) -> str:
        if self.flat:
            return (f"this does not look like a radiograph: it holds too few grey levels (grey-level entropy "
                    f"{self.grey_entropy:.2f} bits, a radiograph has at least {MIN_GREY_ENTROPY:g}), like a drawing, a "
                    "phantom or a screenshot; no bone age is given")
        score, limit = distinct_numbers(self.score, self.limit)
        check = "If it is a hand radiograph, check that it shows the whole hand with the fingers pointing up"
        if self.clearly_not and self.score <= self.limit:
            return (f"this does not look like a hand radiograph: the radiograph model reads it as clearly not one "
                    f"(P(radiograph) {self.radiograph_probability:.3f}, refused below {RADIOGRAPH_BELOW:g}), though its "
                    f"out-of-distribution score ({score}) is within the limit {limit}; no bone age is given. {check}")
        relation = "above" if self.score > self.limit else "at or below"
        p = self.radiograph_probability
        if np.isnan(p):
            model = ""
        elif self.clearly_not:
            model = f"; the radiograph model reads it as clearly not one: P(radiograph) {p:.3f}"
        elif p >= RADIOGRAPH_ABOVE:
            model = (f"; the radiograph model reads it as a radiograph (P {p:.2f}), but it overrules the score only for "
                     f"a grainy image or one near the limit (up to {VOUCH_NEAR * self.limit:.2f}), and this one is neither "
                     f"(grain {self.grain:.4f}, below {VOUCH_GRAIN:g})")
        else:
            model = f"; P(radiograph) {p:.3f}, below the {RADIOGRAPH_ABOVE:g} from which the radiograph model overrules it"
        return (f"this does not look like a hand radiograph like those the models were trained on "
                f"(out-of-distribution score {score}, {relation} the limit {limit} for refusal; at 1 the validation "
                f"radiographs end{model}); no bone age is given. {check}")


def distinct_numbers(a: float, b: float, decimals: int = 2, most: int = 6) -> tuple[str, str]:
    """Two numbers as text with as many decimals (from `decimals`, up to `most`) as it takes to tell them apart."""
    for places in range(decimals, most + 1):
        text_a, text_b = f"{a:.{places}f}", f"{b:.{places}f}"
        if text_a != text_b:
            break
    return text_a, text_b


def mirrored_note(probability: float) -> str:
    return (f"read as a right hand (or a film mirrored at conversion; p = {probability:.2f}): it was mirrored to a left "
            "hand before scoring; check the laterality marker")


@dataclass(frozen=True)
class GateDecision:
    """What is done with one image: scored as given, scored corrected, or refused; with the reader's warnings.

    Made by :meth:`InputGate.decide`, the one place the rule lives (``Predictor`` and ``evaluate`` both use it).
    """

    verdict: GateVerdict  # the gate's verdict on the image that is scored (the corrected one when corrected)
    as_given: GateVerdict  # the verdict on the image as given (the same one when not corrected)
    correction: Correction = NO_CORRECTION  # what was undone before scoring
    warnings: tuple[str, ...] = ()
    mirror_probability: float | None = None  # P(a right hand / mirrored film); None when not tested (refused)
    refusal_notes: tuple[str, ...] = ()  # why a correction that would have let it pass was not applied (refused only)

    @property
    def refused(self) -> bool:
        return self.verdict.refused

    @property
    def turn(self) -> int:
        """Quarter turns (np.rot90 k) applied before scoring; 0 = not turned."""
        return self.correction.turn

    @property
    def turn_flagged(self) -> bool:
        """A turn is suspected but was not applied (on the verdict of the image scored)."""
        return self.verdict.turn_flagged


#: The feature levels the OOD score reads (see the module docstring), in the order of the gate features.
POOLED, TEXTURE = "pooled", "texture"
LEVELS = (POOLED, TEXTURE)
#: Fitted arrays of gate.npz besides the banks and limits.
_ARRAYS = ("turn_w", "turn_b", "mirror_w", "invert_w", "invert_b", "radio_w", "radio_b", "k", "n_pooled", "member", "member_sha256")


@dataclass
class InputGate:
    """The fitted gate (see the module docstring); `member` and `member_sha256` name the network it reads.

    Its input is a member's gate features (``inference.gate_features``): `n_pooled` pooled features, then
    the texture statistics, then the grain and the grey-level entropy of the input (N_SCALARS). The orientation and
    laterality models read the pooled features, the grey-scale model the texture statistics, the radiograph-or-not
    model both.
    """

    references: dict[str, np.ndarray]  # level -> (n, F_level) L2-normalised training features (float16)
    limits: dict[str, float]  # level -> distance at which that level's validation films end (score 1)
    n_pooled: int
    k: int
    turn_w: np.ndarray  # (4, n_pooled) logistic regression over QUARTER_TURNS
    turn_b: np.ndarray  # (4,)
    mirror_w: np.ndarray  # (n_pooled,) antisymmetric laterality test on f(flip x) - f(x)
    invert_w: np.ndarray  # (F - n_pooled,) logistic regression on the texture statistics: grey scale inverted
    invert_b: float
    radio_w: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (fits, deep features); empty: none
    radio_b: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (fits,)
    member: str = ""
    member_sha256: str = ""
    stats: dict = field(default_factory=dict)
    #: level -> (the stored bank, its float32 copy): see :meth:`bank`
    _banks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    usual_limit = 1.0  # scores are distances relative to each level's limit
    limit = REFUSE_ABOVE  # the score above which an image is refused

    def levels(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Gate features (N, F) split into the levels the OOD score reads (the N_SCALARS after them are not levels)."""
        features = np.atleast_2d(features)
        return {POOLED: features[:, :self.n_pooled], TEXTURE: features[:, self.n_pooled:-N_SCALARS]}

    @staticmethod
    def grey_entropy(features: np.ndarray) -> np.ndarray:
        """The grey-level entropy of each image (the last gate feature)."""
        return np.atleast_2d(features)[:, -1]

    @staticmethod
    def grain(features: np.ndarray) -> np.ndarray:
        """The grain of each image's input (the gate feature before the entropy)."""
        return np.atleast_2d(features)[:, -2]

    def pooled(self, features: np.ndarray) -> np.ndarray:
        """The pooled level of gate features (what the orientation and laterality models read)."""
        return self.levels(features)[POOLED]

    def bank(self, level: str) -> np.ndarray:
        """A level's reference bank as float32, converted once (the stored float16 bank is converted on first use
        and again only when `references` is replaced)."""
        stored = self.references[level]
        cached = self._banks.get(level)
        if cached is None or cached[0] is not stored:
            cached = self._banks[level] = (stored, np.asarray(stored, dtype=np.float32))
        return cached[1]

    def distances(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per level, the cosine distance to the k-th nearest training feature (0 = identical direction)."""
        return {level: kth_distance(self.bank(level), f, self.k) for level, f in self.levels(features).items()}

    def score(self, features: np.ndarray) -> np.ndarray:
        """OOD score per row: the largest of the levels' distances relative to their limits (> 1 is unusual)."""
        distances = self.distances(features)
        return np.max([distances[level] / self.limits[level] for level in LEVELS], axis=0)

    def turn_probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.pooled(features) @ self.turn_w.T + self.turn_b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def inverted_probability(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(self.levels(features)[TEXTURE] @ self.invert_w + self.invert_b)

    def radiograph_probability(self, features: np.ndarray) -> np.ndarray:
        """P(a hand radiograph) of the radiograph-or-not model on the deep gate features (NaN without a model)."""
        features = np.atleast_2d(features)
        if not self.radio_w.size:
            return np.full(len(features), np.nan)
        return _sigmoid(features[:, :-N_SCALARS] @ np.atleast_2d(self.radio_w).T + self.radio_b).mean(axis=1)

    def mirror_probability(self, features: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        """P(mirrored) of images with these gate features, given the features of their mirror images (antisymmetric:
        swapping the two gives 1 - p)."""
        return _sigmoid((self.pooled(flipped) - self.pooled(features)) @ self.mirror_w)

    def verdicts(self, features: np.ndarray) -> list[GateVerdict]:
        """One verdict per feature row."""
        scores, turns = self.score(features), self.turn_probabilities(features)
        inverted, entropy = self.inverted_probability(features), self.grey_entropy(features)
        radiograph, grain = self.radiograph_probability(features), self.grain(features)
        out = []
        for s, t, i, e, r, g in zip(scores, turns, inverted, entropy, radiograph, grain):
            k = int(t[1:].argmax()) + 1  # the likeliest turn; flagged when P(not upright) is high enough
            out.append(GateVerdict(float(s), self.limit, k if 1.0 - t[0] >= TURN_FLAG_ABOVE else 0, float(t[k]),
                                   float(1.0 - t[0]), float(i), self.usual_limit, float(e), float(r), float(g)))
        return out

    def decide(self, features: np.ndarray, features_of: Callable[[Correction], np.ndarray]) -> GateDecision:
        """The gate's decision for an image with these gate features (1, F) as given.

        `features_of(c)` gives the gate features of the image corrected by `c` (:meth:`Correction.apply`). In order:
        an inverted grey scale is inverted back when the image inverted back confirms it
        (:meth:`GateVerdict.confirms_inversion`; else it is scored as given with a warning); the turn is decided
        (:meth:`decide_turn`); unless refused, the laterality test reads the image (as corrected so far) and its mirror image, and a right hand is mirrored (an
        image that passes unmirrored is not refused on its mirror image's verdict).
        An image refused as given stays refused when only inverting it back *and* turning it would let it pass, and
        when the corrected image that passes is not read as a radiograph (P < RESCUE_ABOVE).
        """
        as_given = verdict = self.verdicts(features)[0]
        if as_given.flat or as_given.clearly_not:  # no correction makes a drawing or a photograph a film
            return GateDecision(as_given, as_given)
        correction, notes, doubt = NO_CORRECTION, [], ()
        if verdict.inverted:
            back = features_of(Correction(invert=True))
            back_verdict = self.verdicts(back)[0]
            if verdict.confirms_inversion(back_verdict):
                correction, features = Correction(invert=True), back
                verdict, notes = back_verdict, [verdict.inverted_note()]
            else:
                doubt = (verdict.inverted_unsure_note(back_verdict),)
                notes = list(doubt)
        seen: dict[int, np.ndarray] = {}

        def turned(k: int) -> np.ndarray:
            seen[k] = features_of(replace(correction, turn=k))
            return seen[k]

        turning = self.decide_turn(verdict, turned)
        if as_given.refused and as_given.inverted and turning.turn and verdict.refused:
            surely = "" if correction.invert else " (not surely)"
            return GateDecision(as_given, as_given, refusal_notes=(  # two corrections to pass: a photograph did
                f"it would pass only turned, and its grey scale reads as inverted{surely}; one correction, not two, "
                "may make an image refused as given pass",))
        verdict, correction = turning.verdict, replace(correction, turn=turning.turn)
        notes += [w for w in turning.warnings if w not in notes]
        features = seen.get(turning.turn, features)
        p_mirror = None
        if not verdict.refused:
            flipped = features_of(replace(correction, mirror=True))
            p_mirror = float(self.mirror_probability(features, flipped)[0])
            if p_mirror >= MIRROR_ABOVE:
                correction, mirrored = replace(correction, mirror=True), self.verdicts(flipped)[0]
                notes.append(mirrored_note(p_mirror))
                # a mirror decides laterality, not whether it is a radiograph: an image that passes unmirrored is not
                # refused on its mirror image's verdict (2 noisy test films were)
                if not mirrored.refused:
                    verdict = mirrored
        if as_given.refused and not verdict.refused and verdict.radiograph_probability < RESCUE_ABOVE:
            return GateDecision(as_given, as_given, refusal_notes=(
                f"corrected ({correction.describe()}) it would pass the out-of-distribution limit, but the radiograph "
                f"model does not read the corrected image as a radiograph (P {verdict.radiograph_probability:.2f}, "
                f"a correction rescues an image from {RESCUE_ABOVE:g})",))
        if verdict.unusual:
            notes.append(verdict.unusual_note())
        return GateDecision(verdict, as_given, correction, tuple(notes), p_mirror,
                            refusal_notes=doubt if verdict.refused else ())

    def decide_turn(self, verdict: GateVerdict, turned_features: Callable[[int], np.ndarray]) -> GateDecision:
        """The turn part of the rule, for an image with this verdict (after any grey-scale correction).

        `turned_features(k)` gives the gate features of the image turned by k quarter turns. It is called when a
        turn is to be applied (p >= TURN_ABOVE for the suggested turn), when the image would be refused as given
        but a turn is suggested (p >= TURN_FLAG_ABOVE: a sideways hand is then scored turned, not refused), and
        when the gate is sure the image is not upright (P(not upright) >= TURN_ABOVE) but not which turn undoes
        it: then each of the three turns is tried and the one whose result looks most upright is applied (an
        upside-down film is not scored as given with "not sure enough to turn it"). A suspected turn the gate is not
        sure of (P(not upright) from TURN_FLAG_ABOVE) is tried the same way, and applied when its result looks surely
        upright (P(not upright) at most TURN_CONFIRM_BELOW); otherwise the image is scored as given with the flag.
        """
        scored, turn, notes = verdict, 0, []
        if verdict.apply_turn or (verdict.refused and verdict.turn):
            turned = self.verdicts(turned_features(verdict.turn))[0]
            if verdict.apply_turn or not turned.refused:
                scored, turn, notes = turned, verdict.turn, [verdict.turned_note()]
        elif verdict.turn:  # not refused as given (else the branch above): a turn must not make it refused
            k, turned = self._most_upright(turned_features)
            sure = verdict.rotated_probability >= TURN_ABOVE or turned.rotated_probability <= TURN_CONFIRM_BELOW
            if sure and not turned.refused:
                scored, turn, notes = turned, k, [verdict.turned_note(k)]
        notes += [w for w in scored.warnings() if w not in notes]
        return GateDecision(scored, verdict, Correction(turn=turn), tuple(notes))

    def _most_upright(self, turned_features: Callable[[int], np.ndarray]) -> tuple[int, GateVerdict]:
        """(k, verdict) of the quarter turn whose turned image the gate finds most upright."""
        tried = {k: self.verdicts(turned_features(k))[0] for k in QUARTER_TURNS[1:]}
        k = min(tried, key=lambda k: tried[k].rotated_probability)
        return k, tried[k]

    def save(self, path: str | os.PathLike) -> None:
        arrays = {f"reference_{level}": self.references[level] for level in LEVELS}
        arrays.update({f"limit_{level}": np.asarray(self.limits[level]) for level in LEVELS})
        arrays.update({k: np.asarray(getattr(self, k)) for k in _ARRAYS})
        np.savez(path, **arrays, format=np.asarray(GATE_FORMAT), stats=np.asarray(repr(self.stats)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InputGate":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or int(z["format"]) != GATE_FORMAT:
                    found = int(z["format"]) if "format" in z.files else 1
                    raise KeyError(f"an older format (version {found}; this version reads {GATE_FORMAT}, which adds "
                                   "the radiograph-or-not model); re-run `train.py --stages gate`")
                return cls({level: z[f"reference_{level}"] for level in LEVELS},
                           {level: float(z[f"limit_{level}"]) for level in LEVELS}, int(z["n_pooled"]), int(z["k"]),
                           z["turn_w"], z["turn_b"], z["mirror_w"], z["invert_w"], float(z["invert_b"]), z["radio_w"],
                           z["radio_b"], str(z["member"]), str(z["member_sha256"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a readable input gate ({exc})") from exc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (the k-NN banks are stored this way)."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def kth_distance(reference: np.ndarray, features: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Cosine distance (float64) of each row of `features` to its k-th nearest row of the unit `reference` bank.

    One float32 matrix product (the bank is stored as float16, so float32 loses nothing of it; a float64 copy of
    the bank per call cost more than the product) and a partial sort of the similarities: the k-th nearest row
    is the k-th largest similarity.
    """
    bank = reference if reference.dtype == np.float32 else reference.astype(np.float32)
    similarities = unit_rows(np.asarray(features, dtype=np.float32)) @ bank.T
    kth = -np.partition(-similarities, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth.astype(np.float64)


def _logistic(x: np.ndarray, y: np.ndarray, seed: int, intercept: bool = True):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=0.5, max_iter=2000, random_state=seed, fit_intercept=intercept)
    return model.fit(x, y)


def fit_radiograph_model(radiographs: np.ndarray, not_radiographs: np.ndarray, seed: int = 0, c: float = 0.1,
                         fits: int = RADIOGRAPH_FITS) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of the radiograph-or-not model on deep gate features (the scalars after them left out): `fits` logistic
    regressions, each on a bootstrap draw of both classes, on standardised features with both classes weighted
    alike; the standardisation folded into each row of W and b, so that P = mean(sigmoid(f @ W.T + b)) on raw
    features."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([radiographs[:, :-N_SCALARS], not_radiographs[:, :-N_SCALARS]])
    y = np.r_[np.ones(len(radiographs)), np.zeros(len(not_radiographs))]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    rng = np.random.default_rng([seed, 4])  # the bootstrap's own stream
    weights, biases = [], []
    for _ in range(fits):
        rows = np.concatenate([rng.choice(np.flatnonzero(y == k), int((y == k).sum())) for k in (0, 1)])
        model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced", random_state=seed)
        model.fit((x[rows] - mean) / scale, y[rows])
        w = model.coef_[0] / scale
        weights.append(w)
        biases.append(float(model.intercept_[0] - mean @ w))
    return np.stack(weights), np.array(biases)


def fit_gate(train: np.ndarray, val: np.ndarray, turned: dict[int, np.ndarray], mirrored: np.ndarray,
             upright: np.ndarray, inverted: np.ndarray, n_pooled: int, shifted: np.ndarray | None = None,
             shifted_inverted: np.ndarray | None = None, shifted_mirrored: np.ndarray | None = None,
             shifted_turned: dict[int, np.ndarray] | None = None,
             radiographs: np.ndarray | None = None, not_radiographs: np.ndarray | None = None,
             refuse_rate: float = 0.0, k: int = DEFAULT_K, seed: int = 0) -> InputGate:
    """Fit the gate from gate features: training films (the reference banks), validation films (the limits),
    quarter-turned, mirrored and inverted copies of training films.

    `turned[k]` holds features of training inputs rotated
    by np.rot90(k), `mirrored` and `inverted` of the same inputs mirrored and with the grey scale inverted, `upright`
    of the same images unchanged (row i of each is one image). `shifted` (training films under acquisition shifts)
    and `shifted_inverted` (the same inverted) join the grey-scale model's negatives and positives; with
    `shifted_mirrored` (the same mirrored) their pairs join the laterality test's (fitted on clean pairs alone it
    flagged 1.7 % of 300 clean validation films as mirrored, on both 0.3 %: docs/shift.md); with `shifted_turned`
    (the shifted films turned by k quarter turns) they join the orientation model's too (the gate stage's shifted films
    include grainy ones: without them noise turned 4 % of upright test films). With `radiographs`
    (films under acquisition shifts, any pose) and `not_radiographs` (``counterexamples``) the radiograph-or-not
    model is fitted (:func:`fit_radiograph_model`); without them the gate has none. Each level's
    limit is its validation quantile
    1 - refuse_rate / 2 (the largest validation distance by default); an image is refused above REFUSE_ABOVE
    times it.
    """
    if not 0 < n_pooled < train.shape[1] - N_SCALARS:
        raise ValueError(f"n_pooled {n_pooled} must split the {train.shape[1] - N_SCALARS} deep gate features (then the grain and the "
                         "grey-level entropy) into two levels")
    if not len(upright) == len(mirrored) == len(inverted):
        raise ValueError(f"upright, mirrored and inverted must be the same images ({len(upright)}, {len(mirrored)}, "
                         f"{len(inverted)} rows)")
    gate = InputGate({}, {}, n_pooled, min(k, len(train)), np.zeros((4, n_pooled)), np.zeros(4), np.zeros(n_pooled),
                     np.zeros(train.shape[1] - n_pooled - N_SCALARS), 0.0)
    gate.references = {level: unit_rows(f).astype(np.float16) for level, f in gate.levels(train).items()}
    gate.limits = {level: float(np.quantile(d, 1.0 - refuse_rate / len(LEVELS)))
                   for level, d in gate.distances(val).items()}
    if shifted_turned is not None and shifted is None:
        raise ValueError("shifted_turned needs the shifted films it turns")
    sets = [(upright, turned)] + ([] if shifted_turned is None else [(shifted, shifted_turned)])
    x = np.concatenate([gate.pooled(f) for given, by_turn in sets for f in [given] + [by_turn[k] for k in QUARTER_TURNS[1:]]])
    # an image rotated by k quarter turns needs (4 - k) % 4 more to be upright again
    y = np.concatenate([np.full(len(f), (4 - k) % 4) for given, by_turn in sets
                        for k, f in zip(QUARTER_TURNS, [given] + [by_turn[k] for k in QUARTER_TURNS[1:]])])
    turn = _logistic(x, y, seed)
    order = list(turn.classes_)
    gate.turn_w = turn.coef_[[order.index(k) for k in QUARTER_TURNS]]
    gate.turn_b = turn.intercept_[[order.index(k) for k in QUARTER_TURNS]]
    # laterality on pairs, no intercept: (flipped - given) of an upright film is a negative, of a mirrored one
    # (whose mirror image is the upright film) the same difference negated is a positive
    pair = gate.pooled(mirrored) - gate.pooled(upright)
    if shifted_mirrored is not None:
        if shifted is None or len(shifted) != len(shifted_mirrored):
            raise ValueError("shifted_mirrored needs the shifted films it mirrors, row for row")
        pair = np.concatenate([pair, gate.pooled(shifted_mirrored) - gate.pooled(shifted)])
    mirror = _logistic(np.concatenate([pair, -pair]), np.r_[np.zeros(len(pair)), np.ones(len(pair))], seed,
                       intercept=False)
    gate.mirror_w = mirror.coef_[0]
    given = np.concatenate([upright] + ([] if shifted is None else [shifted]))
    flipped_grey = np.concatenate([inverted] + ([] if shifted_inverted is None else [shifted_inverted]))
    invert = _logistic(np.concatenate([gate.levels(given)[TEXTURE], gate.levels(flipped_grey)[TEXTURE]]),
                       np.r_[np.zeros(len(given)), np.ones(len(flipped_grey))], seed)
    gate.invert_w, gate.invert_b = invert.coef_[0], float(invert.intercept_[0])
    if (radiographs is None) != (not_radiographs is None):
        raise ValueError("the radiograph-or-not model needs both radiographs and not_radiographs")
    if radiographs is not None:
        gate.radio_w, gate.radio_b = fit_radiograph_model(radiographs, not_radiographs, seed)
    gate.stats = {"n_train": len(train), "n_val": len(val), "refuse_rate": refuse_rate, "k": gate.k}
    logger.info("Input gate: OOD limits %s (validation quantile %.4f)",
                ", ".join(f"{level} {limit:.3f}" for level, limit in gate.limits.items()), 1 - refuse_rate / len(LEVELS))
    return gate


def gate_member(heads_by_member: Mapping[str, Sequence[str]]) -> str:
    """The member whose features the gate reads: the first with an age head, else the first."""
    for name, heads in heads_by_member.items():
        if AGE in heads:
            return name
    return next(iter(heads_by_member))


def check_network(gate: InputGate, path: str | os.PathLike, member: str, member_sha256: str) -> None:
    """ArtifactError unless `gate` (read from `path`) was fitted on exactly this network file."""
    if gate.member != member or gate.member_sha256 != member_sha256:
        raise ArtifactError(f"{path} was fitted on {gate.member} ({gate.member_sha256[:12]}), not on the current "
                            f"{member} ({member_sha256[:12]}); re-run `train.py --stages gate`")


def load_gate(folder: str | os.PathLike, member: str, member_sha256: str) -> InputGate | None:
    """The folder's gate when it was fitted on exactly this member file, else None (with the reason logged)."""
    path = Path(folder) / GATE_FILE
    if not path.is_file():
        return None
    gate = InputGate.load(path)
    check_network(gate, path, member, member_sha256)
    return gate
