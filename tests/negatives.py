"""Generated images that are not left-hand radiographs (no downloads): what the input gate must refuse or correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: Grayscale photographs shipped inside scikit-image (no network): people, objects, textures.
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "clock", "coins", "moon", "brick", "gravel", "cell")


def text_page(seed: int = 0, size: tuple[int, int] = (1200, 1600)) -> np.ndarray:
    """A screenshot-like page: light background, lines of dark text and a header bar."""
    rng = np.random.default_rng(seed)
    page = Image.new("L", size, int(rng.integers(235, 255)))
    draw = ImageDraw.Draw(page)
    draw.rectangle([0, 0, size[0], 90], fill=int(rng.integers(30, 90)))
    for row in range(int(rng.integers(35, 60))):
        draw.text((40, 120 + 24 * row), "Bone age assessment - lorem ipsum dolor sit amet, consectetur " * 2,
                  fill=int(rng.integers(0, 60)))
    return np.asarray(page, dtype=np.float32) / 255.0


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as a gray float image."""
    import skimage.data
    from skimage.color import rgb2gray

    image = getattr(skimage.data, name)()
    gray = rgb2gray(image[..., :3]) if image.ndim == 3 else image.astype(np.float32) / 255.0
    return np.asarray(gray, dtype=np.float32)


def chest_like(seed: int = 0, size: int = 1024) -> np.ndarray:
    """Smooth blobs and a spine-like band: the gross look of a chest film, not a hand."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.15 + 0.05 * rng.random()
    for cx in (0.3, 0.7):  # two lung fields, darker
        image = image + 0.45 * np.exp(-(((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    image = image - 0.25 * np.exp(-((xx - 0.5) / 0.04) ** 2)  # mediastinum / spine
    for k in range(8):  # ribs
        image = image + 0.06 * np.exp(-((yy - 0.2 - 0.08 * k - 0.1 * (xx - 0.5) ** 2) / 0.01) ** 2)
    return np.clip(image + 0.02 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


def noise(seed: int = 0, size: int = 512) -> np.ndarray:
    """Uniform noise."""
    return np.random.default_rng(seed).random((size, size)).astype(np.float32)


def cropped_finger(radiograph: np.ndarray) -> np.ndarray:
    """The top fifth of a hand radiograph around the middle finger: anatomy, but not a whole hand."""
    h, w = radiograph.shape
    return np.ascontiguousarray(radiograph[: h // 5, int(0.3 * w): int(0.55 * w)])


def negative_set(fullres_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Every generated negative by name; cropped fingers need the full-size samples folder."""
    images = {f"text_page_{i}": text_page(i) for i in range(3)}
    images.update({f"photo_{name}": photo(name) for name in PHOTOS})
    images.update({f"chest_like_{i}": chest_like(i) for i in range(3)})
    images.update({f"noise_{i}": noise(i) for i in range(2)})
    if fullres_dir is not None:
        from boneage_core.imaging import load_gray

        for stem in ("1377", "1378", "1380"):
            images[f"finger_{stem}"] = cropped_finger(load_gray(Path(fullres_dir) / f"{stem}.png"))
    return images
