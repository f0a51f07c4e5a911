"""Load radiographs (PNG, JPEG, WebP, 8/16-bit, DICOM) into float grayscale arrays in [0, 1]."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = Union[str, Path, bytes, BinaryIO]

#: Largest accepted image, in pixels (a 12k x 12k radiograph is already far beyond any detector).
MAX_PIXELS = 150_000_000
#: Smallest accepted side, in pixels: below this there is no hand to read.
MIN_SIDE = 32
#: Largest accepted file, in bytes.
MAX_FILE_BYTES = 200 * 1024 * 1024

_DICOM_MAGIC_OFFSET = 128
#: Average month length in days (365.25 / 12), for ages in months.
DAYS_PER_MONTH = 30.4375


class ImageLoadError(ValueError):
    """An image could not be read or is not a usable radiograph."""


@dataclass(frozen=True)
class DicomInfo:
    """Patient data read from DICOM tags, where present."""

    male: bool | None = None
    birth_date: date | None = None
    study_date: date | None = None

    @property
    def chronological_age_months(self) -> float | None:
        """Age at the study in months, when both dates are known."""
        if self.birth_date is None or self.study_date is None:
            return None
        days = (self.study_date - self.birth_date).days
        return None if days < 0 else days / DAYS_PER_MONTH


def _read_bytes(source: ImageSource) -> bytes:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"No such image file: {path}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageLoadError(f"{path.name}: file is {size / 1e6:.0f} MB, more than the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
        return path.read_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageLoadError(f"Upload is larger than the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
    return data


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM preamble magic ('DICM' at offset 128)."""
    return data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    h, w = shape[:2]
    if h * w > MAX_PIXELS:
        raise ImageLoadError(f"{name}: {w}x{h} px is more than the {MAX_PIXELS / 1e6:g} MP limit")
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(f"{name}: {w}x{h} px is too small to be a hand radiograph (min side {MIN_SIDE} px)")


def _pil_to_gray(img: Image.Image, name: str) -> np.ndarray:
    """Convert a PIL image of any common mode to float32 gray in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
    elif mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs decode as mode I; values above 16 bits are scaled by their own max.
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        arr = (np.clip(arr, 0, None) / top).astype(np.float32)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    elif mode in ("L", "P", "1", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX"):
        if mode in ("RGBA", "LA", "PA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        if img.mode not in ("L", "1"):
            _refuse_colour(img.convert("RGB"), name)
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        raise ImageLoadError(f"{name}: unsupported image mode {mode}")
    return arr


#: Mean channel spread (0-255) above which an RGB image counts as a colour photograph.
MAX_COLOUR_SPREAD = 12.0


def _refuse_colour(rgb: Image.Image, name: str) -> None:
    """Radiographs are gray even when saved as RGB; refuse clearly coloured pictures."""
    small = np.asarray(rgb.reduce(max(1, min(rgb.size) // 256)), dtype=np.float32)
    spread = float((small.max(axis=2) - small.min(axis=2)).mean())
    if spread > MAX_COLOUR_SPREAD:
        raise ImageLoadError(
            f"{name}: this looks like a colour photograph (mean channel spread {spread:.0f}/255), "
            "not a grayscale radiograph"
        )


def _load_raster(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_shape((img.height, img.width), name)
            img.load()
            # Phone photos of films carry an EXIF orientation; apply it so the hand is upright.
            upright = ImageOps.exif_transpose(img)
            return _pil_to_gray(upright, name)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name}: not a readable image (PNG, JPEG, WebP or DICOM expected)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(f"{name}: corrupt or truncated image ({exc})") from exc


def _read_dataset(data: bytes, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, EOFError) as exc:
        raise ImageLoadError(f"{name}: unreadable DICOM file ({exc})") from exc


def _dicom_pixels(data: bytes, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dataset(data, name)
    if "PixelData" not in ds:
        raise ImageLoadError(f"{name}: DICOM file holds no image (no PixelData)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_shape((rows, cols), name)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/unsupported pixel data
        raise ImageLoadError(f"{name}: DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and ds.get("SamplesPerPixel", 1) > 1:
        raw = raw[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif raw.ndim == 3:
        logger.warning("%s: multi-frame DICOM, using the first frame", name)
        raw = raw[0]
    if raw.ndim != 2:
        raise ImageLoadError(f"{name}: DICOM image has unsupported shape {raw.shape}")
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = np.asarray(apply_voi_lut(arr, ds, prefer_lut=True), dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ImageLoadError(f"{name}: DICOM image is blank (constant value {lo})")
    arr = (arr - lo) / (hi - lo)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _parse_dicom_date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def read_dicom_info(source: ImageSource, name: str = "image") -> DicomInfo | None:
    """Patient sex and dates from a DICOM file; None when the source is not DICOM."""
    data = _read_bytes(source)
    if not is_dicom(data):
        return None
    ds = _read_dataset(data, name)
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    study = ds.get("StudyDate", None) or ds.get("AcquisitionDate", None) or ds.get("ContentDate", None)
    return DicomInfo(
        male={"M": True, "F": False}.get(sex),
        birth_date=_parse_dicom_date(ds.get("PatientBirthDate", None)),
        study_date=_parse_dicom_date(study),
    )


def source_name(source: ImageSource) -> str:
    """A short human-readable name for an image source."""
    if isinstance(source, (str, Path)):
        return Path(source).name
    return str(getattr(source, "name", "upload"))


def load_gray(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Read any supported image (path, bytes or file object) as float32 grayscale in [0, 1].

    Raises ImageLoadError with a message fit for a user on anything unreadable.
    """
    name = name or source_name(source)
    data = _read_bytes(source)
    if not data:
        raise ImageLoadError(f"{name}: file is empty")
    arr = _dicom_pixels(data, name) if is_dicom(data) else _load_raster(data, name)
    if not np.isfinite(arr).all():
        raise ImageLoadError(f"{name}: image holds non-finite values")
    return arr
