"""Streamlit-only code of the app: cached model and artifact loading (the one place they are cached), the
per-session result cache and error display. Everything else lives in boneage_core."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from boneage_core import artifacts as art
from boneage_core.clinical import ReferenceError, load_reference, reference_path
from boneage_core.errors import ArtifactError
from boneage_core.imaging import IMAGE_EXTENSIONS
from boneage_core.assess import Assessment, run_assessment
from boneage_core.manifest import EVALUATED_FILES, Manifest, manifest_version, read_manifest, stale_reason
from boneage_core.predictor import Explanation, Prediction, Predictor
from boneage_core.preprocess import resize_to

logger = logging.getLogger(__name__)

#: Environment variable naming the artifacts folder (default: artifacts/ in the repository root).
ARTIFACTS_ENV = "BONEAGE_ARTIFACTS"
REPO_DIR = Path(__file__).resolve().parent.parent
#: What the uploaders take: every ending the decoders read (imaging.IMAGE_EXTENSIONS).
IMAGE_TYPES = [ext.lstrip(".") for ext in IMAGE_EXTENSIONS]
#: How many uploads' results one browser session keeps (each holds the full-size image).
RESULT_CACHE_SIZE = 4
_RESULTS_KEY = "_assess_results"
# Grad-CAM hooks the shared (cached) network: one model call at a time across sessions.
_MODEL_LOCK = threading.Lock()
#: Longest side of images sent to the browser (full resolution stays in the downloads).
DISPLAY_MAX_SIDE = 1024


def artifacts_dir() -> Path:
    """The artifacts folder: $BONEAGE_ARTIFACTS, else artifacts/ in the repository root."""
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env).expanduser() if env else REPO_DIR / "artifacts"


def show_error(exc: BaseException, what: str) -> None:
    """Show an exception as a one-line st.error; unexpected ones are logged with traceback, never shown."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        st.error(f"{what}: {exc}")
    else:
        logger.error("%s failed", what, exc_info=exc)
        st.error(f"{what} failed because of an unexpected internal error; the details are in the server log.")


# --- models -------------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the models…", max_entries=4)
def _load_predictor(folder: str, version: str) -> Predictor:
    return Predictor.load(folder, device="cpu")


def get_predictor(folder: str) -> Predictor:
    """The Predictor of an artifacts folder, loaded once per server process and manifest version (its sha256): a
    retrain in place writes a new manifest, and the next page run loads the new models."""
    return _load_predictor(folder, manifest_version(folder))


def predictor_or_none() -> Predictor | None:
    """The cached Predictor of artifacts_dir(), or None after telling the user why no model is available."""
    try:
        return get_predictor(str(artifacts_dir()))
    except FileNotFoundError as exc:  # MissingArtifactError included
        st.warning(f"No trained model available: {exc}")
    except Exception as exc:  # a corrupt checkpoint must not take the page down
        show_error(exc, "Loading the models")
    return None


def file_digest(data: bytes) -> str:
    """SHA-256 hex digest of an upload's bytes (the cache key of its results and its patient inputs)."""
    return hashlib.sha256(data).hexdigest()


def _results() -> OrderedDict:
    if _RESULTS_KEY not in st.session_state:
        st.session_state[_RESULTS_KEY] = OrderedDict()
    return st.session_state[_RESULTS_KEY]


def _remember(key: tuple, value: Any) -> Any:
    cache = _results()
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > RESULT_CACHE_SIZE * 3:
        cache.popitem(last=False)
    return value


def _predict(predictor: Predictor, data: bytes, name: str, male: bool) -> Prediction:
    with _MODEL_LOCK:
        return predictor.predict(data, male=male, name=name)


def assessment(predictor: Predictor, data: bytes, name: str, male: bool, chronological_age_months: float | None,
               reference: pd.DataFrame | None) -> Assessment:
    """boneage_core.assess.run_assessment of one upload under the model lock (no caching; the batch page uses this)."""
    with _MODEL_LOCK:
        return run_assessment(predictor, data, male, chronological_age_months=chronological_age_months,
                              reference=reference, name=name)


def cached_prediction(predictor: Predictor, data: bytes, name: str, male: bool) -> Prediction:
    """predictor.predict once per (model version, file content, sex) in this session; later reruns reuse the result."""
    key = ("prediction", predictor.version, file_digest(data), bool(male))
    cache = _results()
    if key in cache:
        cache.move_to_end(key)
        return dataclasses.replace(cache[key], name=name)  # same bytes, maybe uploaded under a new name
    return _remember(key, _predict(predictor, data, name, male))


def cached_explanation(predictor: Predictor, data: bytes, prediction: Prediction, head: str) -> Explanation:
    """Grad-CAM of one head once per (file content, sex, head) in this session; the stage head explains the stage shown."""
    key = ("explanation", predictor.version, file_digest(data), prediction.male, head)
    cache = _results()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    with _MODEL_LOCK:
        explanation = predictor.explain(prediction.original, prediction.male, head=head, class_index=prediction.stage)
    return _remember(key, explanation)


# --- images --------------------------------------------------------------------------------------------------

