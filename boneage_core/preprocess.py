"""The one preprocessing path: gray image -> (optional hand crop) -> squashed square -> (smoothed when grainy) ->
contrast stretch -> [0, 1]. The input gate reads the same path with the smoothing off (``grainy=False``): it judges
the image as given.

Training, evaluation, the baseline, the app and Grad-CAM all call :func:`preprocess` (or
:func:`preprocess_source`, which loads first). Normalisation (mean/std) is applied inside the
network from the checkpoint's :class:`PreprocessSpec`, so no caller ever re-types it.

Geometry: the RSNA 299 px training copy was made by squashing each radiograph (about
1500 x 2000 px, any aspect ratio) to a square without keeping the aspect ratio. A full-size upload
is therefore squashed the same way (no padding) so the model sees the same shapes.

Hand crop (``PreprocessSpec.hand_crop``, off by default): before the squash the image is cut to the
bounding box of the hand found by :func:`boneage_core.handmask.segment_hand` plus a margin. The box is
kept in fractions of the image (:func:`crop_box`), so a full-size original and its squashed 299 px copy
are cut alike, and :func:`heatmap_to_original` puts a map made on the model input back into it.

Padding: bright uniform border rows and columns (white padding that widens or heightens a film to another aspect
ratio) are cut off before anything else (:func:`padding_box`, part of :func:`crop_box`): the contrast stretch would
take the padding as the film's white and the squash would shrink the hand, and the networks read such films about
21 months wrong (docs/shift.md). Dark borders are left: most films of the data set have them; so is bright padding
around a film with a bright background (an inverted film, whose black frame is part of what shows it inverted).

Grain: the training films are one smooth conversion, and the contrast stretch multiplies the grain of a low-contrast
film several times. A film whose noise (:func:`noise_level`, measured once on the whole image at NOISE_SIDE px) lies
above every film of the data set is smoothed before the stretch (:func:`denoise`, total variation, in proportion to
the noise measured on each square); no film of the data set is changed (docs/shift.md, "Grainy films").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .handmask import WORK_SIDE, hand_bbox, segment_hand
from .imaging import ImageLoadError, ImageSource, load_gray, source_name

logger = logging.getLogger(__name__)

#: Below this spread (on a 0-1 scale) between the stretch percentiles the image is blank.
MIN_CONTRAST = 0.02
#: Neighbouring pixels of a radiograph's model input correlate strongly (>= 0.85 on 211 RSNA images);
#: below this the input looks like noise rather than a photograph of anatomy.
MIN_NEIGHBOUR_CORRELATION = 0.6
#: Margin around the hand's bounding box in a hand crop: this share of the image's height above and below the
#: hand, and of its width left and right of it (clipped to the image).
HAND_CROP_MARGIN = 0.04

#: Version of what this module makes of an image, part of the name of every cache of model inputs (data.load_images):
#: 2 cut bright padding (PAD_*), 3 left it around a film with a bright background.
PREPROCESS_VERSION = 3
#: A border row or column is bright padding when its median is at least PAD_BRIGHT and at least PAD_SHARE of its
#: pixels lie within PAD_TOLERANCE of that median (JPEG and noise of a few grey levels on the padding stay within it).
#: A side is cut only when its padding holds at least PAD_MIN_SHARE of the image (a line or two of a scanner's frame
#: is left); at most half of the image is ever cut from each side. Of the 12,611 films of the data set 77 are cut, most by 2-5 % of
#: one side, the most by 14 % (on every 10th film, 705 of 1,262 have dark uniform border lines).
PAD_BRIGHT = 0.75
PAD_TOLERANCE = 0.03
PAD_SHARE = 0.98
PAD_MIN_SHARE = 0.02
#: Share of the padded film's shorter side whose outer band tells a dark background (a film as filmed: its padding is
#: cut) from a bright one (an inverted film, whose black frame turned white: left whole).
PAD_RING = 0.05

#: Side (px) of the square the grain of a whole image is measured on (that of the training films): a full-size
#: original's grain mostly averages out in the squash to the model's size, a 299 px film's does not.
NOISE_SIDE = 299
#: Noise level (:func:`noise_level`) above which an image is smoothed before the contrast stretch. Measured on all
#: 12,611 films of the data set: at most 0.0080 (median 0.0021; JPEG q30/q75, contrast x0.5, gamma 0.7/1.4, blur
#: and down-sampling of every 20th: at most 0.0082); under Gaussian noise of 3 grey levels at least 0.0098 (median
#: 0.0156); the 24 full-size originals 0.0014-0.0042 (docs/shift.md, "Grainy films").
NOISE_LIMIT = 0.009
#: Total-variation weight, in multiples of the square's own noise sd (0-1 grey scale), of :func:`denoise`.
DENOISE_WEIGHT = 1.5
#: Immerkaer's (1996) kernel: the difference of two Laplacians, blind to planes and to most of an image's structure.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)

#: (top, left, bottom, right) as fractions of the image's height and width; bottom and right exclusive.
CropBox = tuple[float, float, float, float]
#: The crop box of the whole image (no crop).
FULL_BOX: CropBox = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a file into model input; stored in every checkpoint."""

    image_size: int = 256
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    mean: float = 0.5
    std: float = 0.5
    hand_crop: bool = False  # cut the image to the hand's bounding box (plus HAND_CROP_MARGIN) before the squash

    def to_dict(self) -> dict:
        """The spec as stored in checkpoints; hand_crop only when on, so earlier specs keep their dicts and keys."""
        data = asdict(self)
        if not self.hand_crop:
            del data["hand_crop"]
        return data

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


