"""Training stages (baseline, CNN models by layout, evaluate) run into a staged artifacts folder with its manifest."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import artifacts as art
from .acquisition import MILD_NOISELESS, grainy_inputs, radiograph_variants, shifted_inputs
from .baseline import HogParams, fit_baseline
from .counterexamples import counterexamples
from .checkpoint import file_sha256, read_meta, read_resume_state, save_resume_state
from .config import MODEL_LAYOUTS, TrainConfig
from .data import (SPLIT_RECORD, ImageArray, attach_paths, find_dataset, load_images, load_images_mmap,
                   load_or_make_split, read_labels, split_fingerprint, with_split)
from .distributed import LOCAL, DistContext
from .calibration import MIN_CASES, fit_calibration, load_calibration
from .ensemble import Ensemble
from .evaluate import cnn_columns, predict_frame, score_predictions, summary_table
from .heads import AGE, CNN, system_column
from .errors import BoneAgeError, InputError, LabelError, MissingArtifactError, ResumeError
from .gate import GATE_FILE, fit_gate, gate_member
from .inference import member_features, resolve_device
from .manifest import (MODEL_SUFFIX, build_manifest, evaluation_record, model_files, read_manifest,
                       write_manifest)
from .models import BoneAgeNet, ModelSpec, create_model, parent_spec, save_model
from .imaging import load_gray
from .preprocess import PreprocessSpec, prepare
from .runtime import load_member, torch_net
from .stages import DEFAULT_SCHEME
from .training import Split, TrainState, fit
from .views import Views, describe_views

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """The labelled images of a run with their split and stage."""

    frame: pd.DataFrame  # id, boneage, male, path, split, stage
    failures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def part(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]


#: Seed of the --limit subset: the same images for every --seed, so ensemble members trained with different
#: seeds into one folder share its split.
LIMIT_SEED = 42
#: Fewest labelled images a run accepts: the 70/15/15 split then leaves at least 4 for validation and for test.
MIN_TRAIN_IMAGES = 30


def check_enough_images(n_images: int, source: str, limit: int = 0) -> None:
    """LabelError when too few labelled images are left for a train / validation / test split."""
    if n_images < MIN_TRAIN_IMAGES:
        limited = f" (after --limit {limit})" if limit and limit < MIN_TRAIN_IMAGES else ""
        raise LabelError(f"{source}: only {n_images} labelled image(s){limited}; training needs at least "
                         f"{MIN_TRAIN_IMAGES} so that the train, validation and test splits (70/15/15) each get "
                         "some; add images or raise --limit")


def prepare_dataset(cfg: TrainConfig, staging: Path | None, dist: DistContext = LOCAL) -> Dataset:
    """Read labels, match images, and reuse or make the split (saved into the artifacts).

    Under torchrun rank 0 reads or makes the split and sends it to the other ranks (staging None there),
    so every rank trains on the same images even when an existing split.csv is reused.
    """
    if cfg.labels:
        labels_csv, image_dir = Path(cfg.labels), Path(cfg.images or Path(cfg.labels).with_suffix(""))
    else:
        labels_csv, image_dir = find_dataset(cfg.data_dir)
        image_dir = Path(cfg.images) if cfg.images else image_dir
    labels = attach_paths(read_labels(labels_csv), image_dir)
    if cfg.limit and cfg.limit < len(labels):
        labels = labels.sample(n=cfg.limit, random_state=LIMIT_SEED).reset_index(drop=True)
    check_enough_images(len(labels), labels_csv.name, cfg.limit)
    split = None
    if dist.is_main:
        split = load_or_make_split(labels[["id", "boneage", "male"]], staging / art.SPLIT_FILE, cfg.split_seed)
    split = dist.broadcast_object(split)
    frame = with_split(labels, split)
    frame["stage"] = DEFAULT_SCHEME.stage_of(frame["boneage"], frame["male"])
    logger.info("Data: %d images (%s)", len(frame), frame["split"].value_counts().to_dict())
    return Dataset(frame)


def _images_for(ds: Dataset, part: pd.DataFrame, spec: PreprocessSpec, cfg: TrainConfig,
                dist: DistContext = LOCAL):
    if dist.enabled and cfg.cache_dir:
        images = _shared_images(part, spec, cfg, dist)
    else:
        images = load_images(part["id"].tolist(), part["path"].tolist(), spec, cfg.cache_dir or None,
                             cfg.workers or None)
    ds.failures.update(dict(images.failures))
    pos = {id_: i for i, id_ in enumerate(images.ids)}
    rows = part[part["id"].isin(pos)]
    rows_pos = [pos[i] for i in rows["id"]]
    same_order = rows_pos == list(range(len(images.ids)))  # as load_images returns them: no copy (nor of a memmap)
    return rows, images.images if same_order else images.images[rows_pos]


def _shared_images(part: pd.DataFrame, spec: PreprocessSpec, cfg: TrainConfig, dist: DistContext) -> ImageArray:
    """The images from a memory-mapped cache that the ranks on one machine share (its local rank 0 writes it)."""
    ids, paths = part["id"].tolist(), part["path"].tolist()
    images = load_images_mmap(ids, paths, spec, cfg.cache_dir, cfg.workers or None) if dist.local_rank == 0 else None
    dist.barrier()
    return images if images is not None else load_images_mmap(ids, paths, spec, cfg.cache_dir, cfg.workers or None)


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


def _age_scaling(parent: ModelSpec | None, rows: pd.DataFrame) -> tuple[float, float]:
    """The age head's standardisation: the parent checkpoint's when continuing from one, else the training split's."""
    if parent is not None and AGE in parent.heads:
        return parent.age_mean, parent.age_std
    return float(rows["boneage"].mean()), float(rows["boneage"].std())


