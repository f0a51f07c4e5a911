"""Hand crop (PreprocessSpec.hand_crop): share of the image kept, segmentation fallbacks, preprocessing time.

python -m benchmarks.bench_handcrop --data-dir ../shared/data/rsna-bone-age-299 --n 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from boneage_core.handmask import WORK_SIDE, segment_hand
from boneage_core.imaging import load_gray
from boneage_core.preprocess import FULL_BOX, PreprocessSpec, box_pixels, crop_box, preprocess, squash_resize


def evenly_spaced(folder: Path, n: int) -> list[Path]:
    """n images spread evenly over the sorted file list (the same ones on every run)."""
    paths = sorted(folder.glob("*.webp"))
    if len(paths) < n:
        raise SystemExit(f"{folder} holds {len(paths)} images, fewer than --n {n}")
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def _seconds(gray: np.ndarray, spec: PreprocessSpec, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        preprocess(gray, spec)
    return (time.perf_counter() - start) / repeats


def measure(paths: list[Path], image_size: int, repeats: int) -> list[dict]:
    """Per image: the crop box's area share, whether segment_hand fell back, the native mask left outside the
    box (pixels), and the preprocess time without and with the crop."""
    plain, cropped = PreprocessSpec(image_size=image_size), PreprocessSpec(image_size=image_size, hand_crop=True)
    rows = []
    for path in paths:
        gray = load_gray(path)
        box = crop_box(gray, cropped)  # as preprocess cuts it: white padding off, then the hand
        top, left, bottom, right = box_pixels(box, gray.shape)
        native = segment_hand(gray).mask  # the mask in the image's own geometry, an independent check
        rows.append({
            "area": (bottom - top) * (right - left) / gray.size,
            "fallback": not segment_hand(squash_resize(gray, WORK_SIDE)).found,
            "whole_image": box == FULL_BOX,
            "mask_outside": int(native.sum() - native[top:bottom, left:right].sum()),
            "t_plain": _seconds(gray, plain, repeats), "t_crop": _seconds(gray, cropped, repeats)})
    return rows


def report(rows: list[dict], image_size: int) -> list[str]:
    area = np.array([r["area"] for r in rows])
    t_plain = np.array([r["t_plain"] for r in rows]) * 1e3
    t_crop = np.array([r["t_crop"] for r in rows]) * 1e3
    return [
        f"images: {len(rows)}, model input {image_size} px",
        f"crop keeps of the image area: mean {area.mean():.1%}, median {np.median(area):.1%}, "
        f"min {area.min():.1%}, max {area.max():.1%}",
        f"pixels on the hand at a fixed S: x{np.mean(1 / area):.2f} on average (mean of 1 / area), "
        f"x{1 / np.median(area):.2f} at the median",
        f"segment_hand fell back (whole image used): {sum(r['fallback'] for r in rows)}; "
        f"box = whole image in all: {sum(r['whole_image'] for r in rows)}",
        f"images whose native-geometry hand mask leaves the box: {sum(r['mask_outside'] > 0 for r in rows)} "
        f"(most pixels outside: {max(r['mask_outside'] for r in rows)})",
        f"preprocess per image (decoded gray in, mean / median ms): without crop {t_plain.mean():.1f} / "
        f"{np.median(t_plain):.1f}, with crop {t_crop.mean():.1f} / {np.median(t_crop):.1f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/rsna-bone-age-299"))
    parser.add_argument("--n", type=int, default=200, help="images, spread evenly over the sorted ids")
    parser.add_argument("--image-size", type=int, default=PreprocessSpec().image_size)
    parser.add_argument("--repeats", type=int, default=3, help="timed preprocess calls per image and setting")
    args = parser.parse_args(argv)
    paths = evenly_spaced(args.data_dir / "boneage-training-dataset", args.n)
    print("\n".join(report(measure(paths, args.image_size, args.repeats), args.image_size)))


if __name__ == "__main__":
    main()
