"""Score the saved ensemble, each of its members and the HOG + XGBoost baseline on a labelled image set; also a CLI.

python -m boneage_core.evaluate --artifacts DIR --images DIR --labels CSV --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .baseline import META_FILE as BASELINE_META, HogXGBoost
from .calibration import interval_columns, interval_coverage
from .data import attach_paths, load_images, read_labels
from .ensemble import Ensemble
from .errors import BoneAgeError, ImageLoadError, MissingArtifactError
from .gate import GateDecision
from .heads import AGE, BASELINE, CNN, STAGE, UNCORRECTED, age_stage_column, get_head, head_metrics, system_column
from .imaging import load_gray
from .inference import ensemble_outputs, member_features, resolve_device
from .manifest import model_files
from .preprocess import PreprocessSpec, is_grainy
from .stages import DEFAULT_SCHEME, StageScheme
from .views import Views, add_views_arguments, view_index

logger = logging.getLogger(__name__)

def _aligned(frame: pd.DataFrame, images) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of `frame` whose image loaded, in the image array's order; ImageLoadError when none did."""
    pos = {id_: i for i, id_ in enumerate(images.ids)}
    keep = frame[frame["id"].isin(pos)]
    if len(frame) and keep.empty:
        first = "; ".join(f"{id_}: {message}" for id_, message in images.failures[:3])
        raise ImageLoadError(f"none of the {len(frame)} labelled image(s) could be read (first: {first}); "
                             "check the --images folder")
    return keep, images.images[[pos[i] for i in keep["id"]]]


def member_prefix(model_file: str | Path) -> str:
    """Column prefix of one member's own predictions in a prediction table: its file stem."""
    return Path(model_file).stem


def view_prefix(member: str, scale: float) -> str:
    """Column prefix of a member's (:func:`member_prefix`) predictions on the view of one zoom factor.

    The number is the zoom's position in TTA_SCALES (:func:`views.view_index`), e.g. multihead.view1 = zoom 0.94;
    a zoom outside TTA_SCALES raises ValueError.
    """
    return f"{member}.view{view_index(scale)}"


@dataclass(eq=False)
class NewColumns:
    """Prediction columns made for a frame, returned rather than written into it.

    `table` is indexed like the frame (NaN where an image did not load); `heads` maps each scored column to its
    head ({column: head}); `failures` maps the id of each unreadable image to its error; `gate_features` is the
    gate member's (rows, gate features) from the same backbone pass, when asked for.
    """

    table: pd.DataFrame
    heads: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    gate_features: tuple[pd.Index, np.ndarray] | None = None


def _ensemble_images(ensemble: Ensemble, frame: pd.DataFrame, cache_dir
                     ) -> tuple[pd.Index, dict[PreprocessSpec, np.ndarray], dict[str, str]]:
    """The rows whose image loaded for every member, their model inputs per distinct spec (loaded once per spec,
    cached in `cache_dir`), and {id: error} of the images that did not load."""
    loaded, failures = {}, {}
    for spec in ensemble.specs:
        images = load_images(frame["id"].tolist(), frame["path"].tolist(), spec, cache_dir)
        loaded[spec] = _aligned(frame, images)
        failures.update(dict(images.failures))
    common = None
    for rows, _ in loaded.values():
        common = rows.index if common is None else common.intersection(rows.index)
    return common, {spec: pixels[rows.index.get_indexer(common)] for spec, (rows, pixels) in loaded.items()}, failures


def _add_columns(out: dict[str, pd.Series], index: pd.Index, system: str, decoded: dict[str, np.ndarray],
                 columns: dict[str, str]) -> None:
    for head, values in decoded.items():
        for column, data in get_head(head).columns(system, values).items():
            out[column] = pd.Series(data, index=index)
        columns[system_column(system, head)] = head


def _view_columns(aligned: list[tuple[dict[str, list[np.ndarray]], str]], views: Views) -> dict[str, np.ndarray]:
    """Every member's columns on every test-time view, e.g. multihead.view1_age (not scored, for view ablations)."""
    out: dict[str, np.ndarray] = {}
    for outputs, stem in aligned:
        for head, by_view in outputs.items():
            for scale, values in zip(views, by_view):
                out.update(get_head(head).columns(view_prefix(stem, scale), values))
    return out


