"""Artifact folders written whole: build in a staging copy, then swap it in, so an interrupted run loses nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .errors import ArtifactError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
#: the validation split's predictions (ensemble and members, uncorrected) the calibration was fitted on
CALIBRATION_PREDICTIONS_FILE = "calibration_predictions.csv"
SPLIT_FILE = "split.csv"
CONFIG_FILE = "config.json"
REPORT_FILE = "run_report.md"
MANIFEST_FILE = "manifest.json"
#: Sub-folder of a run folder with each model's resume state (train.py --resume): never served, never committed.
RESUME_DIR = "resume"
#: Sub-folder with the config and run report of each earlier run into the same folder (earlier_runs/001/, ...).
EARLIER_RUNS_DIR = "earlier_runs"


def keep_earlier_run(folder: str | os.PathLike) -> Path | None:
    """Move the folder's config.json and run_report.md (an earlier run's) into earlier_runs/NNN/, numbered in order,
    before a new run writes its own: a gate- or evaluate-only run once overwrote the training run's. The sub-folder,
    or None when the folder had neither file."""
    folder = Path(folder)
    found = [folder / name for name in (CONFIG_FILE, REPORT_FILE) if (folder / name).is_file()]
    if not found:
        return None
    earlier = folder / EARLIER_RUNS_DIR
    taken = [int(p.name) for p in earlier.glob("[0-9][0-9][0-9]") if p.is_dir()] if earlier.is_dir() else []
    target = earlier / f"{max(taken, default=0) + 1:03d}"
    target.mkdir(parents=True)
    for path in found:
        os.replace(path, target / path.name)
    return target


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write a JSON file atomically (a partial file, then a rename): readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> dict | None:
    """A JSON file's content; None when it does not exist, ArtifactError naming `what` when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable {what} ({exc}){hint}") from exc


def history_file(model: str) -> str:
    """File name of a model's per-epoch training history, e.g. history_regressor.csv."""
    return f"history_{model}.csv"


def resume_file(model: str) -> str:
    """Path, inside a run folder, of a model's resume state, e.g. resume/multihead.pt."""
    return f"{RESUME_DIR}/{model}.pt"


class Terminated(KeyboardInterrupt):
    """SIGTERM received inside handle_sigterm(): unwinds like Ctrl-C, so staged work is cleaned up."""


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (a KeyboardInterrupt); the previous handler is restored after.

    Signal handlers can only be set from the main thread; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_writable(target: str | os.PathLike) -> Path:
    """Fail early (ArtifactError) when `target` cannot be written: its parent is not a writable folder.

    Call it at the start of a run, before any work; returns the resolved target.
    """
    target = Path(target).resolve()
    for path in (target, target.parent):
        if path.exists() and not path.is_dir():
            raise ArtifactError(f"cannot write the output folder {target}: {path} exists and is not a folder; "
                                "choose another output folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the output folder {target}: {target.parent} is not writable "
            f"({exc.strerror or exc}); choose another output folder"
        ) from exc
    return target


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging`; the old folder is removed only once the new one is in place.

    If the swap fails (read-only mount, folder busy, permission), the old target is put back and
    ArtifactError says where the finished results are: `staging` is kept, never deleted.
    """
    old = None
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(staging, target)
    except OSError as exc:
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        raise ArtifactError(
            f"the run finished but its results could not be moved into {target} ({exc.strerror or exc}); "
            f"they are complete in {staging}: move that folder there yourself"
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=False)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging copy of `target` (existing files kept); swap it in on success, discard it on error.

    Models a run does not retrain stay as they were, so stages can be run one at a time. SIGTERM and
    Ctrl-C alike discard the staging copy; a failed swap keeps it (see swap_in).
    """
    target = check_writable(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        with handle_sigterm():
            if target.is_dir():
                shutil.copytree(target, staging, dirs_exist_ok=True)
            yield staging
    except BaseException:
        logger.warning("Run did not finish; %s left unchanged", target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, target)
    logger.info("Artifacts written to %s", target)