def hand_crop_box(gray: np.ndarray, margin: float = HAND_CROP_MARGIN) -> CropBox:
    """The hand's bounding box plus `margin` x the image's height/width, as fractions; FULL_BOX when no hand is found.

    The hand is looked for (segment_hand) in the image squashed to WORK_SIDE x WORK_SIDE, so a full-size original
    and its squashed 299 px copy are segmented in the same geometry and get the same box. The box holds the whole
    (already dilated) mask plus the margin, so the crop never cuts off the part of the hand that was found; a hand
    found inside the exposed field of a film with dark margins may lack dim soft tissue, so then the box holds the
    whole field too.
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    segmentation = segment_hand(squash_resize(gray, WORK_SIDE))
    if not segmentation.found:
        return FULL_BOX
    kept = segmentation.mask if segmentation.field is None else segmentation.mask | segmentation.field
    top, left, bottom, right = hand_bbox(kept, margin)
    return (top / WORK_SIDE, left / WORK_SIDE, bottom / WORK_SIDE, right / WORK_SIDE)


def _bright_uniform(lines: np.ndarray) -> np.ndarray:
    """Per row of `lines`: whether it is bright padding (see PAD_BRIGHT)."""
    median = np.median(lines, axis=1, keepdims=True)
    return (median[:, 0] >= PAD_BRIGHT) & ((np.abs(lines - median) <= PAD_TOLERANCE).mean(1) >= PAD_SHARE)


def _padding_lines(lines: np.ndarray) -> int:
    """How many of the leading rows of `lines` (at most half of them) are bright padding; 0 when fewer than
    PAD_MIN_SHARE of them are. The outer row alone is read when it is not padding (nearly every film)."""
    outer = lines[: len(lines) // 2]
    if not len(outer) or not _bright_uniform(outer[:1])[0]:
        return 0
    padding = _bright_uniform(outer)
    n = len(padding) if padding.all() else int(np.argmin(padding))
    return n if n >= PAD_MIN_SHARE * len(lines) else 0


def padding_box(gray: np.ndarray) -> CropBox:
    """The image without its bright uniform border rows and columns (white padding), as a fractional box; FULL_BOX
    when what is left has a bright background itself (median of its outer PAD_RING band at least 0.5): an inverted
    film's black frame turns white and is part of the film the input gate must see to invert it back."""
    h, w = gray.shape
    top, bottom = _padding_lines(gray), _padding_lines(gray[::-1])
    left, right = _padding_lines(gray.T), _padding_lines(gray.T[::-1])
    inner = gray[top:h - bottom, left:w - right]
    if not top + bottom + left + right or not inner.size:  # nothing cut, or nothing left (a blank image)
        return FULL_BOX
    band = max(1, int(PAD_RING * min(inner.shape)))
    ring = np.concatenate([inner[:band].ravel(), inner[-band:].ravel(), inner[:, :band].ravel(), inner[:, -band:].ravel()])
    if np.median(ring) >= 0.5:
        return FULL_BOX
    return (top / h, left / w, 1.0 - bottom / h, 1.0 - right / w)