def _split_data(cfg: TrainConfig, ds: Dataset, dist: DistContext = LOCAL):
    """data(image_size) -> (train, val) Splits for fit, loaded through the one preprocessing path (cached)."""
    if dist.enabled and not cfg.cache_dir:
        logger.warning("No --cache-dir: each of the %d processes holds its own copy of the images", dist.world)

    def data(size: int) -> tuple[Split, Split]:
        out = []
        for part in ("train", "val"):
            rows, img = _images_for(ds, ds.part(part), cfg.preprocess_spec(size), cfg, dist)
            out.append(Split(torch.from_numpy(img), torch.tensor(rows["male"].to_numpy(), dtype=torch.long),
                             rows["boneage"].to_numpy(dtype=np.float64)))
        return out[0], out[1]
    return data


def _saved_state(cfg: TrainConfig, staging: Path | None, stem: str, dist: DistContext) -> dict:
    """The resume state of model `stem` in the run folder: rank 0 reads it and sends it (or its error) to every rank."""
    found: dict | BoneAgeError | None = None
    if dist.is_main:
        path = staging / art.resume_file(stem)
        try:
            if not path.is_file():
                raise ResumeError(f"{cfg.out}: no resume state {art.resume_file(stem)} for {stem}{MODEL_SUFFIX} (a "
                                  "train.py run writes it after each epoch, and it lands in the folder when the run "
                                  "ends): nothing to resume; start the run without --resume")
            found = read_resume_state(path)
        except BoneAgeError as exc:
            found = exc
    found = dist.broadcast_object(found)
    if isinstance(found, BoneAgeError):
        raise found
    return found


def _state_writer(staging: Path | None, stem: str, spec: ModelSpec, cfg: TrainConfig, lineage: dict,
                  split: str) -> Callable[[TrainState], None]:
    """save_state for fit: the model's resume state, described (spec, config, lineage, progress, split), on rank 0."""
    def write(state: TrainState) -> None:
        save_resume_state(staging / art.resume_file(stem), state.to_dict(), spec.to_dict(), cfg.to_dict(), lineage,
                          extra={**state.progress(), SPLIT_RECORD: split})
    return write


