"""Streamlit helpers for the dashboard pages: cached model/artifact loading, per-upload result cache, error display."""

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
from boneage_core.clinical import ClinicalReadout, ReferenceError, load_reference, reference_path
from boneage_core.imaging import read_dicom_info
from boneage_core.predictor import Explanation, Prediction, Predictor
from boneage_core.preprocess import resize_to

logger = logging.getLogger(__name__)

#: Environment variable naming the artifacts folder (default: artifacts/ next to this file).
ARTIFACTS_ENV = "BONEAGE_ARTIFACTS"
APP_DIR = Path(__file__).resolve().parent
DISCLAIMER = "Research demo, not a medical device: not for diagnosis or treatment decisions."
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "dcm", "dicom"]
#: How many uploads' results one browser session keeps (each holds the full-size image).
RESULT_CACHE_SIZE = 4
_RESULTS_KEY = "_assess_results"
# Grad-CAM hooks the shared (cached) network: one model call at a time across sessions.
_MODEL_LOCK = threading.Lock()


def artifacts_dir() -> Path:
    """The artifacts folder: $BONEAGE_ARTIFACTS, else artifacts/ beside the app."""
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env).expanduser() if env else APP_DIR / "artifacts"


def show_error(exc: BaseException, what: str) -> None:
    """Show an exception as a one-line st.error; unexpected ones are logged with traceback, never shown."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        st.error(f"{what}: {exc}")
    else:
        logger.error("%s failed", what, exc_info=exc)
        st.error(f"{what} failed because of an unexpected internal error; the details are in the server log.")


# --- models -------------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the models…")
def get_predictor(folder: str | None = None) -> Predictor:
    """The Predictor of the artifacts folder, loaded once per server process (raises FileNotFoundError)."""
    return Predictor.load(folder or str(artifacts_dir()), device="cpu")


def predictor_or_none() -> Predictor | None:
    """get_predictor(), or None after telling the user why no model is available."""
    try:
        return get_predictor(str(artifacts_dir()))
    except FileNotFoundError as exc:
        st.warning(f"No trained model available: {exc}")
    except Exception as exc:  # a corrupt checkpoint must not take the page down
        show_error(exc, "Loading the models")
    return None


def file_digest(data: bytes) -> str:
    """SHA-256 hex digest of an upload's bytes (the cache key of its results)."""
    return hashlib.sha256(data).hexdigest()


def assess(predictor: Predictor, data: bytes, name: str, male: bool,
           target: str | None = "regressor") -> tuple[Prediction, Explanation | None]:
    """Bytes -> prediction and (unless target is None) a Grad-CAM explanation; no caching."""
    with _MODEL_LOCK:
        prediction = predictor.predict(data, male=male, name=name)
        explanation = None
        if target is not None:
            explanation = predictor.explain(prediction.original, male, target=target, class_index=prediction.stage)
    return prediction, explanation


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


def cached_prediction(predictor: Predictor, data: bytes, name: str, male: bool) -> Prediction:
    """predict() once per (file content, sex) in this session; later reruns reuse the result."""
    key = ("prediction", file_digest(data), bool(male))
    cache = _results()
    if key in cache:
        cache.move_to_end(key)
        return dataclasses.replace(cache[key], name=name)  # same bytes, maybe uploaded under a new name
    with _MODEL_LOCK:
        prediction = predictor.predict(data, male=male, name=name)
    return _remember(key, prediction)


def cached_explanation(predictor: Predictor, data: bytes, prediction: Prediction, target: str) -> Explanation:
    """Grad-CAM once per (file content, sex, target) in this session."""
    key = ("explanation", file_digest(data), prediction.male, target)
    cache = _results()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    with _MODEL_LOCK:
        explanation = predictor.explain(prediction.original, prediction.male, target=target,
                                        class_index=prediction.stage)
    return _remember(key, explanation)


# --- results as files ------------------------------------------------------------------------------------------

def result_record(prediction: Prediction, readout: ClinicalReadout | None = None) -> dict[str, Any]:
    """A flat, CSV-friendly row of one result (stage probabilities and interval as their own columns)."""
    row: dict[str, Any] = {k: v for k, v in prediction.to_dict().items()
                           if k not in ("stage_probabilities", "interval")}
    for stage, p in (prediction.stage_probabilities or {}).items():
        row[f"p_{stage}"] = round(p, 4)
    if prediction.interval is not None:
        row.update(interval_low_months=round(prediction.interval.low, 1),
                   interval_high_months=round(prediction.interval.high, 1),
                   interval_level=prediction.interval.level)
    if readout is not None:
        row.update({f"clinical_{k}": (round(v, 3) if isinstance(v, float) else v)
                    for k, v in readout.to_dict().items() if k != "bone_age_months"})
    return row


