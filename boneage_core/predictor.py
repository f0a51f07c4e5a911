"""Inference API for every front end: Predictor.load(artifacts) -> predict() and explain() (Grad-CAM)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import artifacts as art
from .clinical import ErrorModel, PredictionInterval
from .imaging import ImageLoadError, ImageSource, load_gray, source_name
from .models import BoneAgeNet, SexBound, load_checkpoint
from .preprocess import input_warnings, preprocess, resize_to
from .stages import StageScheme
from .training import tta_views

logger = logging.getLogger(__name__)

TARGETS = ("regressor", "classifier")


def years_months(months: float) -> str:
    """124.6 -> '10 y 5 m' (rounded to whole months)."""
    total = int(round(months))
    return f"{total // 12} y {total % 12} m"


@dataclass
class Prediction:
    """One radiograph's result: bone age, stage with probabilities, and what the model saw."""

    name: str
    male: bool
    bone_age_months: float | None
    stage: int
    stage_name: str
    stage_probabilities: dict[str, float] | None
    stage_source: str  # "classifier" or "regressor" (stage derived from the predicted age)
    stage_from_age: int | None
    interval: PredictionInterval | None
    model_input: np.ndarray = field(repr=False)  # (S, S) float in [0, 1], the preprocessed image
    original: np.ndarray = field(repr=False)  # float gray in [0, 1] at the file's own size
    warnings: list[str] = field(default_factory=list)  # why this result may be unreliable

    @property
    def years_months(self) -> str | None:
        return None if self.bone_age_months is None else years_months(self.bone_age_months)

    @property
    def stages_agree(self) -> bool | None:
        """Whether the classifier's stage matches the stage of the regressor's age (None if one is missing)."""
        if self.stage_from_age is None or self.stage_source != "classifier":
            return None
        return self.stage == self.stage_from_age

    def to_dict(self) -> dict:
        """JSON-friendly summary (no image arrays)."""
        return {
            "name": self.name, "sex": "M" if self.male else "F",
            "bone_age_months": None if self.bone_age_months is None else round(self.bone_age_months, 2),
            "bone_age_years_months": self.years_months,
            "stage": self.stage, "stage_name": self.stage_name, "stage_source": self.stage_source,
            "stage_probabilities": None if self.stage_probabilities is None else {
                k: round(v, 4) for k, v in self.stage_probabilities.items()},
            "stage_from_age": self.stage_from_age,
            "interval": None if self.interval is None else self.interval.to_dict(),
            "warnings": list(self.warnings),
        }