def train_cnn_stage(cfg: TrainConfig, ds: Dataset, staging: Path | None, name: str, dist: DistContext = LOCAL,
                    resume: bool = False) -> dict:
    """Train the network with the heads MODEL_LAYOUTS[name]; saves <cfg.model_stem(name)>.pt + history (rank 0 only).

    After every epoch the run's resume state is written to resume/<stem>.pt; with `resume` the training goes on
    from the one the folder holds (its network spec and lineage; the config was checked by the caller).
    """
    phases, stem, split = cfg.training_phases(), cfg.model_stem(name), split_fingerprint(ds.frame)
    state = None
    if resume:
        saved = _saved_state(cfg, staging, stem, dist)
        check_split_record(saved["extra"].get(SPLIT_RECORD), split, "the resumed run", art.resume_file(stem))
        spec, lineage = ModelSpec.from_dict(saved["spec"]), saved["lineage"]
        net, state = BoneAgeNet(spec), TrainState.from_dict(saved["state"])
    else:
        parent = parent_spec(cfg.init_from)
        age_mean, age_std = _age_scaling(parent, ds.part("train"))
        spec = ModelSpec(heads=MODEL_LAYOUTS[name], backbone=cfg.backbone, sex_embedding_dim=cfg.sex_embedding_dim,
                         preprocess=cfg.preprocess_spec(phases[-1].image_size), age_mean=age_mean, age_std=age_std)
        if parent is not None:
            check_same_split([Path(cfg.init_from)], ds, "--init-from")
        net, lineage = create_model(spec, cfg.init_from)
    device = dist.device or resolve_device(cfg.device)
    logger.info("Training %s (%s, heads %s) on %s from %s", stem + MODEL_SUFFIX, name, ", ".join(spec.heads), device,
                art.resume_file(stem) if resume else cfg.init_from)
    result = fit(net, _split_data(cfg, ds, dist), cfg.fit_config(), phases, device, dist, resume=state,
                 save_state=_state_writer(staging, stem, spec, cfg, lineage, split))
    net.load_state_dict(result.state_dict)
    summary = {"best_epoch": result.best_epoch, "best_val_score": result.best_score, "stopped": result.stopped,
               "notes": result.notes, "phases": [p.to_dict() for p in phases], "phases_run": result.phases_run,
               "train_seconds": round(result.seconds, 1), "device": str(device),
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "processes": dist.world, SPLIT_RECORD: split,
               "first_epoch": result.first_epoch, "finished": result.finished}
    if staging is None:
        return summary
    save_model(staging / f"{stem}{MODEL_SUFFIX}", net.cpu(), cfg.to_dict(), lineage, extra=summary)
    result.history.to_csv(staging / art.history_file(stem), index=False)
    return summary


def check_same_split(checkpoints: list[Path], ds: Dataset, role: str) -> None:
    """Refuse networks trained on another split: their training images may be in this run's validation or test part.

    Checkpoints from before the split was recorded cannot be checked; that is logged.
    """
    here = split_fingerprint(ds.frame)
    for checkpoint in checkpoints:
        check_split_record(read_meta(checkpoint).get("extra", {}).get(SPLIT_RECORD), here, role, checkpoint.name)


def check_split_record(recorded: str | None, here: str, role: str, name: str) -> None:
    """LabelError when the split a file records (`recorded`, None for older files: logged) is not this run's."""
    if recorded is None:
        logger.warning("%s %s does not record the split it was trained on: not checked against this run's "
                       "split", role, name)
    elif recorded != here:
        raise LabelError(
            f"{role} {name} was trained on another split than this run's {art.SPLIT_FILE} (sha256 "
            f"{recorded[:12]} against {here[:12]}): some of its training images may be in this split's "
            "validation or test part, which would make its scores look better than they are. "
            f"Train it into a folder holding this {art.SPLIT_FILE} (or with the same --split-seed and images)")