def result_json(prediction: Prediction, readout: ClinicalReadout | None = None) -> str:
    """The full result (prediction and clinical read-out) as pretty JSON."""
    payload = prediction.to_dict()
    payload["clinical"] = None if readout is None else readout.to_dict()
    payload["disclaimer"] = DISCLAIMER
    return json.dumps(payload, indent=2)


#: Longest side of images sent to the browser (full resolution stays in the downloads).
DISPLAY_MAX_SIDE = 1024


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
def _read_text(path: str, mtime: float) -> str:
    return Path(path).read_text(encoding="utf-8")


def _load(name: str, reader) -> Any:
    path = artifact_path(name)
    if path is None:
        st.info(f"`{name}` is not in `{artifacts_dir()}`; run `python train.py` to create it.")
        return None
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
    """predictions.csv (holdout predictions of every model), or None with a message shown."""
    frame = _load(art.PREDICTIONS_FILE, _read_csv)
    if frame is not None and "boneage" not in frame:
        st.warning(f"`{art.PREDICTIONS_FILE}` lacks the `boneage` column.")
        return None
    return frame


def load_histories(models: tuple[str, ...] = ("regressor", "classifier")) -> dict[str, pd.DataFrame]:
    """Training histories that exist, by model name (a message shown for each missing one)."""
    out = {}
    for model in models:
        frame = _load(art.history_file(model), _read_csv)
        if frame is not None and {"epoch", "train_loss", "val_loss"} <= set(frame.columns):
            out[model] = frame
    return out


def load_config() -> dict | None:
    """config.json (the training configuration), or None with a message shown."""
    return _load(art.CONFIG_FILE, _read_json)


def load_report() -> str | None:
    """run_report.md, or None with a message shown."""
    return _load(art.REPORT_FILE, _read_text)


# --- batch ------------------------------------------------------------------------------------------------------

_SEX_WORDS = {"m": True, "male": True, "1": True, "true": True, "boy": True,
              "f": False, "female": False, "0": False, "false": False, "girl": False}


def parse_sex_table(data: bytes) -> dict[str, bool]:
    """A CSV with columns id and sex (M/F, male/female, 1/0, true/false) -> {id: male}; ValueError if malformed."""
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the CSV: {exc}") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if not {"id", "sex"} <= set(frame.columns):
        raise ValueError(f"the CSV needs columns id and sex; found {', '.join(frame.columns)}")
    out: dict[str, bool] = {}
    for ident, sex in zip(frame["id"].fillna(""), frame["sex"].fillna("")):
        key, word = str(ident).strip(), str(sex).strip().lower()
        if not key:
            raise ValueError("the CSV has a row without an id")
        if word not in _SEX_WORDS:
            raise ValueError(f"unknown sex {sex!r} for id {ident!r} (use M or F)")
        if key in out and out[key] != _SEX_WORDS[word]:
            raise ValueError(f"id {key!r} is listed with both sexes")
        out[key] = _SEX_WORDS[word]
    return out


def sex_for(file_name: str, table: dict[str, bool], default: bool, data: bytes | None = None) -> tuple[bool, str]:
    """Sex of an upload: the id table (full name or name without extension), else its DICOM PatientSex, else default."""
    stem = file_name.rsplit(".", 1)[0]
    for key in (file_name, stem):
        if key in table:
            return table[key], "CSV"
    if data is not None:
        try:
            info = read_dicom_info(data, file_name)
        except ValueError:  # an unreadable DICOM: the prediction will report it
            info = None
        if info is not None and info.male is not None:
            return info.male, "DICOM"
    return default, "batch default"


def batch_row(predictor: Predictor, data: bytes, name: str, male: bool, sex_source: str) -> dict[str, Any]:
    """One results-table row for a file: the flat result, or the error message when it failed."""
    base = {"file": name, "sex": "M" if male else "F", "sex_from": sex_source}
    try:
        prediction, _ = assess(predictor, data, name, male, target=None)
    except ValueError as exc:
        return {**base, "error": str(exc)}
    except Exception as exc:  # one bad file must not stop the batch
        logger.error("Batch prediction failed for %s", name, exc_info=exc)
        return {**base, "error": "unexpected internal error (see the server log)"}
    row = result_record(prediction)
    row.pop("name", None)
    row.pop("sex", None)
    return {**base, **row, "error": ""}


def load_split() -> pd.DataFrame | None:
    """split.csv (id, split), or None with a message shown."""
    return _load(art.SPLIT_FILE, _read_csv)