def display_image(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE, like: np.ndarray | None = None) -> np.ndarray:
    """A float gray/map downscaled for the screen (to `like`'s shape when given); small images pass unchanged."""
    h, w = image.shape[:2]
    if like is not None:
        shape = like.shape[:2]
    else:
        scale = max_side / max(h, w)
        if scale >= 1:
            return image
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    return image if (h, w) == tuple(shape) else resize_to(image, shape)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 RGB/gray array (or a float gray array in [0, 1]) as PNG."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


# --- reference table -----------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def _reference_from_bytes(data: bytes) -> pd.DataFrame:
    return load_reference(io.BytesIO(data))


@st.cache_data(show_spinner=False)
def _reference_from_path(path: str | None, mtime: float | None) -> pd.DataFrame:
    return load_reference(path)


def get_reference(upload: bytes | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """(reference table, None) or (None, why it is unavailable); an uploaded CSV takes precedence.

    Without an upload the table is found as boneage_core.clinical does ($BONEAGE_GP_TABLE, then ../shared).
    """
    try:
        if upload:
            return _reference_from_bytes(upload), None
        path = reference_path()
        mtime = path.stat().st_mtime if path is not None and path.is_file() else None
        return _reference_from_path(None if path is None else str(path), mtime), None
    except ReferenceError as exc:
        return None, str(exc)


# --- artifacts ----------------------------------------------------------------------------------------------

def artifact_path(name: str) -> Path | None:
    """Path of an artifact file, or None when it is absent."""
    path = artifacts_dir() / name
    return path if path.is_file() else None


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@st.cache_data(show_spinner=False)
def _read_csv(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


@st.cache_data(show_spinner=False)
def _read_manifest(folder: str, mtime: float) -> Manifest | None:
    return read_manifest(folder)


@st.cache_data(show_spinner=False)
def _evaluation_problem(folder: str, name: str, mtimes: tuple[float, float]) -> str | None:
    """Why an evaluated file does not belong to the manifest's model files (manifest.stale_reason), or None."""
    manifest = read_manifest(folder)
    return None if manifest is None else stale_reason(folder, manifest, name)


def _load(name: str, reader) -> Any:
    path = artifact_path(name)
    if path is None:
        st.info(f"`{name}` is not in `{artifacts_dir()}`; run `python train.py` to create it.")
        return None
    manifest_path = path.parent / art.MANIFEST_FILE
    if name in EVALUATED_FILES and manifest_path.is_file():  # figures of other weights are refused, not shown
        try:
            problem = _evaluation_problem(str(path.parent), name, (path.stat().st_mtime, manifest_path.stat().st_mtime))
        except ArtifactError as exc:
            problem = str(exc)
        if problem:
            st.warning(f"`{name}` is not shown: {problem}")
            return None
    elif name in EVALUATED_FILES:  # a folder written before manifests, or by hand: shown, but said to be unchecked
        st.warning(f"`{name}` is shown unchecked: `{path.parent}` has no `{art.MANIFEST_FILE}`, so nothing ties these "
                   "figures to the model files there (`python train.py --stages evaluate` writes one).")
    try:
        return reader(str(path), path.stat().st_mtime)
    except (OSError, ValueError) as exc:
        st.warning(f"`{name}` could not be read: {exc}")
        return None


def load_metrics() -> dict | None:
    """metrics.json, or None (with a message shown) when absent or unreadable."""
    metrics = _load(art.METRICS_FILE, _read_json)
    if metrics is not None and not isinstance(metrics, dict):
        st.warning(f"`{art.METRICS_FILE}` does not hold a JSON object.")
        return None
    return metrics


def load_predictions() -> pd.DataFrame | None:
    """predictions.csv (holdout predictions of every system), or None with a message shown."""
    frame = _load(art.PREDICTIONS_FILE, _read_csv)
    if frame is not None and "boneage" not in frame:
        st.warning(f"`{art.PREDICTIONS_FILE}` lacks the `boneage` column.")
        return None
    return frame


def load_histories() -> dict[str, pd.DataFrame]:
    """Every history_<model>.csv of the artifacts folder with an epoch column, by model name."""
    out = {}
    prefix, suffix = art.history_file("*").split("*")
    for path in sorted(artifacts_dir().glob(art.history_file("*"))):
        try:
            frame = _read_csv(str(path), path.stat().st_mtime)
        except (OSError, ValueError) as exc:
            st.warning(f"`{path.name}` could not be read: {exc}")
            continue
        if "epoch" in frame:
            out[path.name[len(prefix):-len(suffix)]] = frame
    return out


def load_manifest() -> Manifest | None:
    """manifest.json, or None with a message shown (absent, or not a manifest)."""
    path = artifact_path(art.MANIFEST_FILE)
    if path is None:
        st.info(f"`{art.MANIFEST_FILE}` is not in `{artifacts_dir()}`: the model files are not described "
                "(run `train.py --stages evaluate`).")
        return None
    try:
        return _read_manifest(str(path.parent), path.stat().st_mtime)
    except ArtifactError as exc:
        st.warning(str(exc))
        return None


def load_split() -> pd.DataFrame | None:
    """split.csv (id, split), or None with a message shown."""
    return _load(art.SPLIT_FILE, _read_csv)
