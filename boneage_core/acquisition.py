"""Acquisition-shift transforms of a gray film (float in [0, 1] -> pixels or the encoded file a user would upload)."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from .imaging import load_gray
from .preprocess import PreprocessSpec, prepare, resize_to, to_uint8

#: Side of the training copy's images: the blur's sigma is given at this size and scaled with the image.
TRAIN_SIDE = 299
#: One grey level of an 8-bit film, in [0, 1] units.
GREY_LEVEL = 1.0 / 255.0

#: A transform: gray float image in [0, 1] -> a gray float image in [0, 1], or the bytes of an image file.
Shift = Callable[[np.ndarray], "np.ndarray | bytes"]


def gamma(g: np.ndarray, power: float) -> np.ndarray:
    """Gamma curve x ** power (< 1 brightens the mid-tones, > 1 darkens them)."""
    return np.power(g, power, dtype=np.float32)


def contrast(g: np.ndarray, factor: float) -> np.ndarray:
    """Contrast scaled by `factor` about the image mean."""
    mean = float(g.mean())
    return np.clip((g - mean) * factor + mean, 0.0, 1.0).astype(np.float32)


def brightness(g: np.ndarray, levels: float) -> np.ndarray:
    """Every pixel shifted by `levels` grey levels (of 255), clipped."""
    return np.clip(g + levels * GREY_LEVEL, 0.0, 1.0).astype(np.float32)


def noise(g: np.ndarray, sigma_levels: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise of `sigma_levels` grey levels (of 255), clipped; the same noise for the same seed."""
    rng = np.random.default_rng(seed)
    return np.clip(g + rng.normal(0.0, sigma_levels * GREY_LEVEL, g.shape), 0.0, 1.0).astype(np.float32)


def blur(g: np.ndarray, sigma_at_train_side: float) -> np.ndarray:
    """Gaussian blur of `sigma_at_train_side` px at 299 px, scaled by the image's geometric-mean side / 299."""
    sigma = sigma_at_train_side * float(np.sqrt(g.shape[0] * g.shape[1])) / TRAIN_SIDE
    return np.clip(gaussian_filter(g.astype(np.float32), sigma), 0.0, 1.0)


