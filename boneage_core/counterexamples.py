"""Images that are not hand radiographs, made offline, for fitting the input gate's radiograph-or-not model.

Kept apart from ``tests/negatives.py`` (the gate's test set): other photographs (scikit-image, matplotlib and
scikit-learn samples that the test set does not use), other pydicom test files (any whose pixels match a test file's
are left out), rendered charts, documents, textures and noise, drawn caricatures of other body parts, small parts of a film
and a film shown small inside a photograph. Each source is varied (turns, crops, grey curves, inversion, noise) so
that the model learns what a radiograph is, not these few pictures.
"""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from .imaging import ImageLoadError, load_gray
from .preprocess import resize_to

logger = logging.getLogger(__name__)

#: scikit-image's bundled sample files that the test set (tests/negatives.py) does not read.
SKIMAGE_FILES = ("grass.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png",
                 "motorcycle_left.png", "page.png", "retina.jpg", "text.png", "color.png", "chessboard_GRAY.png")
#: matplotlib's bundled sample images (a photograph, a product photograph, a logo).
MATPLOTLIB_FILES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
#: pydicom's bundled test files used by the test set; files with the same pixels are left out too.
TEST_DICOM = ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "JPEG2000.dcm")
#: pydicom test files with images of their own that this install decodes (CT, ultrasound, a palette test image).
DICOM_FILES = ("693_J2KI.dcm", "image_dfl.dcm", "examples_palette.dcm", "examples_rgb_color.dcm")


def _gray01(image: np.ndarray) -> np.ndarray:
    """Any array -> 2-D float32 in [0, 1] (colour averaged, range stretched)."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def bundled_photos() -> dict[str, np.ndarray]:
    """Sample images shipped inside installed packages (no download), gray."""
    import matplotlib
    import skimage.data

    out = {}
    skimage_dir = Path(skimage.data.__file__).parent
    for name in SKIMAGE_FILES:
        out[f"skimage_{Path(name).stem}"] = _gray01(np.asarray(Image.open(skimage_dir / name).convert("RGB")))
    sample_dir = Path(matplotlib.get_data_path()) / "sample_data"
    for name in MATPLOTLIB_FILES:
        out[f"matplotlib_{Path(name).stem}"] = _gray01(np.asarray(Image.open(sample_dir / name).convert("RGB")))
    try:
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        for path, image in zip(samples.filenames, samples.images):
            out[f"sklearn_{Path(path).stem}"] = _gray01(image)
    except (ImportError, OSError) as exc:  # scikit-learn's images are optional extras of this set
        logger.warning("scikit-learn sample images not read: %s", exc)
    with gzip.open(sample_dir / "s1045.ima.gz") as raw:  # an MR head slice, 256 x 256 16-bit
        out["matplotlib_mr_s1045"] = _gray01(np.frombuffer(raw.read(), np.uint16).reshape(256, 256))
    faces = np.load(skimage_dir / "lfw_subset.npy")
    for i in range(0, len(faces), 25):
        out[f"face_{i}"] = _gray01(faces[i])
    return out


def _thumb(gray: np.ndarray, side: int = 64) -> np.ndarray:
    """A small standardised copy, to compare two images' pixels by correlation."""
    small = resize_to(gray, (side, side))
    return (small - small.mean()) / (small.std() + 1e-6)


def dicom_images() -> dict[str, np.ndarray]:
    """pydicom's test files that hold an image, read as an upload is; any like a test-set file (thumbnail correlation
    above 0.9) left out."""
    from pydicom.data import get_testdata_file

    def read(name: str) -> np.ndarray | None:
        try:
            path = get_testdata_file(name)
            return None if path is None else load_gray(Path(path))
        except (ImageLoadError, OSError, ValueError) as exc:
            logger.info("pydicom test file %s not used: %s", name, exc)
            return None

    tests = [_thumb(g) for g in map(read, TEST_DICOM) if g is not None]
    out = {}
    for name in DICOM_FILES:
        gray = read(name)
        if gray is None or any(float((_thumb(gray) * t).mean()) > 0.9 for t in tests):
            continue
        out[f"dicom_{Path(name).stem}"] = gray
    return out


