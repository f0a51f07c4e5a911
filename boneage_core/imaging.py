"""Load radiographs (PNG, JPEG, WebP, TIFF, GIF, BMP, 8/16-bit, DICOM) into float grayscale arrays in [0, 1]."""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError, InputTypeError

__all__ = [
    "ACCEPTED", "MAX_PIXELS", "MIN_SIDE", "MAX_FILE_BYTES", "DicomInfo", "ImageLoadError", "ImageSource",
    "InputTypeError", "check_gray_array", "is_dicom", "load_gray", "read_dicom_info", "source_name",
]

logger = logging.getLogger(__name__)

ImageSource = Union[str, Path, bytes, BinaryIO]

#: Largest accepted image, in pixels (a 12k x 12k radiograph is already far beyond any detector).
MAX_PIXELS = 150_000_000
#: Smallest accepted side, in pixels: below this there is no hand to read.
MIN_SIDE = 32
#: Largest accepted file, in bytes.
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Above this many pixels an image is checked from its header and a reduced view before the full decode.
LARGE_PIXELS = 16_000_000
#: A large image stored in fewer bytes per pixel than this (compressed > 500:1) holds no radiograph: real
#: ones take 0.34-0.50 bytes/px as PNG (the 24 full-size RSNA samples), a blank 144 MP PNG 0.001.
MIN_BYTES_PER_PIXEL = 0.002
#: Spread between the 0.5 and 99.5 % percentiles below which an image is blank (= preprocess.MIN_CONTRAST).
BLANK_SPREAD = 0.02
#: Share of pixels a DICOM window may clip to white; above it the hand is washed out (real films: < 0.2 %).
MAX_SATURATED_FRACTION = 0.5
#: Mean channel spread (0-255) above which an RGB image counts as a colour photograph.
MAX_COLOUR_SPREAD = 12.0

#: Raster formats read by Pillow (first frame of multi-page TIFF and animated GIF), then DICOM.
RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP")
ACCEPTED = "PNG, JPEG, WebP, TIFF, GIF, BMP (first frame of multi-page files) or DICOM"
#: File name endings of the images these decoders read (image folders, batch folders, the app's uploaders).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".dcm", ".dicom")
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP",
}
_DICOM_MAGIC_OFFSET = 128
#: Average month length in days (365.25 / 12), for ages in months.
DAYS_PER_MONTH = 30.4375

# Pillow warns above its own default (89 MP) and refuses above twice that; follow our limit instead, so an
# accepted 108 MP radiograph opens silently. Our own check (_check_shape) runs on the header before decoding.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


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


# --- sources ---


def _too_big(what: str) -> ImageLoadError:
    return ImageLoadError(f"{what} is larger than the {MAX_FILE_BYTES / 1e6:.0f} MB limit (imaging.MAX_FILE_BYTES)")


