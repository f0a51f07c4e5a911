"""counterexamples: the gate's training negatives are made offline, are images, vary, and share no source with the
test set (tests/negatives.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import negatives
from boneage_core import counterexamples as cx
from boneage_core.acquisition import radiograph_variants
from boneage_core.preprocess import noise_sd


def _film(rng: np.random.Generator, side: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] / side
    return np.clip(0.1 + 0.6 * np.exp(-((xx - 0.5) / 0.2) ** 2 - ((yy - 0.6) / 0.3) ** 2)
                   + 0.02 * rng.random((side, side)), 0, 1).astype(np.float32)


def test_no_source_is_one_of_the_test_sets():
    assert not {Path(f).stem for f in cx.SKIMAGE_FILES} & set(negatives.PHOTOS)
    assert set(cx.TEST_DICOM) == set(negatives.DICOM_FILES) and not set(cx.DICOM_FILES) & set(cx.TEST_DICOM)
    names = set(cx.bundled_photos()) | set(cx.dicom_images())
    assert not {n.split("_", 1)[1] for n in names if "_" in n} & set(negatives.PHOTOS)


def test_a_dicom_file_with_a_test_files_pixels_is_left_out(monkeypatch):
    """The check is on pixels, not names: MR_small's other encodings hold the test set's MR slice."""
    monkeypatch.setattr(cx, "DICOM_FILES", ("MR_small_RLE.dcm", "693_J2KI.dcm"))
    kept = cx.dicom_images()
    assert "dicom_693_J2KI" in kept and "dicom_MR_small_RLE" not in kept


@pytest.mark.parametrize("make", [cx.chart, cx.document, cx.fractal_texture, cx.shapes, cx.body_part, cx.white_noise])
def test_each_generator_draws_a_gray_image_that_changes_with_the_seed(make):
    a, b = make(1), make(2)
    for image in (a, b):
        assert image.ndim == 2 and min(image.shape) >= 64 and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_counterexamples_cover_every_kind_in_variants_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    films = [_film(rng) for _ in range(3)]
    drawn = list(cx.counterexamples(films, n_variants=2, seed=5))
    names = [name for name, _ in drawn]
    assert len(names) == len(set(names))
    kinds = {re.sub(r"(_\d+)+$", "", name.split("/")[0]) for name in names}
    assert {"chart", "document", "texture", "shapes", "body_part", "white_noise", "film_part", "film_in_photo"} <= kinds
    assert any(k.startswith("skimage") for k in kinds) and any(k.startswith("dicom") for k in kinds)
    assert all(g.ndim == 2 and g.dtype == np.float32 and 0 <= g.min() and g.max() <= 1 for _, g in drawn)
    again = list(cx.counterexamples(films, n_variants=2, seed=5))
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(drawn, again))


def test_a_film_part_is_a_small_window_of_the_film():
    rng = np.random.default_rng(1)
    film = _film(rng, 200)
    part = cx.film_part(film, rng)
    assert 0.01 < part.size / film.size < 0.25


def test_radiograph_variants_are_four_uploads_of_the_film():
    rng = np.random.default_rng(2)
    film = _film(rng, 128)
    variants = radiograph_variants(film, rng)
    assert len(variants) == 4
    for v in variants:
        assert v.ndim == 2 and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
    assert all(sorted(v.shape) == sorted(film.shape) for v in variants[2:])  # noise and JPEG keep the size
    assert noise_sd(variants[2]) > 2 * noise_sd(film)  # the grainy one has noise added (posing keeps the noise sd)
