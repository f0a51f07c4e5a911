"""Inference API for every front end: Predictor.load(artifacts) -> predict() and explain() (Grad-CAM).

A Predictor is the ensemble of an artifacts folder (:class:`ensemble.Ensemble`: the members listed in its manifest,
one multi-head file, a regressor + classifier pair, or several of either) put to single images: one image is
prepared once per distinct input, run through :meth:`Ensemble.outputs` (the wiring the holdout metrics were made with)
behind the input gate, and read out as a :class:`Prediction`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .calibration import PredictionInterval
from .ensemble import Ensemble
from .errors import InputError
from .gate import NO_CORRECTION, GateVerdict, NotARadiographError
from .heads import AGE, STAGE, get_head
from .imaging import (ImageLoadError, ImageSource, check_gray_array, compression_warnings, jpeg_quality, load_gray,
                      read_bytes, source_name)
from .inference import to_input
from .models import BoneAgeNet, HeadOutput
from .preprocess import NOISE_LIMIT, crop_box, film_grain, grain_warnings, heatmap_to_original, input_warnings, prepare
from .report import HEATMAP_CMAP, years_months
from .runtime import torch_net
from .views import Views, as_views
from .vocab import STAGE_FROM_AGE, STAGE_FROM_HEAD, parse_sex, sex_code

logger = logging.getLogger(__name__)

#: Months between the largest and smallest member estimate above which the report warns that the networks disagree.
#: On the 1,892 validation films as given (served members, two views) 16 (0.8 %) lie above 30 months apart, read with
#: MAE 24.1 against 7.39; on 150 validation films under JPEG q30 8 % (MAE 17.2 against 7.69), with noise of 3 grey
#: levels 3.3 % (30.8 against 7.9): docs/shift.md, "Networks that disagree".
MEMBER_SPREAD_ABOVE = 30.0


@dataclass
class Prediction:
    """One radiograph's result: bone age, stage with probabilities, and what the model saw."""

    name: str
    male: bool
    bone_age_months: float | None
    stage: int
    stage_name: str
    stage_probabilities: dict[str, float] | None
    stage_source: str  # STAGE_FROM_HEAD or STAGE_FROM_AGE
    stage_from_age: int | None
    interval: PredictionInterval | None
    model_input: np.ndarray = field(repr=False)  # (S, S) float in [0, 1], the first member's input
    original: np.ndarray = field(repr=False)  # float gray in [0, 1] at the file's own size
    warnings: list[str] = field(default_factory=list)  # why this result may be unreliable
    gate: GateVerdict | None = None  # the input gate's verdict (None without a gate)
    turn: int = 0  # quarter turns (np.rot90 k) the gate applied before scoring; `original` is the corrected image
    mirrored: bool = False  # the gate read it as a right hand (or a mirrored film) and mirrored it before scoring
    inverted: bool = False  # the gate read its grey scale as inverted and inverted it back before scoring

    @property
    def years_months(self) -> str | None:
        return None if self.bone_age_months is None else years_months(self.bone_age_months)

    def to_dict(self) -> dict:
        """JSON-friendly summary (no image arrays)."""
        return {
            "name": self.name, "sex": sex_code(self.male),
            "bone_age_months": None if self.bone_age_months is None else round(self.bone_age_months, 2),
            "bone_age_years_months": self.years_months,
            "stage": self.stage, "stage_name": self.stage_name, "stage_source": self.stage_source,
            "stage_probabilities": None if self.stage_probabilities is None else {
                k: round(v, 4) for k, v in self.stage_probabilities.items()},
            "stage_from_age": self.stage_from_age,
            "interval": None if self.interval is None else self.interval.to_dict(),
            "warnings": list(self.warnings),
            "input_gate_score": None if self.gate is None else round(self.gate.score, 3),
            "input_gate_radiograph_probability": None if self.gate is None or math.isnan(self.gate.radiograph_probability)
            else round(self.gate.radiograph_probability, 3),
            "turned_degrees": 90 * self.turn, "mirrored": self.mirrored, "grey_scale_inverted": self.inverted,
        }