def chart(seed: int) -> np.ndarray:
    """A rendered matplotlib figure: lines, bars, a scatter or a heat map, with axes and labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(4 + 2 * rng.random(), 3 + 2 * rng.random()), dpi=80)
    kind = seed % 4
    if kind == 0:
        for _ in range(rng.integers(1, 4)):
            ax.plot(np.cumsum(rng.standard_normal(100)))
    elif kind == 1:
        ax.bar(range(8), rng.random(8))
    elif kind == 2:
        ax.scatter(rng.standard_normal(200), rng.standard_normal(200), s=5)
    else:
        ax.imshow(rng.random((12, 12)), cmap="gray")
    ax.set_title(f"Figure {seed}")
    ax.set_xlabel("months")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _gray01(np.asarray(Image.open(buf).convert("RGB")))


def document(seed: int) -> np.ndarray:
    """A page of a form or table: ruled cells, short entries, a logo block; dark on light or light on dark."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(700, 1100)), int(rng.integers(900, 1400))
    page = Image.new("L", (w, h), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(page)
    draw.rectangle([30, 30, 200, 120], fill=int(rng.integers(0, 120)))
    rows, cols = int(rng.integers(10, 30)), int(rng.integers(2, 6))
    for r in range(rows):
        y = 160 + r * (h - 200) // rows
        draw.line([30, y, w - 30, y], fill=80)
        for c in range(cols):
            draw.text((40 + c * (w - 60) // cols, y + 4), f"{rng.integers(0, 10**4)} item", fill=int(rng.integers(0, 90)))
    gray = np.asarray(page, np.float32) / 255.0
    return 1.0 - gray if rng.random() < 0.3 else gray


def fractal_texture(seed: int, side: int = 384) -> np.ndarray:
    """1/f^beta noise: clouds, terrain, fabric-like textures."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij")
    radius = np.maximum(np.hypot(fx, fy), 1.0 / side)
    spectrum = (rng.standard_normal((side, side)) + 1j * rng.standard_normal((side, side))) / radius ** rng.uniform(1, 2.5)
    return _gray01(np.real(np.fft.ifft2(spectrum)))


def shapes(seed: int, side: int = 512) -> np.ndarray:
    """Random filled ellipses, polygons and lines on a flat or graded background: a drawing, a diagram."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, side, dtype=np.float32)[:, None]
    base = np.clip(rng.random() + (rng.random() - 0.5) * yy, 0, 1) * np.ones((side, side), np.float32)
    image = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 20))):
        x0, y0 = rng.integers(0, side, 2)
        x1, y1 = x0 + rng.integers(10, side // 2), y0 + rng.integers(10, side // 2)
        fill = int(rng.integers(0, 256))
        [draw.ellipse, draw.rectangle, lambda b, fill: draw.line(b, fill=fill, width=6)][int(rng.integers(3))](
            [int(x0), int(y0), int(x1), int(y1)], fill=fill)
    return np.asarray(image, np.float32) / 255.0


def white_noise(seed: int) -> np.ndarray:
    """An image of noise alone: Gaussian, uniform or salt-and-pepper, maybe faintly blurred or on a gradient."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(200, 900, 2))
    kind = seed % 3
    if kind == 0:
        image = rng.normal(0.5, rng.uniform(0.05, 0.3), (h, w))
    elif kind == 1:
        image = rng.random((h, w))
    else:
        image = np.where(rng.random((h, w)) < rng.uniform(0.05, 0.5), rng.integers(0, 2, (h, w)), 0.5)
    if rng.random() < 0.5:
        image = gaussian_filter(image.astype(np.float32), rng.uniform(0.3, 1.0))
    if rng.random() < 0.3:
        image = image + rng.uniform(-0.3, 0.3) * np.linspace(0, 1, w)[None, :]
    return np.clip(image, 0, 1).astype(np.float32)


def _blob(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))


def body_part(seed: int, side: int = 512) -> np.ndarray:
    """A caricature of another film: a skull (oval vault), a knee (two long bones meeting), a spine (a column of
    blocks) or a pelvis (two wings and a ring), bright bone in soft tissue on black, with film grain."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    kind = seed % 4
    if kind == 0:  # skull
        vault = _blob(yy, xx, 0.5, 0.5, 0.38, 0.32)
        image = 0.3 * vault + 0.5 * ((vault > 0.35) & (vault < 0.5)) + 0.2 * _blob(yy, xx, 0.75, 0.5, 0.08, 0.2)
    elif kind == 1:  # knee
        image = 0.25 * (np.abs(xx - 0.5) < 0.22)
        image = image + 0.5 * ((np.abs(xx - 0.5) < 0.08 + 0.08 * _blob(yy, xx, 0.45, 0.5, 0.1, 1)) & (yy < 0.47))
        image = image + 0.5 * ((np.abs(xx - 0.5) < 0.07 + 0.07 * _blob(yy, xx, 0.55, 0.5, 0.1, 1)) & (yy > 0.52))
    elif kind == 2:  # spine
        image = 0.2 * _blob(yy, xx, 0.5, 0.5, 0.8, 0.3)
        for k in range(7):
            image = image + 0.45 * ((np.abs(xx - 0.5) < 0.09) & (np.abs(yy - 0.1 - 0.12 * k) < 0.045))
    else:  # pelvis
        image = 0.2 * _blob(yy, xx, 0.5, 0.5, 0.5, 0.45)
        image = image + 0.4 * (_blob(yy, xx, 0.35, 0.3, 0.16, 0.14) + _blob(yy, xx, 0.35, 0.7, 0.16, 0.14))
        ring = _blob(yy, xx, 0.7, 0.5, 0.12, 0.18)
        image = image + 0.5 * ((ring > 0.3) & (ring < 0.6))
    image = gaussian_filter(image.astype(np.float32), 2.0) + 0.02 * rng.standard_normal((side, side))
    return np.clip(image, 0, 1).astype(np.float32)


def film_part(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small window of a film (3-12 % of its area): a part of a hand, or background, not a whole hand."""
    h, w = film.shape
    area = rng.uniform(0.03, 0.12)
    ch, cw = int(h * np.sqrt(area) * rng.uniform(0.7, 1.3)), int(w * np.sqrt(area) * rng.uniform(0.7, 1.3))
    y, x = int(rng.integers(0, max(1, h - ch))), int(rng.integers(0, max(1, w - cw)))
    return np.ascontiguousarray(film[y:y + ch, x:x + cw])


def film_in_photo(film: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A phone picture of a film on a light box or a monitor: the film (25-60 % of the frame's height, tilted) inside a
    frame of its own (a dark bezel or a light box's white), in a photograph or a plainly lit room, sometimes with
    stripes of interference or a glare spot, and a phone camera's grain (1-8 grey levels)."""
    h, w = 600, 800
    if rng.random() < 0.5:
        bg = Image.fromarray((background * 255).astype(np.uint8)).resize((w, h))
    else:
        yy, xx = np.mgrid[0:h, 0:w] / np.float32(h)
        wall = rng.uniform(0.3, 0.8) + rng.uniform(-0.3, 0.3) * xx + rng.uniform(-0.3, 0.3) * yy
        bg = Image.fromarray((np.clip(wall, 0, 1) * 255).astype(np.uint8))
    side = int(rng.uniform(0.25, 0.6) * h)
    film_img = Image.fromarray((film * 255).astype(np.uint8)).resize((int(side * rng.uniform(0.7, 1.0)), side))
    border = int(rng.uniform(0.03, 0.15) * side)
    framed = Image.new("L", (film_img.width + 2 * border, film_img.height + 2 * border),
                       int(rng.choice([rng.integers(0, 60), rng.integers(200, 256)])))
    framed.paste(film_img, (border, border))
    framed = framed.rotate(float(rng.uniform(-12, 12)), expand=True, fillcolor=int(rng.integers(0, 256)))
    framed = framed.resize((min(framed.width, w - 1), min(framed.height, h - 1)))
    bg.paste(framed, (int(rng.integers(0, w - framed.width)), int(rng.integers(0, h - framed.height))))
    out = np.asarray(bg, np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # interference stripes (moire) of a screen
        out = out + rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * (xx * rng.uniform(0.05, 0.2) + yy * rng.uniform(0.0, 0.1)))
    if rng.random() < 0.5:  # a glare spot
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        out = out + rng.uniform(0.1, 0.3) * np.exp(-(((xx - cx) / rng.uniform(60, 200)) ** 2 + ((yy - cy) / rng.uniform(40, 120)) ** 2))
    out = out + rng.normal(0.0, rng.uniform(1.0, 8.0) / 255.0, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def vary(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random variant of an image: a quarter turn, a crop, a grey curve, maybe inverted, maybe grainy."""
    g = np.rot90(gray, int(rng.integers(4)))
    h, w = g.shape
    if rng.random() < 0.7 and min(h, w) > 96:
        f = rng.uniform(0.35, 1.0)
        ch, cw = int(h * f), int(w * f)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        g = g[y:y + ch, x:x + cw]
    g = np.power(np.clip(g, 0, 1), rng.uniform(0.6, 1.6))
    if rng.random() < 0.3:
        g = 1.0 - g
    if rng.random() < 0.4:
        g = g + rng.normal(0, rng.uniform(1, 8) / 255.0, g.shape)
    return np.ascontiguousarray(np.clip(g, 0, 1), dtype=np.float32)


def counterexamples(films: list[np.ndarray], n_variants: int = 8, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(name, gray image) of every source, each in `n_variants` random variants; `films` (training radiographs)
    give the film parts and the films inside photographs."""
    rng = np.random.default_rng(seed)
    sources: dict[str, np.ndarray | Callable[[int], np.ndarray]] = {**bundled_photos(), **dicom_images()}
    photos = [g for name, g in sources.items() if not name.startswith(("dicom", "face"))]
    for name, make in (("chart", chart), ("document", document), ("texture", fractal_texture), ("shapes", shapes),
                       ("body_part", body_part), ("white_noise", white_noise)):
        for i in range(n_variants):
            sources[f"{name}_{i}"] = make(seed * 1000 + i)
    for i, film in enumerate(films):
        sources[f"film_part_{i}"] = film_part(film, rng)
        for k in range(2):
            sources[f"film_in_photo_{i}_{k}"] = film_in_photo(film, photos[(2 * i + k) % len(photos)], rng)
    for name, image in sources.items():
        for v in range(n_variants if not name.startswith(("film_", "chart", "document", "texture", "shapes",
                                                          "body_part", "white_noise")) else 1):
            yield f"{name}/{v}", vary(image, rng)