def cnn_columns(ensemble: Ensemble, frame: pd.DataFrame, cache_dir, per_view: bool = False) -> NewColumns:
    """Ensemble columns (cnn_age, cnn_stage, cnn_stage_pK) and, for heads with several members, one set per member.

    The ensemble's outputs on its views (:meth:`Ensemble.outputs`, the wiring Predictor uses). With a calibration,
    cnn_age is the corrected estimate, cnn_age_low / cnn_age_high its interval, and the uncorrected ensemble estimate
    is kept as cnn_uncorrected_age. With `per_view` and several views, every member's columns on every view are added
    too (:func:`view_prefix`; written, not scored). Returns a :class:`NewColumns`: the table indexed like `frame` (NaN
    where an image did not load; the caller joins it in one step, so the frame is not built column by column),
    {column: head}, {id: error}, and with a gate the gate member's (rows, gate features) from the same backbone pass.
    """
    common, images, failures = _ensemble_images(ensemble, frame, cache_dir)
    out = ensemble.outputs(images, frame.loc[common, "male"].to_numpy(), progress=True)
    new: dict[str, pd.Series] = {}
    columns: dict[str, str] = {}
    _add_columns(new, common, CNN, out.combined, columns)
    if out.bounds is not None:
        _add_columns(new, common, UNCORRECTED, {AGE: out.raw[AGE]}, columns)
        for column, values in zip(interval_columns(CNN), out.bounds):
            new[column] = pd.Series(values, index=common)
    if AGE in out.combined:
        column = age_stage_column(CNN)
        new[column] = pd.Series(DEFAULT_SCHEME.stage_of(out.combined[AGE], frame.loc[common, "male"].to_numpy(bool)),
                                index=common)
        columns[column] = STAGE
    aligned = [(outputs, member_prefix(name)) for name, outputs in out.members.items()]
    for head in ensemble.heads:
        voters = [(o, stem) for o, stem in aligned if head in o]
        for o, stem in voters if len(voters) > 1 else []:
            _add_columns(new, common, stem, {head: ensemble_outputs([o])[head]}, columns)
    if per_view and len(ensemble.views) > 1:
        new.update({k: pd.Series(v, index=common) for k, v in _view_columns(aligned, ensemble.views).items()})
    result = NewColumns(pd.DataFrame(new, index=frame.index), columns, failures)
    if out.gate_features is not None:
        result.gate_features = (common, out.gate_features)
    return result


def decisions_as_given(ensemble: Ensemble, features: np.ndarray, paths: list) -> list[GateDecision]:
    """The gate's decision on each film as given (:meth:`Ensemble.decide`, the rule the app applies), each file read
    once: a grainy film's row (prepared smoothed, like every member input) is not reused."""
    out = []
    for i, path in enumerate(tqdm(paths, desc="gate", disable=len(paths) < 100)):
        gray = load_gray(path)
        out.append(ensemble.decide(gray, None if is_grainy(gray) else features[i:i + 1]))
    return out


def gate_columns(ensemble: Ensemble, frame: pd.DataFrame, cache_dir,
                 features: tuple[pd.Index, np.ndarray] | None = None) -> pd.DataFrame:
    """The input gate's decision per image, by the rule the app and the CLIs apply (:meth:`Ensemble.decisions`).

    Columns: score as given, refused, turn applied, turn flagged, mirrored back, inverted back. The gate reads each
    film as given, and a correction it tries is prepared like an upload from the same read (:func:`decisions_as_given`).
    The CNN columns score the
    images as given (their labels are for them as filmed); these columns say how often the app would
    refuse, turn or flag a real radiograph. `features` (rows, gate features), when given, are the
    member's from the CNN columns' pass (:func:`cnn_columns`), so its images are not run twice. Returns the
    columns as a frame indexed like `frame` (no columns when the ensemble has no gate; NaN where an image did not load).
    """
    if ensemble.gate is None:
        return pd.DataFrame(index=frame.index)
    if features is None:
        net = ensemble.gate_net
        images = load_images(frame["id"].tolist(), frame["path"].tolist(), net.spec.preprocess, cache_dir)
        rows, pixels = _aligned(frame, images)
        features = rows.index, member_features(net, torch.from_numpy(pixels), ensemble.device, progress=True)
    paths = frame.loc[features[0], "path"].tolist()
    decisions = decisions_as_given(ensemble, features[1], paths)
    out = pd.DataFrame({"gate_score": [d.as_given.score for d in decisions],
                        "gate_refused": [d.refused for d in decisions],
                        "gate_turn": [d.turn for d in decisions],
                        "gate_turn_flagged": [d.turn_flagged for d in decisions],
                        "gate_mirrored": [d.correction.mirror for d in decisions],
                        "gate_inverted": [d.correction.invert for d in decisions]}, index=features[0])
    logger.info("Input gate: %d of %d images would be refused (%d as given), %d turned, %d flagged as maybe rotated, "
                "%d mirrored, %d inverted back", sum(d.refused for d in decisions), len(decisions),
                sum(d.as_given.refused for d in decisions), sum(bool(d.turn) for d in decisions),
                sum(d.turn_flagged for d in decisions), sum(d.correction.mirror for d in decisions),
                sum(d.correction.invert for d in decisions))
    return out.reindex(frame.index)