@dataclass
class Explanation:
    """A Grad-CAM heatmap aligned to the input image; the overlay is blended on first use."""

    head: str
    heatmap: np.ndarray  # (H, W) float in [0, 1], same shape as Prediction.original (0 outside a hand crop)
    model_heatmap: np.ndarray  # (S, S), on the model input
    gray: np.ndarray = field(repr=False)  # the image it explains (Prediction.original)
    alpha: float = 0.4
    class_index: int | None = None  # the explained stage, for the stage head

    @cached_property
    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the heatmap blended over the image at `alpha`."""
        return overlay_heatmap(self.gray, self.heatmap, self.alpha)

    @property
    def is_blank(self) -> bool:
        """True when no region raised the target (Grad-CAM's ReLU left nothing): nothing to show."""
        return bool(self.model_heatmap.max() <= 0)


def gray_of(source: ImageSource | np.ndarray, name: str | None = None) -> tuple[np.ndarray, str, list[str]]:
    """An image source or a 2-D array -> (float gray image, display name, what the file says of its reading: a strongly
    compressed JPEG); the file is read once. InputError for bad arrays."""
    if isinstance(source, np.ndarray):
        name = name or "array"
        return check_gray_array(source, name), name, []
    name = name or source_name(source)
    data = read_bytes(source)
    return load_gray(data, name=name), name, compression_warnings(jpeg_quality(data))


def spread_warnings(spread: float) -> list[str]:
    """What the report says when the members' age estimates lie more than MEMBER_SPREAD_ABOVE months apart."""
    if spread <= MEMBER_SPREAD_ABOVE:
        return []
    return [f"the ensemble's networks disagree: their estimates lie {spread:.0f} months apart (above "
            f"{MEMBER_SPREAD_ABOVE:g}); films read this way were read with about 3 times the usual error. The estimate "
            "is their mean; check the film's quality (compression, noise, contrast, framing) and the estimate"]


def overlay_heatmap(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over a gray image; returns uint8 RGB.

    Each pixel's colour weight is `alpha` times its heat: where the map is cold the film shows untinted (a flat
    blend would lay jet's dark blue over the whole film); at the hottest point the colour weighs `alpha`.
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    lo, hi = float(gray.min()), float(gray.max())
    shown = (gray - lo) / (hi - lo) if hi > lo else gray  # display only: a plain min-max stretch
    heat = np.clip(heatmap.astype(np.float32), 0.0, 1.0)
    colour = colormaps[HEATMAP_CMAP](heat)[..., :3].astype(np.float32)
    weight = (alpha * heat)[..., None]
    rgb = (1.0 - weight) * shown[..., None].astype(np.float32) + weight * colour
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


class Predictor(Ensemble):
    """The CNN ensemble of an artifacts folder (:class:`ensemble.Ensemble`), ready for single images."""

    def _gated_outputs(self, gray: np.ndarray, male: bool, views: Views, name: str):
        """The ensemble's outputs behind the input gate (``InputGate.decide``): refuses non-radiographs, scores a film
        corrected (inverted back, turned, mirrored) when the gate finds it needs it.

        Corrections are tried on the gate member alone (the laterality test reads every image's mirror image there);
        the ensemble runs again only on a corrected image that will be scored. A grainy film is smoothed for the members
        (``preprocess.film_grain``, measured once) and judged by the gate as given. Returns (the scored gray image, outputs, the first
        member's model input in [0, 1], verdict, warnings, correction).
        """
        grain = film_grain(gray)
        grainy = grain > NOISE_LIMIT
        images = self.inputs(gray, grainy)
        out = self.outputs(images, [male], views)
        notes = grain_warnings(grain)
        if out.gate_features is None:
            return gray, out, self._first_input(images), None, notes, NO_CORRECTION
        decision = self.decide(gray, None if grainy else out.gate_features)
        if decision.refused:
            raise NotARadiographError("; ".join([f"{name}: {decision.verdict.reason()}", *decision.refusal_notes]))
        if decision.correction:
            gray = decision.correction.apply(gray)
            images = self.inputs(gray, grainy)
            out = self.outputs(images, [male], views)
        return (gray, out, self._first_input(images), decision.verdict, list(decision.warnings) + notes,
                decision.correction)

    def _first_input(self, images: dict) -> np.ndarray:
        """The first member's model input of one image, float in [0, 1]."""
        return images[next(iter(self.members.values())).spec.preprocess][0].astype(np.float32) / 255.0

    def predict(self, source: ImageSource | np.ndarray, male, views: Views | None = None,
                name: str | None = None) -> Prediction:
        """Bone age (months), stage with probabilities, and the model's input for one image or gray array.

        `male` is required (True/False or M/F): the estimate moves by ~2 years with sex, so it is never guessed.
        views=None uses the artifacts' own test-time views (how their holdout metrics and intervals were made).
        """
        male, views = parse_sex(male), (self.views if views is None else as_views(views))
        gray, name, file_notes = gray_of(source, name)
        try:
            gray, out, model_input, verdict, gate_notes, correction = self._gated_outputs(gray, male, views, name)
        except ImageLoadError as exc:
            raise ImageLoadError(f"{name}: {exc}") from exc
        combined = {head: values[0] for head, values in out.combined.items()}
        age = float(combined[AGE]) if AGE in combined else None
        stage_from_age = None if age is None else int(self.scheme.stage_of(age, male))
        probs = None
        if STAGE in combined:
            p = combined[STAGE]
            probs = {n: float(v) for n, v in zip(self.scheme.names, p)}
            stage, source_kind = int(p.argmax()), STAGE_FROM_HEAD
        else:
            stage, source_kind = int(stage_from_age), STAGE_FROM_AGE
        calibration = self.calibration_for(views)
        interval = None if (age is None or calibration is None) else calibration.interval(age)
        warnings = file_notes + gate_notes + input_warnings(model_input)
        spread = out.age_spread()
        warnings += [] if spread is None else spread_warnings(float(spread[0]))
        if source_kind == STAGE_FROM_HEAD and age is not None:
            warnings += [w for w in [self.scheme.disagreement(stage, age, male)] if w]
        return Prediction(name, male, age, stage, self.scheme.names[stage], probs, source_kind, stage_from_age,
                          interval, model_input, gray, warnings, verdict, correction.turn, correction.mirror,
                          correction.invert)

    def member_for(self, head: str) -> BoneAgeNet:
        """The PyTorch network of the first member with this head (the one Grad-CAM explains: it needs gradients)."""
        for net in self.members.values():
            if head in net.spec.heads:
                return torch_net(net)
        raise InputError(f"no model with a {head!r} head loaded; available heads: {', '.join(self.heads)}")

    def explain(self, source: ImageSource | np.ndarray, male, head: str = AGE, alpha: float = 0.4,
                name: str | None = None, class_index: int | None = None) -> Explanation:
        """HiResCAM (gradient x activation, a faithful Grad-CAM variant) of the first member with `head`.

        The layer and the target come from the head's definition (heads.Head.cam_stage / cam_target): for
        age, what moved the estimate away from the mean age in the direction it moved; for the stage head,
        the stage shown. Measured on the 24 full-size samples: benchmarks/bench_gradcam.py.

        For the stage head, pass the predicted stage (Prediction.stage) as class_index so the map explains
        the stage shown; without it the single-view argmax is used.
        """
        from pytorch_grad_cam import HiResCAM

        male = parse_sex(male)
        net = self.member_for(head)
        gray, name, _ = gray_of(source, name)
        spec = net.spec.preprocess
        box = crop_box(gray, spec)  # found once: the model's input and the heatmap's way back share it
        x = to_input(torch.from_numpy(prepare(gray, spec, box))[None], self.device)  # as member_outputs feeds it
        model = HeadOutput(net, torch.tensor([int(male)], device=self.device), head).eval()
        target = get_head(head).cam_target(class_index)  # reads the output of the CAM's own (only) forward pass
        with HiResCAM(model=model, target_layers=[net.cam_layer(head)]) as cam:
            model_heatmap = cam(input_tensor=x, targets=[target])[0]
        class_index = getattr(target, "category", None)
        heatmap = np.clip(heatmap_to_original(model_heatmap, gray.shape, box), 0.0, 1.0)
        return Explanation(head, heatmap, model_heatmap, gray, alpha, class_index)
