"""The one frozen run configuration; train_cli fills it from argparse and saves it with the run."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .heads import AGE, STAGE
from .imagenet import BACKBONES
from .manifest import MODEL_SUFFIX
from .models import INIT_IMAGENET
from .preprocess import PreprocessSpec
from .training import FitConfig, Phase, parse_phases
from .views import NO_TTA, TTA_SCALES, VIEWS_KEY, Views, as_views, views_from_record

#: CNN training stages and the heads of the model file each writes (<stage>.pt): the separate-model
#: layout (regressor + classifier) and one multi-head network (age and stage from one backbone pass).
MODEL_LAYOUTS: dict[str, tuple[str, ...]] = {"regressor": (AGE,), "classifier": (STAGE,), "multihead": (AGE, STAGE)}
STAGE_ORDER = ("baseline", *MODEL_LAYOUTS, "gate", "calibrate", "evaluate")
DEFAULT_STAGES = ("baseline", "multihead", "gate", "calibrate", "evaluate")
#: Where a --quick run writes unless --out names a folder (never the committed artifacts/).
QUICK_OUT = "runs/quick"
#: What --model-name accepts: the stem of the model file (NAME.pt) a CNN stage writes instead of <stage>.pt.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")

#: Named starting points for `train.py --preset NAME`: TrainConfig field values, the FitConfig ones under "fit".
#: Flags given on the command line override them; the run records the preset's name in config.json.
_PRESET_STAGES = ("multihead", "gate", "calibrate", "evaluate")  # the preset trains one multi-head network (the baseline apart)
PRESETS: dict[str, dict[str, Any]] = {
    # the measured CPU recipe (2 cores): 192 px, stem + 3 stages frozen, 6 epochs, bf16 autocast
    "cpu": {"stages": _PRESET_STAGES, "phases": "192:6:1e-3:3", "views": TTA_SCALES,
            "fit": {"warmup_epochs": 0.3, "patience": 3, "cpu_bf16": True}},
    # one H100, about 10 minutes per command: full resolution of the 299 px training copy (larger sizes only
    # upsample), nothing frozen, AdamW with warm-up + cosine, flips, EMA; the time budget bounds a slow card
    "gpu": {"stages": _PRESET_STAGES, "phases": "", "image_size": 299, "epochs": 30,
            "lr": 1e-3, "freeze_blocks": 0, "views": TTA_SCALES,
            "fit": {"optimizer": "adamw", "batch_size": 64, "flip_prob": 0.5, "ema_decay": 0.998, "patience": 8,
                    "max_train_minutes": 8.0}},
}


#: What `train.py --resume RUN` may change in the run's config: where the data and caches are, the device and
#: workers, the stages run (gate, calibrate, evaluate after the last chunk) and each chunk's time budget. Every
#: other field (phases, backbone, image size, seed, batch, optimizer, ...) is the run's plan.
RESUME_MAY_CHANGE = frozenset({"data_dir", "labels", "images", "cache_dir", "device", "workers", "stages",
                               "fit.max_train_minutes"})


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults are the CPU-friendly full run."""

    data_dir: str = ""
    labels: str = ""  # optional explicit label CSV (else found in data_dir)
    images: str = ""  # optional explicit image folder
    out: str = "artifacts"
    stages: tuple[str, ...] = DEFAULT_STAGES
    seed: int = 42  # initialisation, augmentation and batch order (not the split)
    split_seed: int = 42  # the split a new --out folder gets (a folder's split.csv is reused): members share it
    quick: bool = False
    limit: int = 0  # use at most this many labelled images (0 = all); --quick sets it
    cache_dir: str = ".cache"
    device: str = "auto"
    workers: int = 0  # preprocessing processes (0 = cpu count, at most 4)
    # CNN
    backbone: str = "tf_efficientnet_lite0"
    init_from: str = INIT_IMAGENET  # imagenet | scratch | path of a checkpoint to continue from
    phases: str = ""  # SIZE:EPOCHS[:LR[:FREEZE[:MINUTES]]],... (empty: one phase from the four fields below)
    image_size: int = 256
    epochs: int = 30
    lr: float = 1e-3
    freeze_blocks: int = 0  # freeze the stem and this many leading backbone stages (cheaper CPU training)
    hand_crop: bool = False  # crop each image to the hand found in it (preprocess.hand_crop_box) before resizing
    sex_embedding_dim: int = 16
    fit: FitConfig = field(default_factory=FitConfig)  # the training loop's own settings (batch, optimizer, EMA, budget)
    members: tuple[str, ...] = ()  # model files served and evaluated (empty: the ones this run trained)
    gate_network: str = ""  # model file whose features the gate stage fits the input gate on (empty: the first member with an age head)
    gate_fit_images: int = 2000  # training films of the gate's k-NN banks (the gate stage)
    gate_turned: int = 800  # the first of them also turned, mirrored, inverted and shifted for the orientation, grey-scale,
    # laterality and radiograph-or-not models
    gate_counterexample_sources: int = 150  # films of those cut up and photographed into the radiograph model's negatives
    gate_counterexample_variants: int = 16  # variants of each kind of counterexample (counterexamples.counterexamples)
    # HOG + XGBoost baseline
    baseline_image_size: int = 128
    hog_pixels_per_cell: int = 16
    hog_cells_per_block: int = 2
    hog_orientations: int = 9
    xgb_estimators: int = 600
    xgb_max_depth: int = 5
    xgb_learning_rate: float = 0.05
    # evaluation
    bootstrap: int = 500
    views: Views = NO_TTA  # test-time zoom factors of the calibrate and evaluate stages, served by the manifest
    # naming and provenance
    model_name: str = ""  # the CNN stage writes <model_name>.pt instead of <stage>.pt (ensemble members in one folder)
    preset: str = ""  # the --preset the run started from (a record; the fields above hold its values)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {STAGE_ORDER}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {tuple(PRESETS)}")
        self._check_model_name()
        self._check_gate_counts()
        object.__setattr__(self, "views", as_views(self.views))  # validated, in TTA_SCALES order
        self.training_phases()  # validates the phase text

    def _check_gate_counts(self) -> None:
        counts = {k: getattr(self, k) for k in ("gate_fit_images", "gate_turned", "gate_counterexample_sources",
                                                "gate_counterexample_variants")}
        low = [f"{k} = {v}" for k, v in counts.items() if v < 1]
        if low:
            raise ValueError(f"the gate stage needs at least one of each: {', '.join(low)}")
        if self.gate_turned > self.gate_fit_images:
            raise ValueError(f"gate_turned ({self.gate_turned}) are the first of the gate_fit_images "
                             f"({self.gate_fit_images}): it cannot be larger")

    def _check_model_name(self) -> None:
        """Validate --model-name and store it without a .pt suffix."""
        if not self.model_name:
            return
        stem = self.model_name.removesuffix(MODEL_SUFFIX)
        if not MODEL_NAME_PATTERN.fullmatch(stem):
            raise ValueError(f"model name {self.model_name!r}: use letters, digits, _ and - only (no folders); "
                             f"the file is NAME{MODEL_SUFFIX}")
        cnn_stages = [s for s in self.stages if s in MODEL_LAYOUTS]
        if len(cnn_stages) > 1:
            raise ValueError(f"model name {self.model_name!r} names one model file, but the stages train "
                             f"{len(cnn_stages)} ({', '.join(cnn_stages)}); run them one at a time")
        object.__setattr__(self, "model_name", stem)

    def model_stem(self, stage: str) -> str:
        """Stem of the model file the CNN stage `stage` writes: --model-name when given, else the stage."""
        return self.model_name or stage

    def preprocess_spec(self, image_size: int) -> PreprocessSpec:
        """The CNN input of this run at one image size (recorded in the checkpoint; inference repeats it)."""
        return PreprocessSpec(image_size=image_size, hand_crop=self.hand_crop)

    def training_phases(self) -> tuple[Phase, ...]:
        """The phases of each CNN stage (one phase from image_size/epochs/lr/freeze_blocks when unset)."""
        if self.phases:
            return parse_phases(self.phases)
        return (Phase(self.image_size, self.epochs, self.lr, self.freeze_blocks),)

    def fit_config(self) -> FitConfig:
        """The settings the training loop uses, with the run's seed."""
        return replace(self.fit, seed=self.seed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stages"], out["members"], out["views"] = list(self.stages), list(self.members), list(self.views)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("stages", "members"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs[VIEWS_KEY] = views_from_record(data, "config")  # runs before view sets saved "tta": true/false
        if isinstance(kwargs.get("fit"), dict):
            known = {f.name for f in fields(FitConfig)}
            kwargs["fit"] = FitConfig(**{k: v for k, v in kwargs["fit"].items() if k in known})
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def quick_version(self) -> "TrainConfig":
        """Settings for a short CPU smoke run on a few hundred images."""
        phases = ",".join(f"{min(p.image_size, 96)}:{min(p.epochs, 2)}:{p.lr:g}:{p.freeze_blocks}"
                          for p in self.training_phases())
        fit = replace(self.fit, batch_size=min(self.fit.batch_size, 32), warmup_epochs=0.5, patience=2)
        return replace(
            self, quick=True, limit=self.limit or 300, phases=phases, fit=fit,
            baseline_image_size=64, xgb_estimators=min(self.xgb_estimators, 60),
            xgb_max_depth=min(self.xgb_max_depth, 3), bootstrap=50, sex_embedding_dim=min(self.sex_embedding_dim, 8),
        )


def preset_config(name: str) -> TrainConfig:
    """The default TrainConfig with the preset `name`'s values (and its name recorded)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {tuple(PRESETS)}")
    values = dict(PRESETS[name])
    fit = replace(FitConfig(), **values.pop("fit", {}))
    return replace(TrainConfig(), **values, fit=fit, preset=name)


def _flat(cfg: TrainConfig) -> dict:
    """The config's fields by name, FitConfig's as fit.<name>."""
    values = cfg.to_dict()
    fit = values.pop("fit")
    return {**values, **{f"fit.{k}": v for k, v in fit.items()}}


def resume_conflicts(run: TrainConfig, asked: TrainConfig) -> list[str]:
    """'name: run value -> asked value' for every field `asked` changes that a resume of `run` may not change."""
    before, after = _flat(run), _flat(asked)
    return [f"{k}: {before[k]!r} -> {after[k]!r}" for k in before
            if k not in RESUME_MAY_CHANGE and before[k] != after[k]]
