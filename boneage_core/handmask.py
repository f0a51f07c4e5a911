"""Hand segmentation from the radiograph itself, and how much of a heatmap falls on the hand."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu
from skimage.transform import resize

logger = logging.getLogger(__name__)

#: Side (px) of the longest edge the image is segmented at; the mask is scaled back to the input's size.
WORK_SIDE = 256
#: A plausible hand covers this share of the image (area fraction), else the mask falls back to the whole image.
MIN_AREA, MAX_AREA = 0.10, 0.80
#: Dilation of the found hand, as a share of the working image's longest side (a generous edge).
DILATE_FRACTION = 0.02
#: A hand mask must hold at least this share of the image's brightest 10 % of pixels (bone), else it is the wrong part.
MIN_BRIGHT_SHARE = 0.5
#: Width of the outer frame ignored while looking for the hand (thin bright film edges), share of the longest side.
FRAME_FRACTION = 0.025


@dataclass(frozen=True)
class HandSegmentation:
    """A hand mask and whether it was found (False: the whole image, because no plausible hand was found)."""

    mask: np.ndarray  # bool, same shape as the input
    found: bool
    reason: str  # why the fallback was taken ("" when found)
    #: bool, same shape: the exposed field of a film with dark margins when the hand was found inside it (a second,
    #: narrower search whose hand may miss dim soft tissue; the field holds all of it), else None
    field: np.ndarray | None = None

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())


def _working_copy(gray: np.ndarray) -> np.ndarray:
    """The image at WORK_SIDE on its longest edge, smoothed and contrast-stretched (1st-99th percentile)."""
    h, w = gray.shape
    scale = min(1.0, WORK_SIDE / max(h, w))
    shape = (max(8, round(h * scale)), max(8, round(w * scale)))
    small = resize(gray.astype(np.float32), shape, anti_aliasing=scale < 1, preserve_range=True)
    small = gaussian(small, sigma=1.5, preserve_range=True)
    lo, hi = np.percentile(small, [1, 99])
    return np.clip((small - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(small)


def _largest_component(foreground: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(foreground)
    if n == 0:
        return foreground
    sizes = ndi.sum_labels(foreground, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _borders_touched(mask: np.ndarray) -> int:
    return int(mask[0].any()) + int(mask[-1].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())


def _thresholds(values: np.ndarray) -> list[float]:
    """Foreground thresholds of some grey values, most generous first: the lower of three Otsu classes
    (soft tissue against background), then Otsu."""
    otsu = float(threshold_otsu(values))
    try:
        low = float(threshold_multiotsu(values, classes=3)[0])
    except ValueError:  # too few distinct grey levels for three classes
        return [otsu]
    return [low, otsu] if low < otsu else [otsu]


def _extend_to_edges(mask: np.ndarray, width: int) -> np.ndarray:
    """Copy the rows/columns just inside the ignored frame out to the image edges."""
    out = mask.copy()
    out[:width] |= out[width]
    out[-width:] |= out[-width - 1]
    out[:, :width] |= out[:, [width]]
    out[:, -width:] |= out[:, [-width - 1]]
    return out


def _dilate_square(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation by a size x size square (odd size, centred; nothing outside the image): the same as
    ndi.binary_dilation with np.ones((size, size)), as two running maxima, one per axis."""
    out = ndi.maximum_filter1d(mask.view(np.uint8), size, axis=0, mode="constant", cval=0)
    return ndi.maximum_filter1d(out, size, axis=1, mode="constant", cval=0).view(bool)


def _candidate(small: np.ndarray, threshold: float, within: np.ndarray | None = None) -> np.ndarray:
    """Foreground above threshold (within a region; outer frame ignored) -> largest component -> holes filled
    -> dilated."""
    frame = max(2, round(FRAME_FRACTION * max(small.shape)))
    foreground = small > threshold if within is None else (small > threshold) & within
    foreground[:frame], foreground[-frame:], foreground[:, :frame], foreground[:, -frame:] = False, False, False, False
    hand = ndi.binary_fill_holes(_largest_component(foreground))
    radius = max(1, round(DILATE_FRACTION * max(small.shape)))
    hand = _dilate_square(hand, 2 * radius + 1)
    return _extend_to_edges(hand, frame)


