"""artifacts/manifest.json: which model files (sha256, heads, lineage) produced which metrics, predictions and intervals.

Every writer of an artifacts folder (train.py, ``evaluate --update-artifacts``) rewrites the manifest;
every reader (``Predictor.load``, ``evaluate``, the app) checks file hashes against it, so a model
served with another model's metrics or intervals is refused instead of silently used.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import CALIBRATION_PREDICTIONS_FILE, MANIFEST_FILE, METRICS_FILE, PREDICTIONS_FILE, read_json, write_json
from .checkpoint import file_sha256, read_meta
from .errors import ArtifactError
from .calibration import CALIBRATION_FILE, load_calibration
from .gate import GATE_FILE
from .views import LEGACY_TTA_KEY, NO_TTA, VIEWS_KEY, Views, as_views, describe_views, views_from_record

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "boneage-manifest/1"
MODEL_SUFFIX = ".pt"
#: The model version of a folder without a manifest (a training run's folder).
UNVERSIONED = "unversioned"
#: Files produced by evaluating the members; stale when the members change.
EVALUATED_FILES = (METRICS_FILE, PREDICTIONS_FILE)
#: Files fitted for the members (manifest key -> file name); hash-checked with the models when listed.
COMPANION_FILES = {"gate": GATE_FILE, "calibration": CALIBRATION_FILE}


def model_files(folder: str | os.PathLike) -> list[str]:
    """Names of the checkpoint files in a folder, sorted."""
    return sorted(p.name for p in Path(folder).glob(f"*{MODEL_SUFFIX}") if p.is_file())


def _model_entry(path: Path) -> dict:
    meta = read_meta(path)
    spec = meta.get("spec", {})
    return {"sha256": meta["sha256"], "heads": list(spec.get("heads", [])), "backbone": spec.get("backbone"),
            "image_size": spec.get("preprocess", {}).get("image_size"), "created": meta.get("created"),
            "git_commit": meta.get("git_commit"), "lineage": meta.get("lineage"),
            "training": meta.get("extra", {})}


@dataclass
class Manifest:
    """The parsed manifest of an artifacts folder."""

    members: list[str]
    models: dict[str, dict]
    views: Views = NO_TTA  # the test-time zoom factors the members are served and were evaluated with
    evaluation: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": MANIFEST_FORMAT, "members": self.members, VIEWS_KEY: list(self.views), "models": self.models,
                "evaluation": self.evaluation, **self.extra}

    @classmethod
    def from_dict(cls, data: dict, source: str = MANIFEST_FILE) -> "Manifest":
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ArtifactError(f"{source}: not a bone-age manifest (format {data.get('format') if isinstance(data, dict) else None!r})")
        try:
            members, models = list(data["members"]), dict(data["models"])
            views = views_from_record(data, source)  # manifests before view sets say "tta": true/false
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{source}: manifest lacks {exc}") from exc
        except ValueError as exc:
            raise ArtifactError(f"{source}: {exc}") from exc
        unknown = [m for m in members if m not in models]
        if unknown:
            raise ArtifactError(f"{source}: members {unknown} are not described under 'models'")
        extra = {k: v for k, v in data.items()
                 if k not in ("format", "members", VIEWS_KEY, LEGACY_TTA_KEY, "models", "evaluation")}
        return cls(members, models, views, data.get("evaluation"), extra)

    def member_hashes(self) -> dict[str, str]:
        return {m: self.models[m]["sha256"] for m in self.members}

    def heads(self) -> list[str]:
        """Heads the ensemble provides, in member order."""
        return list(dict.fromkeys(h for m in self.members for h in self.models[m]["heads"]))


def build_manifest(folder: str | os.PathLike, members: list[str] | None = None, views: Views = NO_TTA,
                   evaluation: dict | None = None) -> Manifest:
    """Describe the model files of a folder; members default to every checkpoint in it."""
    folder = Path(folder)
    files = model_files(folder)
    members = files if members is None else list(members)
    missing = [m for m in members if m not in files]
    if missing:
        raise ArtifactError(f"{folder}: member file(s) {missing} not found (have {files})")
    if not members:
        raise ArtifactError(f"{folder}: no model files ({MODEL_SUFFIX}) to describe")
    extra = {key: {"file": name, "sha256": file_sha256(folder / name)}
             for key, name in COMPANION_FILES.items() if (folder / name).is_file()}
    return Manifest(members, {name: _model_entry(folder / name) for name in files}, as_views(views), evaluation, extra)


def evaluation_record(folder: str | os.PathLike, manifest: Manifest, split: str, n_images: int,
                      files: tuple[str, ...] = EVALUATED_FILES, gate_refused: int | None = None) -> dict:
    """What an evaluation of the manifest's members wrote: settings, member hashes and output-file hashes."""
    folder = Path(folder)
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "split": split,
            "n_images": int(n_images), "gate_refused": gate_refused, VIEWS_KEY: list(manifest.views), "members": list(manifest.members),
            "model_sha256": manifest.member_hashes(),
            "files": {name: file_sha256(folder / name) for name in files if (folder / name).is_file()}}


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write manifest.json (atomically)."""
    return write_json(Path(folder) / MANIFEST_FILE, manifest.to_dict())


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The folder's manifest, or None when it has none; ArtifactError when it is unreadable."""
    path = Path(folder) / MANIFEST_FILE
    data = read_json(path, "manifest", "; re-run `train.py --stages evaluate` on that folder")
    return None if data is None else Manifest.from_dict(data, str(path))


