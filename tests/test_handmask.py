"""Hand segmentation (synthetic and real radiographs) and heatmap mass inside the hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from boneage_core.handmask import (MAX_AREA, MIN_AREA, WORK_SIDE, _dilate_square, hand_bbox, hand_mask, mass_inside,
                                   peak_inside, segment_hand)
from boneage_core.imaging import load_gray
from boneage_core.preprocess import squash_resize


def _with_border_line_and_label(image: np.ndarray) -> np.ndarray:
    """A bright film edge on all four sides and a bright burnt-in letter in a corner, as on RSNA images."""
    out = image.copy()
    out[0, :], out[-1, :], out[:, 0], out[:, -1] = 1.0, 1.0, 1.0, 1.0
    out[10:30, 8:14] = 1.0
    out[24:30, 8:24] = 1.0
    return out


def test_synthetic_hand_is_found(hand_like):
    seg = segment_hand(hand_like)
    hand = hand_like > 0.3
    assert seg.found, seg.reason
    assert seg.mask.shape == hand_like.shape and seg.mask.dtype == bool
    assert seg.mask[hand].mean() > 0.98  # nothing of the hand dropped
    assert seg.mask[5:25, 5:25].sum() == 0  # the dark corner is background
    assert MIN_AREA <= seg.area_fraction <= MAX_AREA


def test_border_lines_and_labels_do_not_swallow_the_image(hand_like):
    image = _with_border_line_and_label(hand_like)
    seg = segment_hand(image)
    assert seg.found, seg.reason
    assert seg.mask[hand_like > 0.3].mean() > 0.98
    assert not seg.mask[12:28, 9:13].any()  # the letter is not part of the hand
    assert seg.area_fraction < 0.7


def test_no_plausible_hand_falls_back_to_the_whole_image():
    rng = np.random.default_rng(0)
    tiny = np.zeros((200, 200), np.float32)
    tiny[100:104, 100:104] = 1.0  # a speck: far below a hand's area
    noise = rng.random((200, 200)).astype(np.float32)
    flat = np.full((64, 64), 0.5, np.float32)
    for image in (tiny, noise, flat):
        seg = segment_hand(image)
        assert not seg.found and seg.reason
        assert seg.mask.all()
        assert hand_mask(image).all()


def test_a_dim_component_without_the_bright_structure_is_never_the_hand():
    image = np.zeros((200, 200), np.float32)
    image[10:120, 10:120] = 0.4  # the largest component: dim, no bone
    image[130:198, 115:198] = 1.0  # smaller (14 %), bright, apart
    seg = segment_hand(image)
    assert seg.mask[140:190, 135:190].all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2-D gray image"):
        segment_hand(np.zeros((10, 10, 3)))


@pytest.mark.parametrize("sample", ["1377.png", "1395.png", "1400.png", "1404.png"])
def test_real_fullres_hands(fullres_dir, sample):
    gray = load_gray(fullres_dir / sample)  # a missing file raises: a failure, not a skip
    seg = segment_hand(gray)
    assert seg.found, seg.reason
    assert seg.mask.shape == gray.shape
    assert MIN_AREA <= seg.area_fraction <= MAX_AREA
    top, left, bottom, right = hand_bbox(seg.mask, margin=0.0)
    assert bottom > 0.9 * gray.shape[0] and top < 0.2 * gray.shape[0]  # fingertips to forearm
    h, w = gray.shape
    centre = np.zeros_like(seg.mask)
    centre[h // 5:4 * h // 5, w // 5:4 * w // 5] = True  # where these samples' hands lie, away from film edges
    assert seg.mask[centre & (gray > threshold_otsu(gray))].mean() > 0.95  # no bright tissue dropped
    assert gray[seg.mask].mean() > gray[~seg.mask].mean()


def test_real_fullres_images_never_get_a_small_mask(fullres_dir):
    for path in sorted(fullres_dir.glob("*.png"))[:6]:
        seg = segment_hand(load_gray(path))
        assert seg.area_fraction >= MIN_AREA, path.name
        assert seg.found or seg.mask.all(), path.name


def test_bbox_with_margin_is_clipped_to_the_image():
    mask = np.zeros((100, 80), bool)
    mask[20:60, 30:50] = True
    assert hand_bbox(mask, margin=0.0) == (20, 30, 60, 50)
    assert hand_bbox(mask, margin=0.1) == (10, 22, 70, 58)
    assert hand_bbox(np.ones((10, 10), bool), margin=0.5) == (0, 0, 10, 10)
    with pytest.raises(ValueError, match="empty"):
        hand_bbox(np.zeros((5, 5), bool))


def test_mass_and_peak_inside():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    heat = np.zeros((10, 10))
    heat[:, :5], heat[:, 5:] = 3.0, 1.0
    assert mass_inside(heat, mask) == pytest.approx(0.75)
    assert peak_inside(heat, mask)
    heat[2, 8] = 10.0
    assert not peak_inside(heat, mask)
    assert np.isnan(mass_inside(np.zeros((10, 10)), mask))
    assert not peak_inside(np.zeros((10, 10)), mask)
    with pytest.raises(ValueError, match="differ in shape"):
        mass_inside(np.zeros((4, 4)), mask)


def test_a_hand_found_inside_the_exposed_field_reports_the_field(data_299):
    """A film with dark margins whose fingers are too faint for the search inside its field: the hand found there is
    only wrist and palm, and the field (which holds the fingers) comes with it for callers that must not cut."""
    gray = load_gray(data_299 / "boneage-training-dataset" / "10287.webp")  # a missing file raises: a failure
    seg = segment_hand(gray)
    assert seg.found and seg.field is not None
    assert seg.field.shape == gray.shape and seg.field.dtype == bool
    top, _, _, _ = hand_bbox(seg.mask, margin=0.0)
    field_top, _, field_bottom, _ = hand_bbox(seg.field, margin=0.0)
    assert top > 0.4 * gray.shape[0]  # the found hand starts below the fingers
    assert field_top < 0.05 * gray.shape[0] and field_bottom > 0.95 * gray.shape[0]  # the field spans the film


def test_a_hand_found_directly_has_no_field(hand_like):
    assert segment_hand(hand_like).field is None
    assert segment_hand(np.random.default_rng(0).random((200, 200)).astype(np.float32)).field is None


# --- the square dilation as two running maxima (issue 30): the same masks as ndi.binary_dilation ---


def _dilate_square_reference(mask: np.ndarray, size: int) -> np.ndarray:
    return ndi.binary_dilation(mask, structure=np.ones((size, size), bool))


@pytest.mark.parametrize("size", [1, 3, 11, 25])
def test_dilate_square_equals_binary_dilation(size):
    rng = np.random.default_rng(size)
    for density in (0.001, 0.02, 0.3):
        mask = rng.random((97, 131)) < density
        mask[0, 5] = mask[-1, -1] = mask[40, 0] = True  # pixels on the borders
        got = _dilate_square(mask, size)
        assert got.dtype == bool and got.shape == mask.shape
        np.testing.assert_array_equal(got, _dilate_square_reference(mask, size))
    assert not _dilate_square(np.zeros((20, 20), bool), size).any()


def test_segmentation_of_real_films_is_unchanged_by_the_running_maxima(fullres_dir, data_299, monkeypatch):
    """Every full-size sample and its 299 px copy: the same mask and field as with ndi.binary_dilation."""
    films = sorted(fullres_dir.glob("*.png"))
    films += [data_299 / "boneage-training-dataset" / f"{f.stem}.webp" for f in films[:6]]
    grays = [squash_resize(load_gray(f), WORK_SIDE) for f in films]
    new = [segment_hand(g) for g in grays]
    monkeypatch.setattr("boneage_core.handmask._dilate_square", _dilate_square_reference)
    for film, gray, seg in zip(films, grays, new):
        old = segment_hand(gray)
        assert seg.found == old.found, film.name
        np.testing.assert_array_equal(seg.mask, old.mask, err_msg=film.name)
        assert (seg.field is None) == (old.field is None), film.name
        if seg.field is not None:
            np.testing.assert_array_equal(seg.field, old.field, err_msg=film.name)