def jpeg(g: np.ndarray, quality: int) -> bytes:
    """The film saved as an 8-bit grayscale JPEG of this quality."""
    out = io.BytesIO()
    Image.fromarray(to_uint8(g)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png16(g: np.ndarray) -> bytes:
    """The film saved as a 16-bit grayscale PNG (0-65535)."""
    out = io.BytesIO()
    Image.fromarray(np.round(np.clip(g, 0.0, 1.0) * 65535.0).astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def downsample(g: np.ndarray, long_side: int) -> np.ndarray:
    """Shrunk so that its long side is `long_side` px (aspect kept), then enlarged back to its own size."""
    h, w = g.shape
    scale = long_side / max(h, w)
    small = resize_to(g, (max(1, round(h * scale)), max(1, round(w * scale))))
    return np.clip(resize_to(small, (h, w)), 0.0, 1.0)


def rotate(g: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated by `degrees` counter-clockwise about the centre, same frame, corners filled black."""
    img = Image.fromarray(g.astype(np.float32), mode="F")
    return np.clip(np.asarray(img.rotate(degrees, resample=Image.BILINEAR, fillcolor=0.0), dtype=np.float32), 0.0, 1.0)


def pad(g: np.ndarray, fraction: float, value: float) -> np.ndarray:
    """`fraction` of the width added on the left and the right in grey `value` (the aspect ratio changes)."""
    side = round(g.shape[1] * fraction)
    return np.pad(g, ((0, 0), (side, side)), constant_values=value).astype(np.float32)


def crop(g: np.ndarray, fraction: float) -> np.ndarray:
    """`fraction` of the height and width cut from each side."""
    dy, dx = round(g.shape[0] * fraction), round(g.shape[1] * fraction)
    return np.ascontiguousarray(g[dy:g.shape[0] - dy, dx:g.shape[1] - dx])


def burned_in(g: np.ndarray, text: str = "L  ID 0042317  2026-12-05") -> np.ndarray:
    """White text along the top (as scanners print it) and a white square marker in the bottom-right corner."""
    h, w = g.shape
    img = Image.fromarray(to_uint8(g))
    draw = ImageDraw.Draw(img)
    size = max(8, round(min(h, w) * 0.05))
    draw.text((round(w * 0.04), round(h * 0.03)), text, fill=255, font=ImageFont.load_default(size=size))
    marker = max(4, round(min(h, w) * 0.08))
    x0, y0 = w - round(w * 0.04) - marker, h - round(h * 0.04) - marker
    draw.rectangle((x0, y0, x0 + marker - 1, y0 + marker - 1), fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def invert(g: np.ndarray) -> np.ndarray:
    """Inverted grey scale (bone dark on a white background)."""
    return (1.0 - g).astype(np.float32)


def mirror(g: np.ndarray) -> np.ndarray:
    """Mirrored left-right (a right hand, or a film flipped at conversion)."""
    return np.ascontiguousarray(g[:, ::-1])


def quarter_turns(g: np.ndarray, k: int) -> np.ndarray:
    """Turned by k quarter turns counter-clockwise (np.rot90)."""
    return np.ascontiguousarray(np.rot90(g, k))


#: The benchmark's rows, in order: name -> transform.
SHIFTS: dict[str, Shift] = {
    "clean": lambda g: g,
    "gamma 0.6": lambda g: gamma(g, 0.6),
    "gamma 0.7": lambda g: gamma(g, 0.7),
    "gamma 1.4": lambda g: gamma(g, 1.4),
    "gamma 1.6": lambda g: gamma(g, 1.6),
    "contrast x0.5": lambda g: contrast(g, 0.5),
    "brightness +20": lambda g: brightness(g, 20),
    "brightness -20": lambda g: brightness(g, -20),
    "noise sigma 3": lambda g: noise(g, 3),
    "noise sigma 6": lambda g: noise(g, 6),
    "blur sigma 1.5 px @299": lambda g: blur(g, 1.5),
    "JPEG q75": lambda g: jpeg(g, 75),
    "JPEG q30": lambda g: jpeg(g, 30),
    "down to 128 px and back": lambda g: downsample(g, 128),
    "16-bit PNG": png16,
    "rotated +10 deg": lambda g: rotate(g, 10),
    "rotated -10 deg": lambda g: rotate(g, -10),
    "rotated +20 deg": lambda g: rotate(g, 20),
    "rotated -20 deg": lambda g: rotate(g, -20),
    "black padding 20 % each side": lambda g: pad(g, 0.2, 0.0),
    "white padding 20 % each side": lambda g: pad(g, 0.2, 1.0),
    "tight crop 8 % each side": lambda g: crop(g, 0.08),
    "burned-in text + marker": burned_in,
    "inverted grey scale": invert,
    "mirrored (right hand)": mirror,
    # laterality under acquisition shift: a right hand from another conversion
    "mirrored + JPEG q30": lambda g: jpeg(mirror(g), 30),
    "mirrored + noise sigma 3": lambda g: noise(mirror(g), 3),
    "upside down (180 deg)": lambda g: quarter_turns(g, 2),
    "sideways (90 deg)": lambda g: quarter_turns(g, 1),
}
CLEAN = "clean"
#: The acquisition variation the input gate must take as a radiograph (fitted on them, at most 0.5 % refused each):
#: what other scanners, conversions and film handling leave. The stronger shifts of SHIFTS are not in it.
MILD = ("gamma 0.7", "gamma 1.4", "contrast x0.5", "brightness +20", "brightness -20", "noise sigma 3",
        "blur sigma 1.5 px @299", "JPEG q75", "JPEG q30", "down to 128 px and back", "rotated +10 deg",
        "rotated -10 deg", "black padding 20 % each side", "white padding 20 % each side", "tight crop 8 % each side",
        "burned-in text + marker")


#: MILD without its noise row, whose noise field is the same for every film of a size (seed 0, as the benchmark draws
#: it): examples that a model is fitted on get their noise from :func:`grainy_film` instead, a new field per film.
MILD_NOISELESS = tuple(name for name in MILD if not name.startswith("noise"))


def as_upload(film: np.ndarray | bytes) -> np.ndarray:
    """The gray image (float in [0, 1]) a user's file of this transformed film holds: 8-bit pixels, or the decoded file."""
    return load_gray(film) if isinstance(film, bytes) else to_uint8(film).astype(np.float32) / 255.0


def posed(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film in a random pose, as films arrive: turned by a quarter turn (40 %), mirrored (30 %), its grey scale
    inverted (20 %)."""
    if rng.random() < 0.4:
        g = quarter_turns(g, int(rng.integers(1, 4)))
    if rng.random() < 0.3:
        g = mirror(g)
    if rng.random() < 0.2:
        g = invert(g)
    return np.ascontiguousarray(g)


def radiograph_variants(g: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Four uploads of one film as other sites might send it, each in a random pose (:func:`posed`): under two random
    MILD shifts other than noise (one each); with noise of 2-8 grey levels (on the film at half contrast 40 % of the time); saved as a
    JPEG of quality 15-60. What the gate's radiograph-or-not model must take as a radiograph."""
    shifted = [SHIFTS[MILD_NOISELESS[int(k)]](g) for k in rng.choice(len(MILD_NOISELESS), 2, replace=False)]
    grainy = grainy_film(g, rng)
    compressed = jpeg(g, int(rng.integers(15, 61)))
    return [posed(as_upload(film), rng) for film in (*shifted, grainy, compressed)]


def grainy_film(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film with Gaussian noise of 2-8 grey levels, at half contrast 40 % of the time (a low-contrast film's grain
    is what the contrast stretch amplifies most)."""
    low = contrast(g, 0.5) if rng.random() < 0.4 else g
    return noise(low, float(rng.uniform(2.0, 8.0)), seed=int(rng.integers(2**31)))


def grainy_inputs(paths: list, spec: PreprocessSpec, seed: int) -> np.ndarray:
    """uint8 (N, S, S) model inputs of the films at `paths` made grainy (:func:`grainy_film`), read as an upload and as
    the input gate reads them (never smoothed)."""
    rng = np.random.default_rng([seed, 1])
    return np.stack([prepare(as_upload(grainy_film(load_gray(path), rng)), spec, grainy=False) for path in paths])


def shifted_inputs(paths: list, spec: PreprocessSpec, seed: int, names: tuple[str, ...] = MILD) -> np.ndarray:
    """uint8 (N, S, S) model inputs of the films at `paths`, each under one of the shifts `names` drawn at random
    (seeded), read as an upload of it would be (:func:`as_upload`) and as the input gate reads it (never smoothed)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(len(names), size=len(paths))
    return np.stack([prepare(as_upload(SHIFTS[names[d]](load_gray(path))), spec, grainy=False)
                     for d, path in zip(drawn, paths)])
