"""Training stages (baseline, regressor, classifier, evaluate) run into a staged artifact folder."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import artifacts as art
from .baseline import HogParams, fit_baseline
from .config import TrainConfig
from .data import attach_paths, find_dataset, load_images, load_or_make_split, read_labels, with_split
from .evaluate import predict_frame, score_predictions, summary_table
from .models import ModelSpec, build_model, freeze_blocks, read_checkpoint_meta, save_checkpoint
from .preprocess import PreprocessSpec
from .stages import DEFAULT_SCHEME
from .training import fit, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """The labelled images of a run with their split and stage."""

    frame: pd.DataFrame  # id, boneage, male, path, split, stage
    failures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def part(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]


def prepare_dataset(cfg: TrainConfig, staging: Path) -> Dataset:
    """Read labels, match images, and reuse or make the split (saved into the artifacts)."""
    if cfg.labels:
        labels_csv, image_dir = Path(cfg.labels), Path(cfg.images or Path(cfg.labels).with_suffix(""))
    else:
        labels_csv, image_dir = find_dataset(cfg.data_dir)
        image_dir = Path(cfg.images) if cfg.images else image_dir
    labels = attach_paths(read_labels(labels_csv), image_dir)
    if cfg.limit and cfg.limit < len(labels):
        labels = labels.sample(n=cfg.limit, random_state=cfg.seed).reset_index(drop=True)
    split = load_or_make_split(labels[["id", "boneage", "male"]], staging / art.SPLIT_FILE, cfg.seed)
    frame = with_split(labels, split)
    frame["stage"] = DEFAULT_SCHEME.stage_of(frame["boneage"], frame["male"])
    logger.info("Data: %d images (%s)", len(frame), frame["split"].value_counts().to_dict())
    return Dataset(frame)


def _images_for(ds: Dataset, part: pd.DataFrame, spec: PreprocessSpec, cfg: TrainConfig):
    images = load_images(part["id"].tolist(), part["path"].tolist(), spec, cfg.cache_dir or None, cfg.workers or None)
    ds.failures.update(dict(images.failures))
    pos = {id_: i for i, id_ in enumerate(images.ids)}
    rows = part[part["id"].isin(pos)]
    return rows, images.images[[pos[i] for i in rows["id"]]]


def train_baseline_stage(cfg: TrainConfig, ds: Dataset, staging: Path) -> None:
    """HOG + XGBoost for age and stage."""
    spec = PreprocessSpec(image_size=cfg.baseline_image_size)
    params = HogParams(cfg.hog_pixels_per_cell, cfg.hog_cells_per_block, cfg.hog_orientations)
    tr_rows, tr_img = _images_for(ds, ds.part("train"), spec, cfg)
    va_rows, va_img = _images_for(ds, ds.part("val"), spec, cfg)
    from .baseline import hog_features

    tr_x = hog_features(tr_img, tr_rows["male"], params)
    va_x = hog_features(va_img, va_rows["male"], params)
    model = fit_baseline(tr_x, tr_rows["boneage"].to_numpy(), tr_rows["stage"].to_numpy(), va_x,
                         va_rows["boneage"].to_numpy(), va_rows["stage"].to_numpy(), spec, params,
                         cfg.xgb_estimators, cfg.xgb_max_depth, cfg.xgb_learning_rate, cfg.seed)
    model.save(staging)


def train_cnn_stage(cfg: TrainConfig, ds: Dataset, staging: Path, task: str) -> dict:
    """Fine-tune an EfficientNet regressor or stage classifier; saves checkpoint + history."""
    spec = PreprocessSpec(image_size=cfg.image_size)
    tr_rows, tr_img = _images_for(ds, ds.part("train"), spec, cfg)
    va_rows, va_img = _images_for(ds, ds.part("val"), spec, cfg)
    age_mean, age_std = float(tr_rows["boneage"].mean()), float(tr_rows["boneage"].std())
    regression = task == "regression"
    model_spec = ModelSpec(task=task, backbone=cfg.backbone, n_outputs=1 if regression else DEFAULT_SCHEME.n_classes,
                           sex_embedding_dim=cfg.sex_embedding_dim, preprocess=spec,
                           age_mean=age_mean if regression else 0.0, age_std=age_std if regression else 1.0)
    net = build_model(model_spec, pretrained=cfg.pretrained)
    freeze_blocks(net, cfg.freeze_blocks)

    def target(rows: pd.DataFrame) -> torch.Tensor:
        if regression:
            return torch.tensor(((rows["boneage"] - age_mean) / age_std).to_numpy(), dtype=torch.float32)
        return torch.tensor(rows["stage"].to_numpy(), dtype=torch.long)

    def tensors(rows, img):
        return torch.from_numpy(img), torch.tensor(rows["male"].to_numpy(), dtype=torch.long), target(rows)

    device = resolve_device(cfg.device)
    logger.info("Training %s on %s: %d train / %d val images at %d px", task, device, len(tr_rows), len(va_rows),
                cfg.image_size)
    result = fit(net, tensors(tr_rows, tr_img), tensors(va_rows, va_img), cfg, device)
    net.load_state_dict(result.state_dict)
    name = "regressor" if regression else "classifier"
    summary = {"best_epoch": result.best_epoch, "best_val_score": result.best_score, "stopped": result.stopped,
               "train_seconds": round(result.seconds, 1), "device": str(device),
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
    save_checkpoint(staging / f"{name}.pt", net.cpu(), cfg.to_dict(), extra=summary)
    result.history.to_csv(staging / art.history_file(name), index=False)
    return summary


def evaluate_stage(cfg: TrainConfig, ds: Dataset, staging: Path) -> dict:
    """Score every model in the staging folder on the holdout (test) split; writes metrics + predictions."""
    test = ds.part("test")
    frame, failures = predict_frame(staging, test, cfg.cache_dir or None, cfg.device, cfg.tta)
    ds.failures.update(failures)
    metrics = score_predictions(frame, n_boot=cfg.bootstrap, seed=cfg.seed)
    (staging / art.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    frame.drop(columns=["path"]).to_csv(staging / art.PREDICTIONS_FILE, index=False)
    return metrics


def _kept_model_lines(staging: Path, trained: dict) -> list[str]:
    """Report lines for CNNs kept from an earlier run: when and how they were trained (from their checkpoints)."""
    lines = []
    for name, filename in (("regressor", art.REGRESSOR_FILE), ("classifier", art.CLASSIFIER_FILE)):
        if name in trained or not (staging / filename).is_file():
            continue
        meta = read_checkpoint_meta(staging / filename)
        cfg = meta.get("config", {})
        lines.append(f"- {name} (kept from the run of {meta.get('created', '?')}, commit {str(meta.get('git_commit'))[:10]}; "
                     f"{cfg.get('backbone')} at {cfg.get('image_size')} px, {cfg.get('epochs')} epochs): "
                     f"{meta.get('extra', {})}")
    return lines


def write_report(cfg: TrainConfig, ds: Dataset, staging: Path, metrics: dict | None, summaries: dict) -> None:
    """A short markdown run report: data, timings, unreadable images, headline metrics."""
    lines = ["# Run report", "", f"- stages: {', '.join(cfg.stages)}", f"- quick: {cfg.quick}",
             f"- images: {len(ds.frame)} ({ds.frame['split'].value_counts().to_dict()})",
             f"- torch {torch.__version__}, python {platform.python_version()}"]
    for stage, seconds in ds.timings.items():
        lines.append(f"- {stage}: {seconds:.0f} s")
    for name, summary in summaries.items():
        lines.append(f"- {name}: {summary}")
    lines += _kept_model_lines(staging, summaries)
    lines += ["", f"## Unreadable images ({len(ds.failures)})", ""]
    lines += [f"- {i}: {msg}" for i, msg in sorted(ds.failures.items())] or ["none"]
    if metrics:
        lines += ["", "## Holdout metrics (test split)", "", "```", summary_table(metrics), "```"]
    (staging / art.REPORT_FILE).write_text("\n".join(lines) + "\n")


def run(cfg: TrainConfig) -> dict:
    """Run the configured stages; artifacts appear in cfg.out only if every stage finished."""
    metrics: dict | None = None
    summaries: dict = {}
    with art.staged_folder(cfg.out) as staging:
        ds = prepare_dataset(cfg, staging)
        for stage in cfg.stages:
            t0 = time.time()
            logger.info("=== stage %s ===", stage)
            if stage == "baseline":
                train_baseline_stage(cfg, ds, staging)
            elif stage in ("regressor", "classifier"):
                task = "regression" if stage == "regressor" else "classification"
                summaries[stage] = train_cnn_stage(cfg, ds, staging, task)
            elif stage == "evaluate":
                metrics = evaluate_stage(cfg, ds, staging)
            ds.timings[stage] = time.time() - t0
        cfg.save(staging / art.CONFIG_FILE)
        write_report(cfg, ds, staging, metrics, summaries)
    if metrics:
        print(summary_table(metrics))
    return metrics or {}


def seed_everything(seed: int) -> None:
    """Seed numpy and torch."""
    np.random.seed(seed)
    torch.manual_seed(seed)