@dataclass
class Explanation:
    """A Grad-CAM heatmap aligned to the input image; the overlay is blended on first use."""

    target: str
    heatmap: np.ndarray  # (H, W) float in [0, 1], same shape as Prediction.original
    model_heatmap: np.ndarray  # (S, S), on the model input
    gray: np.ndarray = field(repr=False)  # the image it explains (Prediction.original)
    alpha: float = 0.4
    class_index: int | None = None  # the explained stage, for the classifier

    @cached_property
    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the heatmap blended over the image at `alpha`."""
        return overlay_heatmap(self.gray, self.heatmap, self.alpha)

    @property
    def is_blank(self) -> bool:
        """True when no region raised the target (Grad-CAM's ReLU left nothing): nothing to show."""
        return bool(self.model_heatmap.max() <= 0)


def _gray_of(source: ImageSource | np.ndarray, name: str | None) -> tuple[np.ndarray, str]:
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ImageLoadError(f"expected a 2-D grayscale array, got shape {source.shape}")
        return source.astype(np.float32, copy=False), name or "array"
    name = name or source_name(source)
    return load_gray(source, name=name), name


def overlay_heatmap(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over a gray image; returns uint8 RGB."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    lo, hi = float(gray.min()), float(gray.max())
    shown = (gray - lo) / (hi - lo) if hi > lo else gray  # display only: a plain min-max stretch
    rgb = np.repeat(shown[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, heatmap.astype(np.float32), use_rgb=True, image_weight=1.0 - alpha)


class Predictor:
    """The saved CNNs (regressor and/or classifier) of an artifacts folder, ready for single images."""

    def __init__(self, models: dict[str, BoneAgeNet], meta: dict[str, dict], device: torch.device,
                 error_model: ErrorModel | None = None, tta: bool = False):
        if not models:
            raise ValueError("a Predictor needs at least one model")
        self.models = models
        self.meta = meta
        self.device = device
        self.error_model = error_model
        self.tta = tta  # default test-time augmentation: as the holdout metrics were computed
        first = next(iter(models.values()))
        self.scheme: StageScheme = first.spec.scheme
        if any(net.spec.scheme != self.scheme for net in models.values()):
            raise ValueError("the regressor and the classifier use different stage schemes")
        if "classifier" in models and models["classifier"].spec.n_outputs != self.scheme.n_classes:
            raise ValueError("the classifier's outputs do not match its stage scheme")

    @classmethod
    def load(cls, artifacts_dir: str | Path = "artifacts", device: str | torch.device = "cpu") -> "Predictor":
        """Load regressor.pt / classifier.pt (whichever exist) and the holdout error model from predictions.csv."""
        folder = Path(artifacts_dir)
        dev = torch.device(device)
        models, meta = {}, {}
        for name, filename in (("regressor", art.REGRESSOR_FILE), ("classifier", art.CLASSIFIER_FILE)):
            if (folder / filename).is_file():
                models[name], meta[name] = load_checkpoint(folder / filename, dev)
        if not models:
            raise FileNotFoundError(f"no trained CNN in {folder} (expected {art.REGRESSOR_FILE} and/or "
                                    f"{art.CLASSIFIER_FILE}); run train.py first")
        tta = art.evaluated_with_tta(folder)
        error_model = None
        predictions = folder / art.PREDICTIONS_FILE
        if "regressor" in models and predictions.is_file():
            try:
                error_model = ErrorModel.from_predictions(pd.read_csv(predictions))
            except (ValueError, KeyError) as exc:
                logger.warning("No prediction intervals: %s", exc)
        logger.info("Loaded %s from %s on %s (TTA %s)", ", ".join(models), folder, dev, "on" if tta else "off")
        return cls(models, meta, dev, error_model, tta)

    @property
    def has_regressor(self) -> bool:
        return "regressor" in self.models

    @property
    def has_classifier(self) -> bool:
        return "classifier" in self.models

    def _input(self, net: BoneAgeNet, gray: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        image = preprocess(gray, net.spec.preprocess)
        return image, torch.from_numpy(image)[None, None].to(self.device)

    def _male(self, male: bool) -> torch.Tensor:
        return torch.tensor([int(bool(male))], device=self.device)

    @torch.inference_mode()
    def _run(self, net: BoneAgeNet, x: torch.Tensor, male: bool, tta: bool) -> np.ndarray:
        views = tta_views(x) if tta else [x]
        outs = [net(v, self._male(male)).float() for v in views]
        if net.spec.task == "regression":
            return torch.stack(outs).mean(0).cpu().numpy()
        return torch.stack([torch.softmax(o, dim=1) for o in outs]).mean(0)[0].cpu().numpy()

    def predict(self, source: ImageSource | np.ndarray, male: bool, tta: bool | None = None,
                name: str | None = None) -> Prediction:
        """Bone age (months), stage with probabilities, and the model's input for one image or gray array.

        tta=None uses the artifacts' own setting (how their holdout metrics and intervals were made).
        """
        tta = self.tta if tta is None else tta
        gray, name = _gray_of(source, name)
        try:
            age, model_input = None, None
            if self.has_regressor:
                net = self.models["regressor"]
                model_input, x = self._input(net, gray)
                scaled = float(self._run(net, x, male, tta)[0])
                age = float(net.spec.ages_from_output(scaled))
            stage_from_age = None if age is None else int(self.scheme.stage_of(age, male))
            probs = None
            if self.has_classifier:
                net = self.models["classifier"]
                image, x = self._input(net, gray)
                model_input = image if model_input is None else model_input
                p = self._run(net, x, male, tta)
                probs = {n: float(v) for n, v in zip(self.scheme.names, p)}
                stage, source_kind = int(p.argmax()), "classifier"
            else:
                stage, source_kind = int(stage_from_age), "regressor"
        except ImageLoadError as exc:
            raise ImageLoadError(f"{name}: {exc}") from exc
        interval = None if (age is None or self.error_model is None) else self.error_model.interval(age)
        return Prediction(name, bool(male), age, stage, self.scheme.names[stage], probs, source_kind, stage_from_age,
                          interval, model_input, gray, input_warnings(model_input))

    def explain(self, source: ImageSource | np.ndarray, male: bool, target: str = "regressor",
                alpha: float = 0.4, name: str | None = None, class_index: int | None = None) -> Explanation:
        """Grad-CAM on conv_head: raw score for the regressor, a stage for the classifier.

        For the classifier, pass the predicted stage (Prediction.stage) as class_index so the map explains
        the stage shown; without it the single-view argmax is used.
        """
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, RawScoresOutputTarget

        if target not in self.models:
            raise ValueError(f"no {target} loaded; available: {', '.join(self.models)}")
        gray, name = _gray_of(source, name)
        net = self.models[target]
        _, x = self._input(net, gray)
        wrapped = SexBound(net, self._male(male)).eval()
        if target == "classifier":
            if class_index is None:
                with torch.inference_mode():
                    class_index = int(net(x, self._male(male)).argmax(1)[0])
            targets = [ClassifierOutputTarget(int(class_index))]
        else:
            class_index = None
            targets = [RawScoresOutputTarget()]
        with GradCAM(model=wrapped, target_layers=[net.target_layer]) as cam:
            model_heatmap = cam(input_tensor=x, targets=targets)[0]
        heatmap = np.clip(resize_to(model_heatmap, gray.shape), 0.0, 1.0)  # inverse of the squash
        return Explanation(target, heatmap, model_heatmap, gray, alpha, class_index)