def manifest_version(folder: str | os.PathLike) -> str:
    """The model version shown to users: the first 12 hex digits of manifest.json's sha256 ('unversioned' without one)."""
    path = Path(folder) / MANIFEST_FILE
    return file_sha256(path)[:12] if path.is_file() else UNVERSIONED


def verify_models(folder: str | os.PathLike, manifest: Manifest, known: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """ArtifactError unless every member file (and the gate / calibration it records) exists with the recorded hash.

    `known` holds {file name: sha256} of files the caller has hashed already (they are not read again). Returns the
    {file name: sha256} checked."""
    folder = Path(folder)
    known = known or {}
    expected_files = dict(manifest.member_hashes())
    for key in COMPANION_FILES:
        if manifest.extra.get(key):
            expected_files[manifest.extra[key]["file"]] = manifest.extra[key]["sha256"]
    for name, expected in expected_files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder}: the manifest lists {name}, which is missing")
        actual = known[name] if name in known else file_sha256(path)
        if actual != expected:
            raise ArtifactError(f"{path}: the file changed since the manifest was written (sha256 {actual[:12]} "
                                f"!= {expected[:12]}); re-run `train.py --stages evaluate --out {folder}` "
                                "to describe and score it")
    return expected_files


def stale_reason(folder: str | os.PathLike, manifest: Manifest, name: str) -> str | None:
    """Why an evaluated file (metrics.json, predictions.csv) can't be used with the current members, or None."""
    folder = Path(folder)
    evaluation = manifest.evaluation or {}
    if not (folder / name).is_file():
        return f"{name} is missing"
    recorded = (evaluation.get("files") or {}).get(name)
    if recorded is None:
        return f"{name} is not recorded in the manifest's evaluation"
    if evaluation.get("model_sha256") != manifest.member_hashes():
        return (f"{name} was made by other model files than the ones now in {folder} "
                "(re-run `train.py --stages evaluate` on it)")
    try:
        evaluated_views = views_from_record(evaluation, MANIFEST_FILE)
    except ValueError as exc:
        return f"{name}: the evaluation record's views are unreadable ({exc})"
    if evaluated_views != manifest.views:
        return (f"{name} was made with {describe_views(evaluated_views)}, the manifest serves "
                f"{describe_views(manifest.views)} (re-run `train.py --stages calibrate,evaluate` with those views)")
    if file_sha256(folder / name) != recorded:
        return f"{name} changed after the evaluation that the manifest records"
    return None


def evaluated_path(folder: str | os.PathLike, manifest: Manifest | None, name: str) -> Path:
    """The path of an evaluated file that belongs to the current members; ArtifactError (stale / missing) otherwise."""
    if manifest is None:
        raise ArtifactError(f"{folder}: no {MANIFEST_FILE}, so {name} can't be tied to the model files; "
                            "re-run `train.py --stages evaluate` on it")
    reason = stale_reason(folder, manifest, name)
    if reason:
        raise ArtifactError(f"{name} refused: {reason}")
    return Path(folder) / name


def fitted_table_path(folder: str | os.PathLike, manifest: Manifest | None) -> Path:
    """calibration_predictions.csv when it is the table the calibration of the manifest's members and views was
    fitted on (the counterpart of :func:`evaluated_path` for the validation split); ArtifactError otherwise."""
    path = Path(folder) / CALIBRATION_PREDICTIONS_FILE
    if manifest is None or not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST_FILE if manifest is None else CALIBRATION_PREDICTIONS_FILE}; "
                            "run `train.py --stages calibrate,evaluate` there")
    calibration = load_calibration(folder)
    reason = "no calibration" if calibration is None else (
        calibration.stale_reason(manifest.member_hashes(), manifest.views)
        or calibration.predictions_mismatch(file_sha256(path)))
    if reason:
        raise ArtifactError(f"{CALIBRATION_PREDICTIONS_FILE} refused: {reason}")
    return path
