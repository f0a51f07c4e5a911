"""Score every saved model (CNN and HOG + XGBoost) on a labelled image set; also a CLI.

python -m boneage_core.evaluate --artifacts DIR --images DIR --labels CSV --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import artifacts as art
from .baseline import META_FILE as BASELINE_META, HogXGBoost
from .data import LabelError, attach_paths, load_images, read_labels
from .metrics import classification_breakdown, classification_metrics, regression_breakdown, regression_metrics
from .models import load_checkpoint
from .stages import DEFAULT_SCHEME, StageScheme
from .training import predict_outputs, resolve_device

logger = logging.getLogger(__name__)

MODEL_NAMES = ("regressor", "classifier", "baseline_regressor", "baseline_classifier")


def _aligned(frame: pd.DataFrame, images) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of `frame` whose image loaded, in the image array's order."""
    pos = {id_: i for i, id_ in enumerate(images.ids)}
    keep = frame[frame["id"].isin(pos)].copy()
    return keep, images.images[[pos[i] for i in keep["id"]]]


def _cnn_outputs(path: Path, frame: pd.DataFrame, cache_dir, device, tta: bool, failures: dict) -> tuple[str, pd.Series, np.ndarray | None]:
    net, meta = load_checkpoint(path, device)
    spec = net.spec
    images = load_images(frame["id"].tolist(), frame["path"].tolist(), spec.preprocess, cache_dir)
    failures.update(dict(images.failures))
    rows, pixels = _aligned(frame, images)
    out = predict_outputs(net, torch.from_numpy(pixels), torch.tensor(rows["male"].to_numpy(), dtype=torch.long),
                          device, tta=tta, progress=True)
    if spec.task == "regression":
        ages = spec.ages_from_output(out)
        return spec.task, pd.Series(ages, index=rows.index), None
    probs = np.exp(out)
    return spec.task, pd.Series(probs.argmax(1), index=rows.index), probs


def predict_frame(artifacts_dir: str | Path, frame: pd.DataFrame, cache_dir=None, device: str = "auto",
                  tta: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Add one prediction column per saved model to a frame with id, path, boneage, male.

    Returns (frame with model columns, {id: error} for images that could not be read).
    """
    artifacts_dir = Path(artifacts_dir)
    dev = resolve_device(device)
    out = frame.copy()
    failures: dict[str, str] = {}
    for name, filename in (("regressor", art.REGRESSOR_FILE), ("classifier", art.CLASSIFIER_FILE)):
        if (artifacts_dir / filename).is_file():
            _, values, probs = _cnn_outputs(artifacts_dir / filename, frame, cache_dir, dev, tta, failures)
            out[name] = values
            if probs is not None:
                for k in range(probs.shape[1]):
                    out.loc[values.index, f"{name}_p{k}"] = probs[:, k]
    if (artifacts_dir / BASELINE_META).is_file():
        model = HogXGBoost.load(artifacts_dir)
        images = load_images(frame["id"].tolist(), frame["path"].tolist(), model.spec, cache_dir)
        failures.update(dict(images.failures))
        rows, pixels = _aligned(frame, images)
        feats = model.features(pixels, rows["male"].to_numpy())
        if model.regressor is not None:
            out.loc[rows.index, "baseline_regressor"] = model.predict_age(feats)
        if model.classifier is not None:
            out.loc[rows.index, "baseline_classifier"] = model.predict_stage_proba(feats).argmax(1)
    return out, failures


def score_predictions(frame: pd.DataFrame, scheme: StageScheme = DEFAULT_SCHEME, n_boot: int = 500,
                      seed: int = 0) -> dict:
    """Metrics (with by-sex / by-age-group breakdowns) for every model column present in `frame`."""
    frame = frame.assign(stage=scheme.stage_of(frame["boneage"], frame["male"]))
    results: dict = {}
    for name in MODEL_NAMES:
        if name not in frame or frame[name].isna().all():
            continue
        sub = frame[frame[name].notna()]
        if name.endswith("regressor"):
            stats = regression_metrics(sub["boneage"], sub[name])
            stats.update(regression_breakdown(sub.assign(pred=sub[name]), n_boot, seed))
        else:
            pred = sub[name].astype(int)
            stats = classification_metrics(sub["stage"], pred, scheme.n_classes, scheme.names)
            stats.update(classification_breakdown(sub.assign(pred_stage=pred), scheme.n_classes, n_boot, seed))
        results[name] = stats
    return results


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_table(metrics: dict) -> str:
    """A short plain-text table of the headline figures per model."""
    lines = [f"{'model':<22}{'n':>6}{'MAE':>9}{'RMSE':>9}{'R2':>8}{'acc':>8}{'F1mac':>8}{'QWK':>8}"]
    for name, m in metrics.items():
        lines.append(f"{name:<22}{m.get('n', 0):>6}{_fmt(m.get('mae')):>9}{_fmt(m.get('rmse')):>9}{_fmt(m.get('r2')):>8}"
                     f"{_fmt(m.get('accuracy')):>8}{_fmt(m.get('f1_macro')):>8}{_fmt(m.get('qwk')):>8}")
    return "\n".join(lines)


def evaluate_folder(artifacts_dir: str | Path, images_dir: str | Path, labels_csv: str | Path,
                    cache_dir=None, device: str = "auto", tta: bool = False, n_boot: int = 500) -> tuple[dict, pd.DataFrame]:
    """Score the saved models on a labelled folder (any supported label format)."""
    labels = attach_paths(read_labels(labels_csv), images_dir)
    frame, failures = predict_frame(artifacts_dir, labels, cache_dir, device, tta)
    if failures:
        logger.warning("%d image(s) could not be read and were left out: %s", len(failures), list(failures)[:5])
    metrics = score_predictions(frame, n_boot=n_boot)
    if not metrics:
        raise FileNotFoundError(f"no models found in {artifacts_dir}")
    return metrics, frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--images", required=True, help="folder of <id>.<png|jpg|webp|dcm> images")
    parser.add_argument("--labels", required=True, help="label CSV in any supported RSNA format")
    parser.add_argument("--out", help="write metrics JSON here")
    parser.add_argument("--predictions", help="also write per-image predictions CSV here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation for the CNNs (default: as the artifacts were evaluated)")
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        tta = art.evaluated_with_tta(args.artifacts) if args.tta is None else args.tta
        metrics, frame = evaluate_folder(args.artifacts, args.images, args.labels, device=args.device, tta=tta,
                                         n_boot=args.bootstrap)
    except (LabelError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    print(summary_table(metrics))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    if args.predictions:
        frame.drop(columns=["path"]).to_csv(args.predictions, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
