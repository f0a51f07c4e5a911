"""Self-describing checkpoint files: write atomically, read (upgrading older formats), hash, lineage."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import os
import pickle
import subprocess
from pathlib import Path

import torch

from .errors import ArtifactError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "boneage-checkpoint/2"
_V1_FORMAT = "boneage-checkpoint/1"
#: A training run's resume state (train.py --resume): full-precision weights, EMA, optimizer, RNG and history.
RESUME_FORMAT = "boneage-resume/1"
_V1_TASK_HEAD = {"regression": "age", "classification": "stage"}


class CheckpointError(ArtifactError):
    """A file that is not a readable bone-age checkpoint."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    """Current git commit of the code, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_hashed(path: str | os.PathLike) -> tuple[bytes, str]:
    """A file's bytes and their SHA-256 hex digest, from one read (a checkpoint is hashed and parsed from these)."""
    data = Path(path).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _load(path: str | os.PathLike, what: str, data: bytes | None = None) -> tuple[object, object]:
    """A file (or its bytes, already read) torch.load reads with its restricted unpickler, and its format tag;
    CheckpointError if unreadable."""
    try:
        payload = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError,
            AttributeError) as exc:  # what torch's restricted unpickler raises for arbitrary bytes
        raise CheckpointError(f"{path}: not a readable {what} ({exc!r})") from exc
    return payload, payload.get("format") if isinstance(payload, dict) else type(payload).__name__


def _description(spec: dict, config: dict, lineage: dict | None, extra: dict | None) -> dict:
    """What every file a run writes about a network says about it: spec, config, lineage, commit, time, torch."""
    return {"spec": spec, "config": config, "lineage": lineage or {"init_from": "unknown"}, "git_commit": git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": str(torch.__version__), "extra": extra or {}}


def _save_atomically(payload: dict, path: Path) -> None:
    """torch.save to a partial file, then rename it: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, state_dict: dict, spec: dict, config: dict,
                    lineage: dict | None = None, extra: dict | None = None) -> str:
    """Write an fp16 checkpoint (spec, config, lineage, commit, weights) atomically; returns its sha256."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        **_description(spec, config, lineage, extra),
        "state_dict": {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
                       for k, v in state_dict.items()},
    }
    _save_atomically(payload, path)
    return file_sha256(path)


def save_resume_state(path: str | os.PathLike, state: dict, spec: dict, config: dict, lineage: dict | None = None,
                      extra: dict | None = None) -> Path:
    """Write a training run's resume state (full precision, optimizer included) atomically, described like a checkpoint.

    `state` is training.TrainState.to_dict(); `extra` says where the run stands (step, epoch, planned epochs).
    The folder is made when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically({"format": RESUME_FORMAT, **_description(spec, config, lineage, extra), "state": state}, path)
    return path


def read_resume_state(path: str | os.PathLike) -> dict:
    """A resume state file written by save_resume_state (description and "state"); CheckpointError if it is not one."""
    payload, found = _load(path, "resume state")
    if found != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a training resume state (format {found!r}, expected {RESUME_FORMAT!r})")
    return payload


def _upgrade_v1(payload: dict) -> dict:
    """A format-1 (one task per file) checkpoint in the current layout: its task becomes its one head."""
    try:
        spec = dict(payload["spec"])
        head = _V1_TASK_HEAD[spec.pop("task")]
        weights = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"format-1 checkpoint without a known task, spec or weights ({exc!r})") from exc
    spec.pop("n_outputs", None)
    spec["heads"] = [head]
    state = {(f"heads.{head}.{k[len('head.'):]}" if k.startswith("head.") else k): v
             for k, v in weights.items()}
    lineage = {"init_from": payload.get("config", {}).get("pretrained") and "imagenet" or "scratch",
               "upgraded_from": _V1_FORMAT}
    return {**payload, "format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": state, "lineage": lineage}


def read_payload(path: str | os.PathLike, data: bytes | None = None) -> dict:
    """The whole checkpoint (weights as stored), upgraded to the current format; CheckpointError if unreadable.

    `data` is the file's bytes when the caller has read them already (:func:`read_hashed`)."""
    payload, found = _load(path, "checkpoint", data)
    if found == _V1_FORMAT:
        try:
            payload = _upgrade_v1(payload)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    elif found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a bone-age checkpoint (format {found!r})")
    return payload


def read_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's metadata (spec, config, lineage, commit, training summary) plus its file's sha256."""
    meta = {k: v for k, v in read_payload(path).items() if k != "state_dict"}
    meta["sha256"] = file_sha256(path)
    return meta


def lineage_of(parent: str | os.PathLike) -> dict:
    """The lineage record of a run that starts from the checkpoint `parent`: its hash, config and own lineage."""
    meta = read_meta(parent)
    return {"init_from": str(parent), "parent_sha256": meta["sha256"], "parent_created": meta.get("created"),
            "parent_git_commit": meta.get("git_commit"), "parent_spec": meta.get("spec"),
            "parent_config": meta.get("config"), "parent_lineage": meta.get("lineage")}
