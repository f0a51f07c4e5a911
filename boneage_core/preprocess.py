"""The one preprocessing path: gray image -> squashed square -> percentile contrast stretch -> [0, 1].

Training, evaluation, the baseline, the app and Grad-CAM all call :func:`preprocess` (or
:func:`preprocess_source`, which loads first). Normalisation (mean/std) is applied inside the
network from the checkpoint's :class:`PreprocessSpec`, so no caller ever re-types it.

Geometry: the RSNA 299 px training copy was made by squashing each radiograph (about
1500 x 2000 px, any aspect ratio) to a square without keeping the aspect ratio. A full-size upload
is therefore squashed the same way (no padding, no cropping) so the model sees the same shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .imaging import ImageLoadError, ImageSource, load_gray, source_name

logger = logging.getLogger(__name__)

#: Below this spread (on a 0-1 scale) between the stretch percentiles the image is blank.
MIN_CONTRAST = 0.02
#: Neighbouring pixels of a radiograph's model input correlate strongly (>= 0.85 on 211 RSNA images);
#: below this the input looks like noise rather than a photograph of anatomy.
MIN_NEIGHBOUR_CORRELATION = 0.6


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a file into model input; stored in every checkpoint."""

    image_size: int = 256
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    mean: float = 0.5
    std: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def with_size(self, image_size: int) -> "PreprocessSpec":
        return PreprocessSpec(**{**asdict(self), "image_size": int(image_size)})

    def key(self) -> str:
        """Short stable hash of the spec (used to name caches)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float 2-D array to (H, W) with antialiased bilinear interpolation (a copy, float32)."""
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    if img.size == (shape[1], shape[0]):
        return np.asarray(img, dtype=np.float32).copy()
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def squash_resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size without keeping the aspect ratio; resize_to(map, original shape) undoes it."""
    return resize_to(gray, (size, size))


def contrast_stretch(gray: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Map the [low, high] percentile window to [0, 1] and clip; refuse blank images."""
    lo, hi = np.percentile(gray, [low_percentile, high_percentile])
    if hi - lo < MIN_CONTRAST:
        raise ImageLoadError(
            f"image is blank or nearly uniform (contrast {hi - lo:.3f}); no radiograph to read"
        )
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Float gray image in [0, 1] (any size) -> float32 (S, S) in [0, 1], the model's view."""
    if gray.ndim != 2:
        raise ImageLoadError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    square = squash_resize(gray, spec.image_size)
    return contrast_stretch(square, spec.low_percentile, spec.high_percentile)


def prepare(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A gray image -> the uint8 (S, S) model input: what the training caches store and every network is fed."""
    return to_uint8(preprocess(gray, spec))


def preprocess_source(source: ImageSource, spec: PreprocessSpec, name: str | None = None) -> np.ndarray:
    """Load a file/bytes/upload and preprocess it; errors name the source."""
    name = name or source_name(source)
    gray = load_gray(source, name=name)
    try:
        return preprocess(gray, spec)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{name}: {exc}") from exc


def neighbour_correlation(image: np.ndarray) -> float:
    """Pearson correlation of horizontally adjacent pixels (1 = smooth structure, 0 = noise)."""
    a, b = image[:, :-1].ravel(), image[:, 1:].ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def input_warnings(image: np.ndarray) -> list[str]:
    """Plausibility checks on a preprocessed image: reasons a prediction on it may be meaningless."""
    warnings = []
    corr = neighbour_correlation(image)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        warnings.append(f"the image has almost no spatial structure (neighbour correlation {corr:.2f}); "
                        "it does not look like a radiograph, so the result is meaningless")
    return warnings


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (for compact caches)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