def evaluate_stage(cfg: TrainConfig, ds: Dataset, staging: Path, members: list[str]) -> dict:
    """Score the members (and the baseline) on the holdout (test) split; writes metrics, predictions, manifest."""
    check_same_split([staging / name for name in members], ds, "member")
    test = ds.part("test")
    manifest = build_manifest(staging, members, cfg.views) if members else None
    frame, columns, failures = predict_frame(staging, test, cfg.cache_dir or None, cfg.device, cfg.views, members,
                                             per_view=True)
    ds.failures.update(failures)
    metrics = score_predictions(frame, columns, n_boot=cfg.bootstrap, seed=cfg.seed)
    (staging / art.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    frame.drop(columns=["path"]).to_csv(staging / art.PREDICTIONS_FILE, index=False)
    if manifest is not None:
        refused = int(frame["gate_refused"].fillna(False).astype(bool).sum()) if "gate_refused" in frame else None
        manifest.evaluation = evaluation_record(staging, manifest, "test", int(frame[list(columns)].notna().any(axis=1).sum()),
                                                gate_refused=refused)
        write_manifest(staging, manifest)
    return metrics


def model_file_name(name: str) -> str:
    """A model file named on the command line, with or without its suffix: multihead -> multihead.pt."""
    return name if name.endswith(MODEL_SUFFIX) else name + MODEL_SUFFIX


def gate_network(cfg: TrainConfig, staging: Path, members: list[str]) -> str:
    """The model file the gate reads: --gate-network (a member or another checkpoint in the folder), else the first
    member with an age head."""
    if not cfg.gate_network:
        return gate_member({name: read_meta(staging / name)["spec"]["heads"] for name in members})
    name = model_file_name(cfg.gate_network)
    if not (staging / name).is_file():
        raise MissingArtifactError(f"--gate-network {name}: no such model file in {staging}")
    return name


def _radiograph_examples(paths: list, spec: PreprocessSpec, seed: int, n_sources: int,
                         n_variants: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 model inputs (N, S, S) for the gate's radiograph-or-not model: four variants of each film at `paths`
    (``acquisition.radiograph_variants``), and ``counterexamples`` (parts of the first `n_sources` films and those
    films inside photographs among them); images too blank to prepare are left out. Prepared as the gate reads an
    image: as given, never smoothed."""
    rng = np.random.default_rng([seed, 2])  # a stream of its own (shifted_inputs draws from default_rng(seed))
    films = [load_gray(path) for path in paths]
    radiographs = np.stack([prepare(v, spec, grainy=False) for film in films for v in radiograph_variants(film, rng)])
    not_radiographs = []
    for name, gray in tqdm(counterexamples(films[:n_sources], n_variants, seed + 1), desc="counterexamples"):
        try:
            not_radiographs.append(prepare(gray, spec, grainy=False))
        except InputError as exc:
            logger.debug("counterexample %s left out: %s", name, exc)
    return radiographs, np.stack(not_radiographs)


def gate_stage(cfg: TrainConfig, ds: Dataset, staging: Path, members: list[str]) -> None:
    """Fit the input gate on the gate network's features (:func:`gate_network`): `cfg.gate_fit_images` training images
    for the banks, validation images for the limits. The first `cfg.gate_turned` are also turned, mirrored and
    inverted, and twice
    shifted (a random MILD shift other than noise, and made grainy), each shifted copy as given, turned, inverted and
    mirrored, for the orientation, grey-scale and laterality models; and in four uploads each
    (:func:`_radiograph_examples`) against the ``counterexamples`` (made from package sample files and these films)
    for the radiograph-or-not model. No other film is read.

    The banks and limits hold films as filmed: with films under acquisition shifts in them as well (noise of 3
    grey levels then passes), photographs, CT / MR slices and phantoms passed too (docs/shift.md, last section).
    """
    if not members:
        raise MissingArtifactError(f"{staging}: the input gate needs a trained CNN; train one first")
    member = gate_network(cfg, staging, members)
    device = resolve_device(cfg.device)
    net, meta = load_member(staging / member, device)  # forward passes only: OpenVINO on the CPU
    spec = net.spec.preprocess
    train, n_turned = ds.part("train"), cfg.gate_turned
    order = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.gate_fit_images]
    train_rows, train_img = _images_for(ds, train.iloc[order], spec, cfg)
    _, val_img = _images_for(ds, ds.part("val"), spec, cfg)
    train_f = member_features(net, train_img, device, progress=True)
    base = train_img[:n_turned]
    turned = {k: member_features(net, np.rot90(base, k, axes=(1, 2)), device, progress=True) for k in (1, 2, 3)}
    mirrored = member_features(net, base[:, :, ::-1], device, progress=True)
    inverted = member_features(net, 255 - base, device, progress=True)
    shifted_paths = train_rows["path"].tolist()[:n_turned]
    shifted_img = np.concatenate([shifted_inputs(shifted_paths, spec, cfg.seed, MILD_NOISELESS),
                                  grainy_inputs(shifted_paths, spec, cfg.seed)])
    shifted = member_features(net, shifted_img, device, progress=True)
    shifted_turned = {k: member_features(net, np.rot90(shifted_img, k, axes=(1, 2)), device, progress=True)
                      for k in (1, 2, 3)}
    # grainy films join the grey-scale model as films the right way round only: as inverted examples too they made it
    # invert two more clean low-contrast holdout films (docs/shift.md)
    shifted_inverted = member_features(net, 255 - shifted_img[:len(shifted_paths)], device, progress=True)
    shifted_mirrored = member_features(net, shifted_img[:, :, ::-1], device, progress=True)
    radiographs, not_radiographs = _radiograph_examples(train_rows["path"].tolist()[:n_turned], spec, cfg.seed,
                                                        cfg.gate_counterexample_sources,
                                                        cfg.gate_counterexample_variants)
    gate = fit_gate(train_f, member_features(net, val_img, device, progress=True), turned, mirrored,
                    train_f[:n_turned], inverted, n_pooled=torch_net(net).backbone.num_features, shifted=shifted,
                    shifted_inverted=shifted_inverted, shifted_mirrored=shifted_mirrored, shifted_turned=shifted_turned,
                    radiographs=member_features(net, radiographs, device, progress=True),
                    not_radiographs=member_features(net, not_radiographs, device, progress=True), seed=cfg.seed)
    gate.member, gate.member_sha256 = member, meta["sha256"]
    gate.save(staging / GATE_FILE)


def calibrate_stage(cfg: TrainConfig, ds: Dataset, staging: Path, members: list[str]) -> None:
    """Fit the age calibration (bias correction + conformal intervals) on the validation split's ensemble estimates."""
    if not members:
        raise MissingArtifactError(f"{staging}: calibration needs a trained CNN; train one first")
    check_same_split([staging / name for name in members], ds, "member")
    val = ds.part("val")
    ensemble = Ensemble.load(staging, resolve_device(cfg.device), members, cfg.views, calibrated=False, gated=False)
    new = cnn_columns(ensemble, val, cfg.cache_dir or None, per_view=True)
    if new.failures:
        logger.warning("%d validation image(s) could not be read and were left out of the calibration: %s",
                       len(new.failures), list(new.failures)[:5])
        ds.failures.update(new.failures)  # listed in the run report
    out = pd.concat([val, new.table], axis=1)
    table = staging / art.CALIBRATION_PREDICTIONS_FILE
    out.drop(columns=["path"], errors="ignore").to_csv(table, index=False)
    column = system_column(CNN, AGE)
    if column not in out:
        logger.info("No age head among %s: nothing to calibrate", members)
        return
    rows = out[out[column].notna()]
    if len(rows) < MIN_CASES:
        logger.warning("No calibration (no bias correction, no prediction intervals): only %d validation images "
                       "were scored, %d are needed", len(rows), MIN_CASES)
        return
    fit_calibration(rows[column].to_numpy(), rows["boneage"].to_numpy(), ensemble.member_hashes(), cfg.views,
                    seed=cfg.seed, predictions_sha256=file_sha256(table)).save(staging)


def choose_members(cfg: TrainConfig, staging: Path, trained: list[str]) -> list[str]:
    """--members, else the CNN files this run trained (by stem), else the previous manifest's members, else every one."""
    if cfg.members:
        return [model_file_name(m) for m in cfg.members]
    if trained:
        return [t + MODEL_SUFFIX for t in trained]
    previous = read_manifest(staging)
    return previous.members if previous is not None else model_files(staging)


def describe_models(staging: Path, members: list[str], views: Views, calibrated: bool = False) -> None:
    """Rewrite the manifest after training without evaluation: the old evaluation stays, and is stale if members changed.

    The manifest keeps serving the views its evaluation used; after a calibrate stage (`calibrated`), a calibration
    fitted on other views is then not applied, which is logged with the command that serves them.
    """
    if not members:
        return
    previous = read_manifest(staging)
    evaluation = previous.evaluation if previous is not None else None
    kept_views = previous.views if previous is not None else views
    calibration = load_calibration(staging) if calibrated else None
    if calibration is not None and calibration.views_mismatch(kept_views):
        logger.warning("The calibration was fitted on %s, but %s still serves %s (its evaluation's views), so the "
                       "calibration is not applied: run the evaluate stage with the same --views to serve them",
                       describe_views(calibration.views), art.MANIFEST_FILE, describe_views(kept_views))
    write_manifest(staging, build_manifest(staging, members, kept_views, evaluation))


def _kept_model_lines(staging: Path, trained: dict) -> list[str]:
    """Report lines for CNNs kept from an earlier run: when and how they were trained (from their checkpoints)."""
    lines = []
    for filename in model_files(staging):
        if Path(filename).stem in trained:
            continue
        meta = read_meta(staging / filename)
        spec = meta.get("spec", {})
        lines.append(f"- {filename} (kept from the run of {meta.get('created', '?')}, commit "
                     f"{str(meta.get('git_commit'))[:10]}; heads {', '.join(spec.get('heads', []))}, "
                     f"{spec.get('backbone')} at {spec.get('preprocess', {}).get('image_size')} px): "
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


def run(cfg: TrainConfig, dist: DistContext = LOCAL, resume: bool = False) -> dict:
    """Run the configured stages; artifacts appear in cfg.out only if every stage finished.

    Under torchrun every rank trains the CNN stages together; rank 0 alone runs the baseline and the
    evaluation and writes the artifacts folder, and the other ranks wait for it at the end. With `resume`
    the CNN stages go on from the resume states in cfg.out (see train_cnn_stage).
    """
    if not dist.is_main:
        _train_on_worker(cfg, dist, resume)
        dist.barrier()
        return {}
    metrics: dict | None = None
    summaries: dict = {}
    with art.staged_folder(cfg.out) as staging:
        ds = prepare_dataset(cfg, staging, dist)
        for stage in cfg.stages:
            t0 = time.time()
            logger.info("=== stage %s ===", stage)
            if stage == "baseline":
                train_baseline_stage(cfg, ds, staging)
            elif stage in MODEL_LAYOUTS:
                summaries[cfg.model_stem(stage)] = train_cnn_stage(cfg, ds, staging, stage, dist, resume)
            elif stage == "gate":
                gate_stage(cfg, ds, staging, choose_members(cfg, staging, list(summaries)))
            elif stage == "calibrate":
                calibrate_stage(cfg, ds, staging, choose_members(cfg, staging, list(summaries)))
            elif stage == "evaluate":
                metrics = evaluate_stage(cfg, ds, staging, choose_members(cfg, staging, list(summaries)))
            ds.timings[stage] = time.time() - t0
        if "evaluate" not in cfg.stages:
            describe_models(staging, choose_members(cfg, staging, list(summaries)), cfg.views,
                            calibrated="calibrate" in cfg.stages)
        art.keep_earlier_run(staging)
        cfg.save(staging / art.CONFIG_FILE)
        write_report(cfg, ds, staging, metrics, summaries)
    dist.barrier()
    if metrics:
        print(summary_table(metrics))
    return metrics or {}


def _train_on_worker(cfg: TrainConfig, dist: DistContext, resume: bool = False) -> None:
    """A rank other than 0: the CNN stages' training, in the run's order, writing nothing."""
    ds = prepare_dataset(cfg, None, dist)
    for stage in cfg.stages:
        if stage in MODEL_LAYOUTS:
            train_cnn_stage(cfg, ds, None, stage, dist, resume)


def seed_everything(seed: int) -> None:
    """Seed numpy and torch."""
    np.random.seed(seed)
    torch.manual_seed(seed)