def baseline_columns(artifacts_dir: Path, frame: pd.DataFrame, cache_dir) -> NewColumns:
    """baseline_age and baseline_stage from the HOG + XGBoost models, when present, with their heads and failures."""
    model = HogXGBoost.load(artifacts_dir)
    images = load_images(frame["id"].tolist(), frame["path"].tolist(), model.spec, cache_dir)
    rows, pixels = _aligned(frame, images)
    feats = model.features(pixels, rows["male"].to_numpy())
    new: dict[str, pd.Series] = {}
    heads: dict[str, str] = {}
    if model.regressor is not None:
        new[system_column(BASELINE, AGE)] = pd.Series(model.predict_age(feats), index=rows.index)
        heads[system_column(BASELINE, AGE)] = AGE
    if model.classifier is not None:
        new[system_column(BASELINE, STAGE)] = pd.Series(model.predict_stage_proba(feats).argmax(1), index=rows.index)
        heads[system_column(BASELINE, STAGE)] = STAGE
    return NewColumns(pd.DataFrame(new, index=frame.index), heads, dict(images.failures))


def predict_frame(artifacts_dir: str | Path, frame: pd.DataFrame, cache_dir=None, device: str = "auto",
                  views: Views | None = None, members: list[str] | None = None, per_view: bool = False,
                  ensemble: Ensemble | None = None) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """Prediction columns for a frame with id, path, boneage, male.

    The CNN columns come from `ensemble`, else from the folder's (:meth:`Ensemble.load` with `members` and `views`:
    the manifest's by default, every checkpoint without TTA without one); `per_view` adds every member's columns on
    every test-time view (:func:`cnn_columns`).
    Returns (frame with prediction columns, {column: head}, {id: error} for unreadable images).
    """
    artifacts_dir = Path(artifacts_dir)
    if ensemble is None and (members or (members is None and model_files(artifacts_dir))):
        ensemble = Ensemble.load(artifacts_dir, resolve_device(device), members, views)
    parts: list[NewColumns] = []
    if ensemble is not None:
        cnn = cnn_columns(ensemble, frame, cache_dir, per_view)
        parts += [cnn, NewColumns(gate_columns(ensemble, frame, cache_dir, cnn.gate_features))]
    if (artifacts_dir / BASELINE_META).is_file():
        parts.append(baseline_columns(artifacts_dir, frame, cache_dir))
    out = pd.concat([frame, *(part.table for part in parts)], axis=1)
    columns = {column: head for part in parts for column, head in part.heads.items()}
    failures = {id_: error for part in parts for id_, error in part.failures.items()}
    return out, columns, failures