def box_within(outer: CropBox, inner: CropBox) -> CropBox:
    """A box given as fractions of the `outer` box, as fractions of the whole image."""
    height, width = outer[2] - outer[0], outer[3] - outer[1]
    return (outer[0] + inner[0] * height, outer[1] + inner[1] * width, outer[0] + inner[2] * height,
            outer[1] + inner[3] * width)


def crop_box(gray: np.ndarray, spec: PreprocessSpec) -> CropBox:
    """The part of a gray image that preprocess keeps under this spec: the image without its bright padding
    (:func:`padding_box`), cut further to the hand with spec.hand_crop."""
    outer = padding_box(gray)
    if not spec.hand_crop:
        return outer
    return box_within(outer, hand_crop_box(crop_to_box(gray, outer)))


_EPS = 1e-6


def box_pixels(box: CropBox, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A fractional crop box in pixels of an image of `shape` (rounded outwards, clipped, at least 1 px each way)."""
    h, w = shape
    top = min(h - 1, max(0, math.floor(box[0] * h + _EPS)))  # _EPS: a box made of whole pixels keeps them
    left = min(w - 1, max(0, math.floor(box[1] * w + _EPS)))
    bottom = max(top + 1, min(h, math.ceil(box[2] * h - _EPS)))
    right = max(left + 1, min(w, math.ceil(box[3] * w - _EPS)))
    return top, left, bottom, right


def crop_to_box(gray: np.ndarray, box: CropBox) -> np.ndarray:
    """The part of a 2-D image inside a fractional crop box (a view; the image itself for FULL_BOX)."""
    top, left, bottom, right = box_pixels(box, gray.shape)
    return gray[top:bottom, left:right]


def heatmap_to_original(model_map: np.ndarray, shape: tuple[int, int], box: CropBox = FULL_BOX) -> np.ndarray:
    """A map on the (S, S) model input -> float32 `shape`: un-squashed into the crop box, zeros outside it.

    The inverse of preprocess's geometry; with FULL_BOX it is resize_to(model_map, shape).
    """
    top, left, bottom, right = box_pixels(box, shape)
    if (top, left, bottom, right) == (0, 0, shape[0], shape[1]):
        return resize_to(model_map, shape)
    out = np.zeros(shape, dtype=np.float32)
    out[top:bottom, left:right] = resize_to(model_map, (bottom - top, right - left))
    return out


def contrast_stretch(gray: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Map the [low, high] percentile window to [0, 1] and clip; refuse blank images."""
    lo, hi = np.percentile(gray, [low_percentile, high_percentile])
    if hi - lo < MIN_CONTRAST:
        raise ImageLoadError(
            f"image is blank or nearly uniform (contrast {hi - lo:.3f}); no radiograph to read"
        )
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def noise_sd(image: np.ndarray) -> float:
    """The sd of an image's white noise, in its own grey units (Immerkaer 1996: mean |image * kernel|, scaled)."""
    image = np.asarray(image, dtype=np.float64)
    if min(image.shape) < 3:
        return 0.0
    filtered = ndimage.convolve(image, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(filtered).mean() / 6.0)


def noise_level(gray: np.ndarray) -> float:
    """The grain of a whole gray image: its noise sd at NOISE_SIDE x NOISE_SIDE relative to the contrast stretch's
    window (what the stretch multiplies it to); 0 for a blank image."""
    return _grain(squash_resize(gray, NOISE_SIDE))


def _grain(square: np.ndarray) -> float:
    lo, hi = np.percentile(square, [0.5, 99.5])
    return noise_sd(square) / float(hi - lo) if hi > lo else 0.0


def film_grain(gray: np.ndarray) -> float:
    """:func:`noise_level` of an image with a film's spatial structure, from one squash; 0 for an image of noise alone
    (neighbour correlation below MIN_NEIGHBOUR_CORRELATION: left as it is, for input_warnings and the gate)."""
    square = squash_resize(gray, NOISE_SIDE)
    return _grain(square) if neighbour_correlation(square) >= MIN_NEIGHBOUR_CORRELATION else 0.0


def is_grainy(gray: np.ndarray) -> bool:
    """Whether preprocess smooths this image before the contrast stretch: its :func:`film_grain` above NOISE_LIMIT."""
    return film_grain(gray) > NOISE_LIMIT


def denoise(square: np.ndarray) -> np.ndarray:
    """Total-variation smoothing of a square, its weight DENOISE_WEIGHT x the square's own noise sd (float32)."""
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(square, weight=DENOISE_WEIGHT * noise_sd(square)).astype(np.float32)


def preprocess(gray: np.ndarray, spec: PreprocessSpec, box: CropBox | None = None,
               grainy: bool | None = None) -> np.ndarray:
    """Float gray image in [0, 1] (any size) -> float32 (S, S) in [0, 1], the model's view.

    The image is first cut to `box` (default crop_box(gray, spec): without its bright padding, and to the hand with
    spec.hand_crop; a caller that also maps a heatmap back with heatmap_to_original passes the box it computed, so
    the hand is found once).
    A grainy image (`grainy`, default is_grainy(gray); a caller preparing one image for several specs measures it
    once) is smoothed before the stretch.
    """
    if gray.ndim != 2:
        raise ImageLoadError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    grainy = is_grainy(gray) if grainy is None else grainy
    gray = crop_to_box(gray, crop_box(gray, spec) if box is None else box)
    square = squash_resize(gray, spec.image_size)
    if grainy:
        square = denoise(square)
    return contrast_stretch(square, spec.low_percentile, spec.high_percentile)


def prepare(gray: np.ndarray, spec: PreprocessSpec, box: CropBox | None = None,
            grainy: bool | None = None) -> np.ndarray:
    """A gray image -> the uint8 (S, S) model input: what the training caches store and every network is fed."""
    return to_uint8(preprocess(gray, spec, box, grainy))


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
    image = np.asarray(image, dtype=np.float64)
    a, b = image[:, :-1].ravel(), image[:, 1:].ravel()
    a, b = a - a.mean(), b - b.mean()
    spread = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / spread if spread > 0 else 0.0


def input_grain(images: np.ndarray) -> np.ndarray:
    """The grain of uint8 model inputs (N, S, S): each one's noise sd relative to its 0.5-99.5 percentile window (as
    :func:`noise_level` measures a whole image, here on what the network reads)."""
    return np.array([_grain(np.asarray(image, dtype=np.float32) / 255.0) for image in images])


def grain_warnings(level: float) -> list[str]:
    """What the report says of a film of this :func:`film_grain` (smoothed when above NOISE_LIMIT): none below it."""
    if level <= NOISE_LIMIT:
        return []
    return [f"the film is grainy (noise {level:.1%} of its grey range; no training film exceeds {NOISE_LIMIT:.1%}): "
            "it was smoothed before it was read, and grain still costs accuracy; check the estimate against the film"]


def input_warnings(image: np.ndarray) -> list[str]:
    """Plausibility checks on a preprocessed image: reasons a prediction on it may be meaningless."""
    warnings = []
    corr = neighbour_correlation(image)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        warnings.append(f"the image has almost no spatial structure (neighbour correlation {corr:.2f}); "
                        "it does not look like a radiograph, so the result is meaningless")
    return warnings


def grey_entropy(images: np.ndarray) -> np.ndarray:
    """Per uint8 model input (N, S, S): the entropy in bits of its grey-level histogram, within the image trimmed of
    constant border rows and columns (padding), its most common level (the background) left out. A radiograph holds
    a continuum of grey; a drawing, a phantom or a screenshot a few flat levels (MIN_GREY_ENTROPY in gate.py)."""
    images = np.asarray(images)
    out = np.zeros(len(images))
    for i, image in enumerate(images):
        rows = np.flatnonzero(image.max(axis=1) != image.min(axis=1))
        cols = np.flatnonzero(image.max(axis=0) != image.min(axis=0))
        if len(rows) and len(cols):
            image = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        counts = np.bincount(image.ravel(), minlength=256).astype(np.float64)
        counts[counts.argmax()] = 0.0
        p = counts[counts > 0] / max(counts.sum(), 1.0)
        out[i] = float(-(p * np.log2(p)).sum())
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (for compact caches)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
