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


#: pydicom's bundled CT and MR test files (shipped inside the package, no download).
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "JPEG2000.dcm")


def dicom_slice(name: str) -> np.ndarray:
    """A pydicom test file (CT / MR slice) read as any upload is read."""
    from pydicom.data import get_testdata_file

    from boneage_core.imaging import load_gray

    return load_gray(Path(get_testdata_file(name)))


def phantom() -> np.ndarray:
    """The Shepp-Logan head phantom (scikit-image)."""
    import skimage.data

    return np.asarray(skimage.data.shepp_logan_phantom(), dtype=np.float32)


def foot_like(seed: int = 0, size: int = 1024) -> np.ndarray:
    """A foot-film caricature: a bright sole with five metatarsal rays and short toes, heel down, on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.25 * np.exp(-(((xx - 0.5) / 0.2) ** 2 + ((yy - 0.6) / 0.35) ** 2) ** 2)  # the soft tissue
    image = image + 0.35 * np.exp(-(((xx - 0.5) / 0.12) ** 2 + ((yy - 0.85) / 0.1) ** 2))  # heel and tarsals
    for ray, cx in enumerate(np.linspace(0.38, 0.62, 5)):
        top = 0.25 + 0.03 * abs(ray - 1)
        bone = (np.abs(xx - cx - 0.08 * (yy - 0.6)) < 0.018) & (yy > top) & (yy < 0.72)
        image = image + 0.4 * bone
    image = image + 0.02 * rng.standard_normal((size, size))
    return np.clip(gaussian_smooth(image, 3.0), 0, 1).astype(np.float32)


def gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (scipy)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma)


def screenshot(seed: int = 0, size: tuple[int, int] = (1600, 1000)) -> np.ndarray:
    """A desktop screenshot: title bar, side bar of menu entries, buttons, a text panel and a thumbnail of noise."""
    rng = np.random.default_rng(seed)
    page = Image.new("L", size, 240)
    draw = ImageDraw.Draw(page)
    draw.rectangle([0, 0, size[0], 40], fill=60)
    draw.rectangle([0, 40, 260, size[1]], fill=215)
    for row in range(20):
        draw.text((20, 70 + 40 * row), f"Menu entry {row}", fill=30)
    for b in range(4):
        draw.rounded_rectangle([300 + 180 * b, 70, 460 + 180 * b, 115], radius=8, fill=int(rng.integers(90, 160)))
    for row in range(25):
        draw.text((300, 150 + 26 * row), "Patient list  ID 0042  study 2026-12-05  status: read " * 2, fill=20)
    thumb = (rng.random((200, 200)) * 255).astype(np.uint8)
    page.paste(Image.fromarray(thumb), (1300, 750))
    return np.asarray(page, dtype=np.float32) / 255.0


def photo_of_screen(radiograph: np.ndarray, seed: int = 0, size: tuple[int, int] = (1200, 900)) -> np.ndarray:
    """A phone photo of a monitor showing a film: a room around a bezel, the film on a quarter of the frame,
    tilted, with moire stripes and glare."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    room = 0.55 + 0.25 * (xx / w) - 0.2 * (yy / h)  # a lit wall
    image = Image.fromarray(np.round(np.clip(room, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([300, 180, 900, 700], fill=25)  # the monitor's bezel
    draw.rectangle([200, 760, 1000, 860], fill=110)  # a keyboard
    film = Image.fromarray(np.round(radiograph * 255).astype(np.uint8)).resize((420, 440)).rotate(7, expand=False)
    image.paste(film, (390, 220))
    out = np.asarray(image, dtype=np.float32) / 255.0
    out = out + 0.06 * np.sin(2 * np.pi * (xx * 0.11 + yy * 0.05))  # moire
    out = out + 0.25 * np.exp(-(((xx - 0.7 * w) / 150) ** 2 + ((yy - 0.3 * h) / 90) ** 2))  # glare
    return np.clip(out + 0.02 * rng.standard_normal(out.shape), 0, 1).astype(np.float32)


def negative_set(fullres_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Every generated negative by name; cropped fingers and the photo of a screen need the full-size samples folder."""
    images = {f"text_page_{i}": text_page(i) for i in range(3)}
    images.update({f"photo_{name}": photo(name) for name in PHOTOS})
    images.update({f"chest_like_{i}": chest_like(i) for i in range(3)})
    images.update({f"noise_{i}": noise(i) for i in range(2)})
    images.update({f"dicom_{Path(name).stem}": dicom_slice(name) for name in DICOM_FILES})
    images.update({"shepp_logan_phantom": phantom(), "foot_like": foot_like(), "screenshot": screenshot()})
    if fullres_dir is not None:
        from boneage_core.imaging import load_gray

        for stem in ("1377", "1378", "1380"):
            images[f"finger_{stem}"] = cropped_finger(load_gray(Path(fullres_dir) / f"{stem}.png"))
        images["photo_of_screen"] = photo_of_screen(load_gray(Path(fullres_dir) / "1377.png"))
    return images