def score_predictions(frame: pd.DataFrame, columns: dict[str, str], scheme: StageScheme = DEFAULT_SCHEME,
                      n_boot: int = 500, seed: int = 0) -> dict:
    """Metrics (by-sex / by-age-group breakdowns) per prediction column; each entry names its head."""
    results = head_metrics(frame, columns, scheme, n_boot, seed)
    out = {name: {"head": columns[name], **stats} for name, stats in results.items()}
    coverage = interval_coverage(frame, CNN)
    if coverage is not None and system_column(CNN, AGE) in out:
        out[system_column(CNN, AGE)]["interval"] = coverage
    return out


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_table(metrics: dict) -> str:
    """A short plain-text table of the headline figures per prediction column."""
    lines = [f"{'model':<22}{'n':>6}{'MAE':>9}{'RMSE':>9}{'R2':>8}{'acc':>8}{'F1mac':>8}{'QWK':>8}"]
    for name, m in metrics.items():
        lines.append(f"{name:<22}{m.get('n', 0):>6}{_fmt(m.get('mae')):>9}{_fmt(m.get('rmse')):>9}{_fmt(m.get('r2')):>8}"
                     f"{_fmt(m.get('accuracy')):>8}{_fmt(m.get('f1_macro')):>8}{_fmt(m.get('qwk')):>8}")
        if m.get("interval"):
            iv = m["interval"]
            lines.append(f"{'':<4}{iv['level']:.0%} interval: coverage {_fmt(iv['coverage'])}, mean width "
                         f"{iv['mean_width']:.1f} months (n {iv['n']})")
    return "\n".join(lines)


def evaluate_folder(artifacts_dir: str | Path, images_dir: str | Path, labels_csv: str | Path, cache_dir=None,
                    device: str = "auto", views: Views | None = None, n_boot: int = 500,
                    min_meaningful_n: int = 20) -> tuple[dict, pd.DataFrame]:
    """Score the saved models on a labelled folder (any supported label format).

    The artifacts are checked and loaded (models present, manifest hashes) before any image is read; unreadable images
    are left out with a warning, none readable is an ImageLoadError. When fewer than
    `min_meaningful_n` images are scored, the metrics get a top-level "_warnings" list (entries keep their shape).
    """
    folder = Path(artifacts_dir)
    if not folder.is_dir():
        raise MissingArtifactError(f"artifacts folder not found: {folder}")
    if not model_files(folder) and not (folder / BASELINE_META).is_file():
        raise MissingArtifactError(f"no models found in {folder}; run train.py first or pass --artifacts")
    ensemble = Ensemble.load(folder, resolve_device(device), views=views) if model_files(folder) else None
    labels = attach_paths(read_labels(labels_csv), images_dir)
    frame, columns, failures = predict_frame(folder, labels, cache_dir, ensemble=ensemble)
    if failures:
        logger.warning("%d image(s) could not be read and were left out: %s", len(failures), list(failures)[:5])
    metrics = score_predictions(frame, columns, n_boot=n_boot)
    n_scored = int(frame[list(columns)].notna().any(axis=1).sum())
    if n_scored < min_meaningful_n:
        metrics["_warnings"] = [f"n={n_scored}: metrics are not meaningful (fewer than {min_meaningful_n} "
                                "labelled images scored); evaluate on a larger labelled set"]
    return metrics, frame


def main(argv: list[str] | None = None) -> int:
    """Print the metrics table; exit 2 for bad settings, labels, images or artifacts (checked before any model runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--images", required=True, help="folder of <id>.<png|jpg|webp|dcm> images")
    parser.add_argument("--labels", required=True, help="label CSV in any supported RSNA format")
    parser.add_argument("--out", help="write metrics JSON here")
    parser.add_argument("--predictions", help="also write per-image predictions CSV here")
    parser.add_argument("--device", default="auto")
    add_views_arguments(parser, None, "(default: the manifest's, as the artifacts were evaluated)")
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for flag, target in (("--out", args.out), ("--predictions", args.predictions)):
        if target is None:
            continue
        path = Path(target)
        if path.is_dir() or not path.parent.is_dir():
            where = f"{path} is a folder" if path.is_dir() else f"folder {path.parent} does not exist"
            logger.error("cannot write %s %s: %s; give a file path in an existing folder", flag, path, where)
            return 2
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            logger.error("cannot write %s %s: %s is not writable; choose another path", flag, path,
                         path if path.exists() else path.parent)
            return 2
    try:
        metrics, frame = evaluate_folder(args.artifacts, args.images, args.labels, device=args.device, views=args.views,
                                         n_boot=args.bootstrap)
    except (BoneAgeError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    print(summary_table({name: m for name, m in metrics.items() if name != "_warnings"}))
    for warning in metrics.get("_warnings", []):
        print(f"WARNING: {warning}")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    if args.predictions:
        frame.drop(columns=["path"]).to_csv(args.predictions, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