def _implausible(mask: np.ndarray, small: np.ndarray) -> str:
    """Why a candidate mask is not a plausible hand ('' when it is)."""
    area = float(mask.mean())
    if not MIN_AREA <= area <= MAX_AREA:
        return f"area {area:.0%} outside {MIN_AREA:.0%}-{MAX_AREA:.0%}"
    if _borders_touched(mask) == 4:
        return "touches all four borders"
    bright = small >= np.percentile(small, 90)
    share = float(mask[bright].mean())
    if share < MIN_BRIGHT_SHARE:
        return f"holds only {share:.0%} of the brightest pixels"
    return ""


def _search(small: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray | None, list[str], np.ndarray | None]:
    """(first plausible candidate or None, why the others were refused, the bright part of the first candidate
    that was too large)."""
    reasons, too_large = [], None
    if region is not None and not region.any():
        return None, ["empty region"], None
    for threshold in _thresholds(small if region is None else small[region]):
        candidate = _candidate(small, threshold, region)
        reason = _implausible(candidate, small)
        if not reason:
            return candidate, reasons, too_large
        reasons.append(f"threshold {threshold:.2f}: {reason}")
        if too_large is None and candidate.mean() > MAX_AREA:
            too_large = candidate & (small > threshold)  # its bright pixels, without the dark margins
    return None, reasons, too_large


def segment_hand(gray: np.ndarray) -> HandSegmentation:
    """The hand (with forearm) of a gray radiograph; the whole image when no plausible hand is found.

    Candidates, most generous first: the soft-tissue threshold, then Otsu; when a candidate is too large (the
    exposed field of a film with dark margins), the same again inside that field. The first plausible one wins:
    area within MIN_AREA-MAX_AREA, not touching all four borders, holding at least MIN_BRIGHT_SHARE of the
    brightest 10 % of pixels (bone). When none is plausible the mask is the whole image (found=False), so a hand
    is never replaced by a small wrong component.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 8:
        raise ValueError(f"expected a 2-D gray image of at least 8x8 px, got shape {gray.shape}")
    small = _working_copy(gray)
    if small.max() <= 0:
        return HandSegmentation(np.ones(gray.shape, bool), False, "blank image")
    found, reasons, field = _search(small, None)
    inside_field = found is None and field is not None
    if inside_field:  # the exposed field of a film with dark margins: look inside it
        found, more, _ = _search(small, ndi.binary_erosion(field, iterations=2))
        reasons += [f"{r} (inside the exposed field)" for r in more]
    if found is None:
        logger.info("No plausible hand found (%s): using the whole image", "; ".join(reasons))
        return HandSegmentation(np.ones(gray.shape, bool), False, "; ".join(reasons))
    return HandSegmentation(_to_shape(found, gray.shape), True, "",
                            _to_shape(field, gray.shape) if inside_field else None)


def _to_shape(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A working-size bool mask scaled to the input's shape."""
    return resize(mask.astype(np.float32), shape, order=1, anti_aliasing=False) > 0.5


def hand_mask(gray: np.ndarray) -> np.ndarray:
    """Bool mask of the hand in a gray image (the whole image when no plausible hand is found)."""
    return segment_hand(gray).mask


def hand_bbox(mask: np.ndarray, margin: float = 0.05) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive, of a mask's True pixels plus margin x the image size."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the mask is empty")
    h, w = mask.shape
    dy, dx = round(margin * h), round(margin * w)
    return (max(0, rows[0] - dy), max(0, cols[0] - dx), min(h, rows[-1] + 1 + dy), min(w, cols[-1] + 1 + dx))


def _check_pair(heatmap: np.ndarray, mask: np.ndarray) -> None:
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in shape")


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's (non-negative) mass inside the mask; nan for an empty heatmap."""
    _check_pair(heatmap, mask)
    weights = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    total = weights.sum()
    return float(weights[mask].sum() / total) if total > 0 else float("nan")


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the heatmap's maximum lies inside the mask (False for an empty heatmap)."""
    _check_pair(heatmap, mask)
    if not np.max(heatmap) > 0:
        return False
    return bool(mask.flat[int(np.argmax(heatmap))])
