"""Artifact folders written whole: build in a staging copy, then swap it in, so an interrupted run loses nothing."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
SPLIT_FILE = "split.csv"
CONFIG_FILE = "config.json"
REPORT_FILE = "run_report.md"
MANIFEST_FILE = "manifest.json"


def history_file(model: str) -> str:
    """File name of a model's per-epoch training history, e.g. history_regressor.csv."""
    return f"history_{model}.csv"


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging`; the old folder is removed only once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=False)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging copy of `target` (existing files kept); swap it in on success, discard it on error.

    Models a run does not retrain stay as they were, so stages can be run one at a time.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    if target.is_dir():
        shutil.copytree(target, staging, dirs_exist_ok=True)
    try:
        yield staging
    except BaseException:
        logger.warning("Run did not finish; %s left unchanged", target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, target)
    logger.info("Artifacts written to %s", target)