def _read_path(path: Path) -> bytes:
    if not path.is_file():
        raise ImageLoadError(f"No such image file: {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _too_big(f"{path.name}: file of {size / 1e6:.0f} MB")
    return path.read_bytes()


def _read_stream(source: object) -> bytes:
    if isinstance(source, io.TextIOBase):
        raise InputTypeError(f"cannot read an image from {source_name(source)}: file opened in text mode; "
                             "open images with mode 'rb'")
    read = getattr(source, "read", None)
    if not callable(read):
        raise InputTypeError(
            f"cannot read an image from {type(source).__name__} {source!r:.40}; "
            "pass a path, bytes, a binary file object or a numpy array"
        )
    data = read(MAX_FILE_BYTES + 1)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputTypeError(f"{source_name(source)}: read() returned {type(data).__name__}, not bytes; "
                             "open images with mode 'rb'")
    return bytes(data)


def read_bytes(source: ImageSource) -> bytes:
    """The bytes of a path, bytes-like object or binary file object, refusing sources over MAX_FILE_BYTES."""
    if isinstance(source, (str, Path)):
        return _read_path(Path(source))
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_stream(source)
    if len(data) > MAX_FILE_BYTES:
        raise _too_big("Upload")
    return data


def source_name(source: ImageSource) -> str:
    """A short human-readable name for an image source."""
    if isinstance(source, (str, Path)):
        return Path(source).name
    name = getattr(source, "name", None)
    return Path(name).name if isinstance(name, (str, Path)) and str(name) else "upload"


def is_dicom(data: bytes) -> bool:
    """True for DICOM bytes: 'DICM' at offset 128, or a raw dataset without the preamble (group 0002/0008 first)."""
    if data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    return len(data) >= 8 and struct.unpack("<H", data[:2])[0] in (0x0002, 0x0008)


# --- arrays ---


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    h, w = shape[:2]
    if h * w > MAX_PIXELS:
        raise ImageLoadError(f"{name}: {w}x{h} px is more than the {MAX_PIXELS / 1e6:g} MP limit "
                             "(imaging.MAX_PIXELS); downscale it first")
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(f"{name}: {w}x{h} px is too small to be a hand radiograph "
                             f"(min side {MIN_SIDE} px, imaging.MIN_SIDE)")


def _unit_scale(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "u":
        return np.multiply(arr, np.float32(1.0 / np.iinfo(arr.dtype).max), dtype=np.float32)
    if arr.dtype.kind != "f":
        raise InputTypeError(f"{name}: expected a float array in [0, 1] or an unsigned integer array, "
                             f"got dtype {arr.dtype}")
    lo, hi = float(arr.min()), float(arr.max())  # NaN propagates into min and max, inf shows in one of them
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ImageLoadError(f"{name}: image holds {bad} non-finite value(s) (NaN or inf); "
                             "replace them before predicting")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ImageLoadError(f"{name}: float values must lie in [0, 1], found {lo:g} to {hi:g}; scale them first")
    return arr.astype(np.float32, copy=False)


def check_gray_array(arr: object, name: str = "array") -> np.ndarray:
    """Validate a grayscale image array and return it as float32 in [0, 1].

    The one validation for arrays (files end with it too): 2-D (or H x W x 1), at least MIN_SIDE and at
    most MAX_PIXELS, finite. Float arrays must lie in [0, 1]; unsigned integers are divided by their type's
    maximum (uint8 / 255, uint16 / 65535). Raises ImageLoadError (bad content) or InputTypeError (not an array).
    """
    if not isinstance(arr, np.ndarray):
        raise InputTypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ImageLoadError(f"{name}: expected a 2-D grayscale array (H, W), got shape {arr.shape}")
    _check_shape(arr.shape, name)
    return _unit_scale(arr, name)


def _is_blank(gray: np.ndarray) -> bool:
    lo, hi = np.percentile(gray, [0.5, 99.5])
    return bool(hi - lo < BLANK_SPREAD)


# --- raster files ---


def _colour_spread(rgb: np.ndarray) -> float:
    """Mean over pixels of (largest - smallest channel), on the first three channels (element-wise on the planes:
    a reduction over the short last axis is many times slower)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).mean())


def _refuse_colour(rgb: np.ndarray, name: str) -> None:
    """Radiographs are gray even when saved as RGB; refuse clearly coloured pictures (rgb: H x W x 3, 0-255)."""
    spread = _colour_spread(rgb)
    if spread > MAX_COLOUR_SPREAD:
        raise ImageLoadError(
            f"{name}: this looks like a colour photograph (mean channel spread {spread:.0f}/255), "
            "not a grayscale radiograph"
        )


def _float_gray(img: Image.Image, name: str) -> np.ndarray:
    """Mode F (float TIFF): min-max to [0, 1], refusing NaN/inf first."""
    arr = np.asarray(img, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageLoadError(f"{name}: image holds non-finite values (NaN or inf); re-export it")
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _int32_gray(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    # 16-bit PNGs may decode as mode I; values above 16 bits are scaled by their own max.
    top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
    return np.multiply(np.clip(arr, 0, None), np.float32(1.0 / top), dtype=np.float32)


def _pil_to_gray(img: Image.Image, name: str) -> np.ndarray:
    """Convert a PIL image of any common mode to float32 gray in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.multiply(np.asarray(img), np.float32(1.0 / 65535.0), dtype=np.float32)
    if mode == "I":
        return _int32_gray(img)
    if mode == "F":
        return _float_gray(img, name)
    if mode in ("RGBA", "LA", "PA", "P"):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
    if mode in ("1", "L"):
        return _unit_scale(np.asarray(img.convert("L") if mode == "1" else img), name)
    if img.mode not in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        raise ImageLoadError(f"{name}: unsupported image mode {mode}; accepted: {ACCEPTED}")
    rgb = img.convert("RGB")
    _refuse_colour(np.asarray(rgb.reduce(max(1, min(rgb.size) // 256)), dtype=np.float32), name)
    return _unit_scale(np.asarray(rgb.convert("L")), name)


def _open_raster(data: bytes, name: str) -> Image.Image:
    """Open (header only) with our size limits; Pillow's decompression-bomb check never speaks to the user."""
    try:
        with warnings.catch_warnings():
            # Only reached for images above MAX_PIXELS (Pillow's limit follows ours): refuse them with our message.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.4g} MP" if found else "the image"
        raise ImageLoadError(f"{name}: {size} is more than the {MAX_PIXELS / 1e6:g} MP limit "
                             "(imaging.MAX_PIXELS); downscale it first") from exc
    _check_shape((img.height, img.width), name)
    return img


def _check_large(data: bytes, img: Image.Image, name: str) -> None:
    """Large images: refuse from the header what holds no radiograph, then check a reduced view."""
    pixels = img.width * img.height
    if pixels <= LARGE_PIXELS:
        return
    if len(data) / pixels < MIN_BYTES_PER_PIXEL:
        raise ImageLoadError(
            f"{name}: {img.width}x{img.height} px stored in {len(data) / 1e3:.0f} kB (compressed "
            f"{pixels / len(data):.0f}:1): blank or synthetic, not a radiograph (imaging.MIN_BYTES_PER_PIXEL)"
        )
    if img.format == "JPEG":
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as small:
            small.draft(small.mode, (img.width // 8, img.height // 8))  # DCT-scaled decode, 1/64 of the pixels
            preview = _pil_to_gray(small, name)
    else:
        img.load()
        preview = _pil_to_gray(img.reduce(max(1, min(img.size) // 512)), name)
    if _is_blank(preview):
        raise ImageLoadError(f"{name}: {img.width}x{img.height} px image is blank or nearly uniform; "
                             "no radiograph to read")


def _first_frame(img: Image.Image, name: str) -> None:
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        logger.warning("%s: %s with %d frames, using the first", name, img.format, frames)
        img.seek(0)


def _decode_failure(data: bytes, name: str, exc: Exception) -> ImageLoadError:
    kind = next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    detail = str(exc) or type(exc).__name__
    if kind is None:
        return ImageLoadError(f"{name}: not a readable image{_text_hint(data)}; accepted: {ACCEPTED}")
    if isinstance(exc, UnidentifiedImageError):
        return ImageLoadError(f"{name}: the {kind} file is corrupt (its header cannot be read); "
                              "export or copy it again")
    if "truncat" in detail.lower():
        return ImageLoadError(f"{name}: the {kind} file is truncated (its data ends early: {detail}); "
                              "copy or upload it again")
    return ImageLoadError(f"{name}: the {kind} file is corrupt ({detail}); export or copy it again")


def _text_hint(data: bytes) -> str:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if not text.strip() or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return ""
    first = text.strip().splitlines()[0][:40]
    return f" but a text file (it starts with {first!r})"


#: What PIL raises on bytes it cannot decode (a corrupt, truncated or unknown file).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error)


def _load_raster(data: bytes, name: str) -> np.ndarray:
    try:
        with _open_raster(data, name) as img:
            _check_large(data, img, name)
            _first_frame(img, name)
            img.load()
            # Phone photos of films carry an EXIF orientation; apply it so the hand is upright.
            ImageOps.exif_transpose(img, in_place=True)
            return _pil_to_gray(img, name)
    except ImageLoadError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_failure(data, name, exc) from exc


#: The IJG (libjpeg) luminance quantisation table at quality 50, the table every JPEG quality scales.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) a JPEG file was most likely saved at, from its luminance quantisation table; None when
    the bytes are not a JPEG. Estimated from the table's mean against the quality-50 table (libjpeg scales that table
    by 5000 / q below 50 and by 200 - 2 q above), so it is exact for libjpeg's own tables, approximate for others."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            tables = getattr(img, "quantization", None) or {}
    except _DECODE_ERRORS:
        return None
    if 0 not in tables:
        return None
    scale = 100.0 * np.mean(tables[0]) / _IJG_LUMINANCE.mean()
    quality = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return int(np.clip(round(quality), 1, 100))


#: JPEG quality (jpeg_quality) below which the report warns that compression may have cost the reading: on the test
#: split (docs/shift.md, "A strongly compressed JPEG is said so"; all 1,892 films), films saved at quality 30 moved 4.7
#: months from their clean estimate on average and 3.7 % of them more than 2 years, some without any other warning; at
#: quality 75, 1.7 months and 0.3 %.
JPEG_QUALITY_WARN_BELOW = 50


def compression_warnings(quality: int | None) -> list[str]:
    """What the report says of a JPEG saved below JPEG_QUALITY_WARN_BELOW (none for other files)."""
    if quality is None or quality >= JPEG_QUALITY_WARN_BELOW:
        return []
    return [f"the image is a strongly compressed JPEG (quality about {quality}; below {JPEG_QUALITY_WARN_BELOW}): "
            "compression erases fine bone detail, and test films saved at quality 30 were read 4.7 months from their "
            "uncompressed reading on average and more than 2 years off it on 4 in 100; read the film from a PNG or "
            "DICOM export, or a JPEG of quality 75 or more, if you can"]


# --- DICOM ---


def _read_dataset(data: bytes, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, EOFError, struct.error) as exc:
        raise ImageLoadError(f"{name}: unreadable DICOM file ({exc}); export it again from the PACS") from exc
    _complete_file_meta(ds)
    return ds


def _complete_file_meta(ds) -> None:
    """A raw dataset (no preamble, no file meta) lacks the transfer syntax; take the one it was read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _dicom_raw_gray(ds, name: str) -> np.ndarray:
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/unsupported pixel data
        raise ImageLoadError(f"{name}: DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    if colour and raw.ndim == 3 and raw.shape[-1] in (3, 4):
        rgb = raw[..., :3].astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
        photometric = ds.get("PhotometricInterpretation", "RGB")
        _refuse_colour(rgb[::4, ::4] * (255.0 / top), f"{name} (DICOM {photometric})")
        return rgb @ np.array([0.299, 0.587, 0.114])
    if raw.ndim == 3:
        logger.warning("%s: multi-frame DICOM, using the first frame", name)
        raw = raw[0]
    if raw.ndim != 2:
        raise ImageLoadError(f"{name}: DICOM image has unsupported shape {raw.shape}")
    return raw


def _check_window(arr: np.ndarray, ds, name: str) -> None:
    white = float(np.count_nonzero(arr >= 1.0 - 1e-6)) / arr.size
    if white > MAX_SATURATED_FRACTION:
        raise ImageLoadError(
            f"{name}: the DICOM window (center {ds.get('WindowCenter', '?')}, width {ds.get('WindowWidth', '?')}) "
            f"clips {white:.0%} of the pixels to white, more than {MAX_SATURATED_FRACTION:.0%} "
            "(imaging.MAX_SATURATED_FRACTION); re-export with a wider window or without VOI"
        )


def _dicom_pixels(data: bytes, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dataset(data, name)
    if "PixelData" not in ds:
        raise ImageLoadError(f"{name}: DICOM file holds no image (no PixelData)")
    _check_shape((int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), name)
    raw = _dicom_raw_gray(ds, name)
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    windowed = raw.ndim == 2 and int(ds.get("SamplesPerPixel", 1) or 1) == 1 and (
        "WindowCenter" in ds or "VOILUTSequence" in ds)
    if windowed:
        arr = np.asarray(apply_voi_lut(arr, ds, prefer_lut=True), dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ImageLoadError(f"{name}: DICOM image is blank (constant value {lo})")
    arr = (arr - lo) / (hi - lo)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    if windowed:
        _check_window(arr, ds, name)
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
    data = read_bytes(source)
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


def load_gray(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Read any supported image (path, bytes or binary file object) as float32 grayscale in [0, 1].

    Accepted: see ACCEPTED. Raises ImageLoadError with a one-line message fit for a user on anything
    unreadable, InputTypeError when `source` is not an image source at all (None, a number, a text-mode file).
    """
    name = name or source_name(source)
    data = read_bytes(source)
    if not data:
        raise ImageLoadError(f"{name}: file is empty")
    arr = _dicom_pixels(data, name) if is_dicom(data) else _load_raster(data, name)
    return check_gray_array(arr, name)
