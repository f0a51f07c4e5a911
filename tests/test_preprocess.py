"""preprocess: the one path from gray image to model input; full-size uploads match the 299 px training copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boneage_core.checkpoint import read_meta
from boneage_core.handmask import WORK_SIDE, segment_hand
from boneage_core.imaging import ImageLoadError, load_gray
from boneage_core.data import _load_one
from boneage_core.preprocess import prepare
from boneage_core.preprocess import (
    FULL_BOX,
    HAND_CROP_MARGIN,
    PreprocessSpec,
    box_pixels,
    contrast_stretch,
    grey_entropy,
    crop_box,
    hand_crop_box,
    heatmap_to_original,
    neighbour_correlation,
    padding_box,
    PAD_MIN_SHARE,
    preprocess,
    preprocess_source,
    resize_to,
    squash_resize,
    to_uint8,
)

#: Bounds for full-size original vs the RSNA 299 px WebP copy, both through preprocess_source at 256 px.
#: Measured on the 24 shared originals: mean |diff| 0.0054-0.0158, Pearson r 0.9959-0.9996. The bounds leave
#: about 2x headroom on the diff and 0.006 on r, and are far from what a geometry error gives (padding to a
#: square instead of squashing: mean |diff| >= 0.17, r <= 0.73; a different patient: r <= 0.62).
MAX_MEAN_ABS_DIFF = 0.03
MIN_PEARSON_R = 0.99

#: PreprocessSpec.key() of specs without the hand crop, as computed before hand_crop existed (the committed
#: checkpoints are 192 px): their training caches keep their names.
KEYS_BEFORE_HAND_CROP = {192: "22e8b987b1", 256: "d7fbd8bc17", 299: "96922d7911"}
#: Hand crop boxes of a full-size original and of its 299 px copy, per side (fraction of the image). Measured on the
#: 24 shared originals: 23 differ by <= 0.004; 1384 by 0.0625 (its full-size mask takes in a bright strip of the
#: film's bottom edge out to the right border: a wider crop, nothing of the hand cut).
MAX_BOX_DIFF, TYPICAL_BOX_DIFF, MIN_TYPICAL = 0.07, 0.01, 22
#: Images of the 299 px set the hand crop is checked on (spread evenly over the sorted ids).
N_CROP_CHECK = 200


def test_output_shape_dtype_and_range(hand_like):
    for size in (64, 256):
        out = preprocess(hand_like, PreprocessSpec(image_size=size))
        assert out.shape == (size, size) and out.dtype == np.float32
        assert out.min() == 0.0 and out.max() == 1.0


def test_contrast_stretch_matches_percentile_window():
    rng = np.random.default_rng(3)
    gray = (0.2 + 0.5 * rng.random((64, 64))).astype(np.float32)
    spec = PreprocessSpec(image_size=64, low_percentile=2.0, high_percentile=98.0)
    out = preprocess(gray, spec)  # already 64 x 64: no resampling, only the stretch
    lo, hi = np.percentile(gray.astype(np.float64), [2.0, 98.0])
    expected = np.clip((gray - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert 0.01 < (out == 0).mean() < 0.04 and 0.01 < (out == 1).mean() < 0.04


def test_squash_wide_image_without_padding():
    h, w, s = 100, 300, 60
    gray = np.full((h, w), 0.1, np.float32)
    gray[:, : w // 3] = 0.6  # bright left third (below PAD_BRIGHT: not padding)
    out = preprocess(gray, PreprocessSpec(image_size=s))
    assert out.shape == (s, s)
    third = s // 3
    # every row (top and bottom too) keeps the same left-third/right-two-thirds profile: no padding bands
    assert np.all(out[:, : third - 2] > 0.95), "bright left third lost or padded"
    assert np.all(out[:, third + 2:] < 0.05)
    np.testing.assert_allclose(out, np.broadcast_to(out[s // 2], out.shape), atol=1e-6)
    # the edge sits at one third of the width, as in the input
    edge = int(np.argmax(out[s // 2] < 0.5))
    assert abs(edge - s / 3) <= 1


def test_squash_tall_image_without_padding():
    h, w, s = 300, 100, 60
    gray = np.full((h, w), 0.1, np.float32)
    gray[: h // 3] = 0.6  # bright top third (below PAD_BRIGHT: not padding)
    out = preprocess(gray, PreprocessSpec(image_size=s))
    column = out[:, 0]
    assert np.all(out[: s // 3 - 2] > 0.95) and np.all(out[s // 3 + 2:] < 0.05)
    np.testing.assert_allclose(out, np.broadcast_to(column[:, None], out.shape), atol=1e-6)


def test_squash_resize_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    gray = rng.random((90, 40)).astype(np.float32)
    out = squash_resize(gray, 32)
    ref = np.asarray(Image.fromarray(gray, mode="F").resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    same = squash_resize(gray[:32, :32], 32)
    np.testing.assert_array_equal(same, gray[:32, :32])


def test_blank_and_nearly_blank_images_are_refused():
    with pytest.raises(ImageLoadError, match="blank"):
        preprocess(np.full((100, 80), 0.5, np.float32), PreprocessSpec(image_size=64))
    rng = np.random.default_rng(0)
    faint = (0.5 + 0.005 * rng.random((100, 80))).astype(np.float32)
    with pytest.raises(ImageLoadError, match="blank"):
        preprocess(faint, PreprocessSpec(image_size=64))
    with pytest.raises(ImageLoadError, match="2-D"):
        preprocess(np.zeros((10, 10, 3), np.float32), PreprocessSpec(image_size=64))


def test_preprocess_source_names_the_file_on_blank(tmp_path):
    path = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(path)
    with pytest.raises(ImageLoadError, match="white.png") as info:
        preprocess_source(path, PreprocessSpec(image_size=64))
    assert "blank" in str(info.value)


def test_preprocess_source_equals_load_then_preprocess(fullres_sample):
    spec = PreprocessSpec(image_size=128)
    np.testing.assert_array_equal(preprocess_source(fullres_sample, spec),
                                  preprocess(load_gray(fullres_sample), spec))


def test_spec_round_trip_and_key():
    spec = PreprocessSpec(image_size=128, low_percentile=1.0)
    assert PreprocessSpec.from_dict({**spec.to_dict(), "unrelated": 1}) == spec
    assert spec.with_size(64).image_size == 64 and spec.with_size(64).low_percentile == 1.0
    assert spec.key() == PreprocessSpec(image_size=128, low_percentile=1.0).key()
    assert spec.key() != spec.with_size(64).key()


def test_to_uint8():
    out = to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float(np.abs(a - b).mean()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_fullres_originals_match_their_299_copies(fullres_dir, data_299):
    spec = PreprocessSpec(image_size=256)
    originals = sorted(fullres_dir.glob("*.png"))
    assert len(originals) == 24, [p.name for p in originals]
    rows, bad = [], []
    for path in originals:
        small = data_299 / "boneage-training-dataset" / f"{path.stem}.webp"
        assert small.is_file(), f"no 299 px copy of {path.stem}"
        mad, r = _compare(preprocess_source(path, spec), preprocess_source(small, spec))
        rows.append(f"{path.stem}: mad={mad:.4f} r={r:.4f}")
        if not (mad < MAX_MEAN_ABS_DIFF and r > MIN_PEARSON_R):
            bad.append(rows[-1])
    assert not bad, f"full-res vs 299 mismatch: {bad}\nall: {rows}"


def test_padding_geometry_would_fail_the_bound(fullres_sample, data_299):
    """Control: the bound above is tight enough to catch letterboxing instead of squashing."""
    spec = PreprocessSpec(image_size=256)
    gray = load_gray(fullres_sample)
    h, w = gray.shape
    side = max(h, w)
    padded = np.zeros((side, side), np.float32)
    padded[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = gray
    small = preprocess_source(data_299 / "boneage-training-dataset" / f"{fullres_sample.stem}.webp", spec)
    mad, r = _compare(preprocess(padded, spec), small)
    assert mad > MAX_MEAN_ABS_DIFF and r < MIN_PEARSON_R, (mad, r)


def test_noise_is_flagged_and_radiographs_are_not(data_299, fullres_sample):
    from boneage_core.preprocess import input_warnings

    spec = PreprocessSpec(image_size=192)
    noise = preprocess(np.random.default_rng(0).random((300, 240)).astype(np.float32), spec)
    assert input_warnings(noise) and "radiograph" in input_warnings(noise)[0]
    assert input_warnings(preprocess_source(fullres_sample, spec)) == []
    some = sorted((data_299 / "boneage-training-dataset").glob("*.webp"))[:20]
    assert all(input_warnings(preprocess_source(p, spec)) == [] for p in some)


def test_resize_to_undoes_the_squash_geometry():
    from boneage_core.preprocess import resize_to

    image = np.zeros((400, 300), dtype=np.float32)
    image[100:200, 150:300] = 1.0  # a block in the upper right
    square = squash_resize(image, 64)
    back = resize_to(square, image.shape)
    assert back.shape == image.shape
    assert np.abs(back - image).mean() < 0.03
    assert back[150, 225] > 0.9 and back[300, 50] < 0.1


def test_prepare_is_the_training_cache_path(fullres_sample):
    spec = PreprocessSpec(image_size=64)
    gray = load_gray(fullres_sample)
    assert min(gray.shape) > 500  # a real full-size radiograph
    prepared = prepare(gray, spec)
    assert prepared.dtype == np.uint8 and prepared.shape == (64, 64)
    np.testing.assert_array_equal(prepared, to_uint8(preprocess(gray, spec)))
    np.testing.assert_array_equal(prepared, to_uint8(preprocess_source(fullres_sample, spec)))
    id_, cached, error = _load_one(("1377", str(fullres_sample), spec))
    assert (id_, error) == ("1377", "")
    np.testing.assert_array_equal(prepared, cached)
    assert prepared.min() == 0 and prepared.max() == 255  # contrast stretched


# --- hand crop -------------------------------------------------------------------------------------------------


def test_spec_without_hand_crop_keeps_its_dict_and_cache_key():
    for size, key in KEYS_BEFORE_HAND_CROP.items():
        spec = PreprocessSpec(image_size=size)
        assert "hand_crop" not in spec.to_dict()
        assert spec.key() == key == PreprocessSpec(image_size=size, hand_crop=False).key()
    cropped = PreprocessSpec(hand_crop=True)
    assert cropped.to_dict()["hand_crop"] is True
    assert cropped.key() != PreprocessSpec().key()
    assert PreprocessSpec.from_dict(cropped.to_dict()) == cropped
    assert PreprocessSpec.from_dict(PreprocessSpec().to_dict()) == PreprocessSpec()
    assert cropped.with_size(64).hand_crop and cropped.with_size(64).key() != cropped.key()


def test_format_1_checkpoints_keep_their_spec_and_cache_key(format1_models):
    for name in ("regressor.pt", "classifier.pt"):
        stored = read_meta(format1_models / name)["spec"]["preprocess"]
        spec = PreprocessSpec.from_dict(stored)
        assert not spec.hand_crop and spec.to_dict() == stored
        assert spec.key() == KEYS_BEFORE_HAND_CROP[spec.image_size]


def test_without_hand_crop_preprocess_is_the_plain_squash_and_stretch(fullres_sample, hand_like):
    for gray in (load_gray(fullres_sample), hand_like):
        for spec in (PreprocessSpec(image_size=192), PreprocessSpec(image_size=64, hand_crop=False)):
            assert crop_box(gray, spec) == FULL_BOX
            plain = contrast_stretch(squash_resize(gray, spec.image_size), spec.low_percentile, spec.high_percentile)
            np.testing.assert_array_equal(preprocess(gray, spec), plain)


def test_box_pixels_round_outwards_and_clip():
    assert box_pixels(FULL_BOX, (100, 200)) == (0, 0, 100, 200)
    assert box_pixels((0.1, 0.2, 0.5, 0.75), (100, 200)) == (10, 40, 50, 150)
    assert box_pixels((0.105, 0.2049, 0.4951, 0.7451), (100, 200)) == (10, 40, 50, 150)
    assert box_pixels((-0.2, -1.0, 1.5, 2.0), (100, 200)) == (0, 0, 100, 200)
    assert box_pixels((0.5, 0.5, 0.5, 0.5), (100, 200)) == (50, 100, 51, 101)  # at least one pixel
    assert box_pixels((1.0, 1.0, 1.0, 1.0), (100, 200)) == (99, 199, 100, 200)


def _on_canvas(hand_like: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The synthetic hand on a larger dark film, off centre; and where the hand's image lies on it."""
    canvas = np.full((400, 360), 0.06, np.float32)
    where = (slice(150, 350), slice(40, 190))
    canvas[where] = hand_like
    return canvas, where


def test_hand_crop_cuts_to_the_hand_plus_margin(hand_like):
    gray, (rows, cols) = _on_canvas(hand_like)
    spec = PreprocessSpec(image_size=64, hand_crop=True)
    box = crop_box(gray, spec)
    assert box == hand_crop_box(gray) != FULL_BOX
    top, left, bottom, right = box_pixels(box, gray.shape)
    hand = np.zeros(gray.shape, bool)
    hand[rows, cols] = hand_like > 0.3
    ys, xs = np.nonzero(hand)
    h, w = gray.shape
    assert top <= ys.min() - HAND_CROP_MARGIN * h and left <= xs.min() - HAND_CROP_MARGIN * w
    assert bottom >= ys.max() + HAND_CROP_MARGIN * h and right >= xs.max() + HAND_CROP_MARGIN * w
    assert (bottom - top) * (right - left) < 0.5 * gray.size  # most of the empty film is cut away
    out = preprocess(gray, spec)
    assert out.shape == (64, 64) and out.dtype == np.float32
    cut = gray[top:bottom, left:right]
    np.testing.assert_array_equal(out, contrast_stretch(squash_resize(cut, 64), spec.low_percentile,
                                                        spec.high_percentile))
    assert box == hand_crop_box(gray.copy())  # pure: the same image gives the same box


def test_no_hand_found_means_no_crop():
    noise = np.random.default_rng(0).random((300, 240)).astype(np.float32)
    assert not segment_hand(squash_resize(noise, WORK_SIDE)).found
    assert hand_crop_box(noise) == FULL_BOX
    np.testing.assert_array_equal(preprocess(noise, PreprocessSpec(image_size=64, hand_crop=True)),
                                  preprocess(noise, PreprocessSpec(image_size=64)))


def _assert_crop_holds_the_hand(gray: np.ndarray, label: str) -> tuple[float, bool]:
    """The crop box holds the mask it was made from plus the margin, and the hand mask segment_hand finds in the
    image's own geometry; returns (the box's area share, whether the box is the whole image)."""
    box = hand_crop_box(gray)
    seg = segment_hand(squash_resize(gray, WORK_SIDE))
    kept = seg.mask if seg.field is None else seg.mask | seg.field
    top, left, bottom, right = box_pixels(box, kept.shape)
    assert kept.sum() == kept[top:bottom, left:right].sum(), f"{label}: the crop cuts the mask it was made from"
    ys, xs = np.nonzero(kept)
    pad = round(HAND_CROP_MARGIN * WORK_SIDE)
    assert (top, left) <= (max(0, ys.min() - pad), max(0, xs.min() - pad)), f"{label}: no margin"
    assert bottom >= min(WORK_SIDE, ys.max() + 1 + pad) and right >= min(WORK_SIDE, xs.max() + 1 + pad), label
    native = segment_hand(gray).mask
    top, left, bottom, right = box_pixels(box, gray.shape)
    outside = int(native.sum() - native[top:bottom, left:right].sum())
    assert outside == 0, f"{label}: {outside} px of the hand mask found at the image's own size lie outside the crop"
    return (bottom - top) * (right - left) / gray.size, box == FULL_BOX


def test_hand_crop_holds_the_whole_hand_on_the_fullres_samples(fullres_dir):
    originals = sorted(fullres_dir.glob("*.png"))
    assert len(originals) == 24, [p.name for p in originals]
    shares = [_assert_crop_holds_the_hand(load_gray(path), path.name)[0] for path in originals]
    assert np.mean(shares) < 0.95  # it does crop


def test_hand_crop_holds_the_whole_hand_on_the_299_set(data_299):
    paths = sorted((data_299 / "boneage-training-dataset").glob("*.webp"))
    assert len(paths) >= N_CROP_CHECK, f"only {len(paths)} images in {data_299}"
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, N_CROP_CHECK).round().astype(int)]
    results = [_assert_crop_holds_the_hand(load_gray(path), path.name) for path in picked]
    shares, whole = np.array([r[0] for r in results]), sum(r[1] for r in results)
    assert whole <= N_CROP_CHECK // 10, f"{whole} of {N_CROP_CHECK} images kept whole (measured: 5)"
    assert shares.mean() < 0.9, f"the crop keeps {shares.mean():.0%} of the image on average (measured: 83 %)"


def test_hand_crop_of_a_fullres_original_matches_its_299_copy(fullres_dir, data_299):
    rows, typical = [], 0
    for path in sorted(fullres_dir.glob("*.png")):
        small = data_299 / "boneage-training-dataset" / f"{path.stem}.webp"
        assert small.is_file(), f"no 299 px copy of {path.stem}"
        diff = float(np.abs(np.subtract(hand_crop_box(load_gray(path)), hand_crop_box(load_gray(small)))).max())
        rows.append(f"{path.stem}: {diff:.4f}")
        typical += diff <= TYPICAL_BOX_DIFF
        assert diff <= MAX_BOX_DIFF, rows
    assert len(rows) == 24 and typical >= MIN_TYPICAL, rows


def test_heatmap_to_original_places_the_map_in_the_crop_box():
    rng = np.random.default_rng(1)
    model_map = (0.1 + rng.random((32, 32))).astype(np.float32)
    shape, box = (400, 300), (0.25, 0.1, 0.755, 0.6)
    out = heatmap_to_original(model_map, shape, box)
    top, left, bottom, right = box_pixels(box, shape)
    assert out.shape == shape and out.dtype == np.float32
    inside = np.zeros(shape, bool)
    inside[top:bottom, left:right] = True
    assert not out[~inside].any() and (out[inside] > 0).all()
    np.testing.assert_array_equal(out[inside].reshape(bottom - top, right - left),
                                  resize_to(model_map, (bottom - top, right - left)))
    np.testing.assert_array_equal(heatmap_to_original(model_map, shape), resize_to(model_map, shape))
    np.testing.assert_array_equal(heatmap_to_original(model_map, shape, FULL_BOX), resize_to(model_map, shape))


def test_heatmap_to_original_inverts_the_crop_geometry(hand_like):
    gray, _ = _on_canvas(hand_like)
    spec = PreprocessSpec(image_size=64, hand_crop=True)
    box = crop_box(gray, spec)
    top, left, bottom, right = box_pixels(box, gray.shape)
    marker = np.zeros(gray.shape, np.float32)
    spot = (slice(top + 30, top + 70), slice(left + 20, left + 60))
    marker[spot] = 1.0  # a block inside the crop: where the model would "look"
    on_input = squash_resize(marker[top:bottom, left:right], spec.image_size)
    back = heatmap_to_original(on_input, gray.shape, box)
    assert back[spot].mean() > 0.9 and back[~(marker > 0)].mean() < 0.02


# --- issue 30: faster steps, the same model inputs ---


def _neighbour_correlation_reference(image: np.ndarray) -> float:
    """The former computation (np.corrcoef of the two shifted copies)."""
    a, b = image[:, :-1].ravel(), image[:, 1:].ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def test_neighbour_correlation_matches_corrcoef(data_299, fullres_sample):
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64)).astype(np.float32), np.tile(np.linspace(0, 1, 50, dtype=np.float32), (40, 1))]
    images += [prepare(load_gray(f), PreprocessSpec(256)).astype(np.float32) / 255
               for f in (fullres_sample, data_299 / "boneage-training-dataset" / "1377.webp")]
    for image in images:
        assert neighbour_correlation(image) == pytest.approx(_neighbour_correlation_reference(image), abs=1e-9)
    assert neighbour_correlation(np.full((30, 30), 0.3, np.float32)) == 0.0
    assert neighbour_correlation(np.tile(np.linspace(0, 1, 30), (30, 1)).T) == pytest.approx(1.0)  # rows constant


def test_prepared_inputs_of_real_films_are_those_of_the_former_steps(fullres_dir, data_299, monkeypatch):
    """The served specs (256, 288 with hand crop, 256 with hand crop) on full-size films and 299 px copies: the same
    uint8 model inputs as with the former dilation (ndi.binary_dilation by a square)."""
    from scipy import ndimage as ndi

    specs = [PreprocessSpec(256), PreprocessSpec(288, hand_crop=True), PreprocessSpec(256, hand_crop=True)]
    films = [fullres_dir / f"{stem}.png" for stem in ("1377", "1384", "1390")]
    films += [data_299 / "boneage-training-dataset" / f"{f.stem}.webp" for f in films]
    grays = [load_gray(f) for f in films]
    new = [[prepare(g, s) for s in specs] for g in grays]
    monkeypatch.setattr("boneage_core.handmask._dilate_square",
                        lambda mask, size: ndi.binary_dilation(mask, structure=np.ones((size, size), bool)))
    for film, gray, inputs in zip(films, grays, new):
        for spec, got in zip(specs, inputs):
            old = prepare(gray, spec)
            assert np.abs(got.astype(int) - old.astype(int)).max() <= 1, (film.name, spec)
            np.testing.assert_array_equal(got, old, err_msg=f"{film.name} {spec}")


def _white_padded(gray: np.ndarray, top: int, left: int, bottom: int, right: int, value: float = 1.0) -> np.ndarray:
    h, w = gray.shape
    out = np.full((h + top + bottom, w + left + right), value, np.float32)
    out[top:top + h, left:left + w] = gray
    return out


@pytest.mark.parametrize("spec", [PreprocessSpec(299), PreprocessSpec(299, hand_crop=True)])
def test_white_padding_is_cut_off_so_the_model_input_is_the_films(data_299, spec):
    """White padding that widens a film to another aspect ratio was read ~21 months wrong: the padding is cut first."""
    from boneage_core.acquisition import noise

    gray = load_gray(data_299 / "boneage-training-dataset" / "1377.webp")
    padded = _white_padded(gray, 30, 60, 0, 45)
    h, w = padded.shape
    assert padding_box(padded) == (30 / h, 60 / w, 1.0, 1.0 - 45 / w)
    np.testing.assert_array_equal(prepare(padded, spec), prepare(gray, spec))
    grainy = noise(padded, 3, seed=0)  # a few grey levels of noise on the padding: still padding
    assert np.allclose(padding_box(grainy), padding_box(padded), atol=2 / min(h, w))


def test_dark_borders_thin_frames_and_bright_images_are_not_cut(data_299):
    gray = load_gray(data_299 / "boneage-training-dataset" / "1377.webp")
    assert padding_box(gray) == FULL_BOX
    assert padding_box(_white_padded(gray, 60, 60, 60, 60, value=0.0)) == FULL_BOX  # most films have dark borders
    thin = int(PAD_MIN_SHARE * gray.shape[0]) - 1
    assert padding_box(_white_padded(gray, thin, 0, 0, 0)) == FULL_BOX  # a line or two of a scanner's frame
    assert padding_box(np.ones((40, 50), np.float32)) == FULL_BOX  # a blank image: nothing left once cut
    half = _white_padded(gray, gray.shape[0], 0, 0, 0)
    assert padding_box(half)[0] == 0.5  # at most half from each side
    inverted = _white_padded(1.0 - gray, 40, 40, 40, 40, value=1.0)  # an inverted film: its background is bright
    assert padding_box(inverted) == FULL_BOX
    textured = _white_padded(gray, 40, 0, 0, 0)
    textured[:40:4] = 0.2  # a bright band with lines across it is not uniform
    assert padding_box(textured) == FULL_BOX


def test_a_heatmap_of_a_padded_film_goes_back_inside_the_padding(data_299):
    gray = _white_padded(load_gray(data_299 / "boneage-training-dataset" / "1377.webp"), 0, 100, 0, 0)
    box = crop_box(gray, PreprocessSpec(64))
    back = heatmap_to_original(np.ones((64, 64), np.float32), gray.shape, box)
    assert back[:, :100].max() == 0 and back[:, 100:].min() > 0


def test_grey_entropy_leaves_out_the_background_and_counts_bits():
    background = np.zeros((1, 32, 32), np.uint8)
    two = background.copy()
    two[0, :4, :] = 100
    two[0, 4:8, :] = 200  # two equal levels beside the background: 1 bit
    spread = np.random.default_rng(0).integers(0, 256, (1, 32, 32)).astype(np.uint8)
    out = grey_entropy(np.concatenate([background, two, spread]))
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0) and 7.5 < out[2] <= 8.0


def test_radiographs_hold_more_grey_levels_than_a_phantom(fullres_dir, data_299):
    """The gate's flat-image limit lies between real films (padded white or not) and the Shepp-Logan phantom."""
    from boneage_core.acquisition import as_upload, pad
    from boneage_core.gate import MIN_GREY_ENTROPY
    from negatives import phantom

    spec = PreprocessSpec(256)
    films = [load_gray(fullres_dir / "1377.png"), load_gray(data_299 / "boneage-training-dataset" / "1380.webp")]
    films += [as_upload(pad(g, 0.2, 1.0)) for g in films]
    assert grey_entropy(np.stack([prepare(g, spec) for g in films])).min() > MIN_GREY_ENTROPY + 0.5
    assert grey_entropy(prepare(phantom(), spec)[None])[0] < MIN_GREY_ENTROPY


def test_noise_sd_recovers_white_noise_on_a_smooth_image(hand_like):
    from boneage_core.preprocess import noise_sd

    smooth = squash_resize(hand_like, 299)
    for sd in (0.005, 0.02):
        noisy = smooth + np.random.default_rng(1).normal(0.0, sd, smooth.shape).astype(np.float32)
        assert abs(noise_sd(noisy) - sd) < 0.2 * sd + noise_sd(smooth)
    assert noise_sd(np.full((50, 50), 0.3)) == 0.0 and noise_sd(np.zeros((2, 9))) == 0.0


def test_no_film_of_the_data_set_is_grainy_and_the_same_films_with_noise_are(data_299, fullres_dir):
    """NOISE_LIMIT lies between the films of the data set and the same films with Gaussian noise of 3 grey levels:
    no training film is changed (their cached inputs stay valid), a noisy one is smoothed. Every 60th film, and the two
    grainiest measured (docs/shift.md, "Grainy films"); the full-size originals are not grainy either."""
    from boneage_core.acquisition import as_upload, noise
    from boneage_core.preprocess import NOISE_LIMIT, is_grainy, noise_level

    folder = data_299 / "boneage-training-dataset"
    films = sorted(folder.glob("*.webp"))[::60] + [folder / "2641.webp", folder / "2452.webp"]
    for path in films:
        gray = load_gray(path)
        assert noise_level(gray) <= NOISE_LIMIT and not is_grainy(gray), path.name
        assert is_grainy(as_upload(noise(gray, 3))), path.name
    assert not any(is_grainy(load_gray(p)) for p in sorted(fullres_dir.glob("*.png")))


def test_a_grainy_film_is_smoothed_before_the_stretch_and_a_clean_one_untouched(fullres_sample, data_299):
    from boneage_core.acquisition import as_upload, noise
    from boneage_core.preprocess import film_grain, grain_warnings, noise_sd

    gray = load_gray(sorted((data_299 / "boneage-training-dataset").glob("*.webp"))[5])
    noisy = as_upload(noise(gray, 3))
    for spec in (PreprocessSpec(image_size=299), PreprocessSpec(image_size=256, hand_crop=True)):
        assert np.array_equal(prepare(gray, spec), prepare(gray, spec, grainy=False))
        smoothed, raw = preprocess(noisy, spec), preprocess(noisy, spec, grainy=False)
        assert not np.array_equal(smoothed, raw)
        assert noise_sd(smoothed) < 0.5 * noise_sd(raw)
        assert noise_sd(smoothed) < 3 * noise_sd(preprocess(gray, spec))  # back near the clean film's grain
    assert grain_warnings(film_grain(gray)) == [] and "grainy" in grain_warnings(film_grain(noisy))[0]
    assert grain_warnings(film_grain(load_gray(fullres_sample))) == []


def test_an_image_of_pure_noise_is_not_smoothed_into_structure():
    from boneage_core.preprocess import NOISE_LIMIT, film_grain, grain_warnings, is_grainy, noise_level

    pixels = np.random.default_rng(0).random((300, 240)).astype(np.float32)
    assert noise_level(pixels) > NOISE_LIMIT and not is_grainy(pixels) and film_grain(pixels) == 0.0
    assert grain_warnings(film_grain(pixels)) == []


def test_input_grain_reads_the_noise_a_network_input_carries(data_299):
    """The gate's grain feature: a film's 256 px input lies below the gate's VOUCH_GRAIN, the same film with noise of
    3 grey levels above it; an image of noise alone far above."""
    from boneage_core.acquisition import as_upload, noise
    from boneage_core.gate import VOUCH_GRAIN
    from boneage_core.preprocess import input_grain

    spec = PreprocessSpec(image_size=256)
    films = sorted((data_299 / "boneage-training-dataset").glob("*.webp"))[::700]
    clean = input_grain(np.stack([prepare(load_gray(p), spec) for p in films]))
    noisy = input_grain(np.stack([prepare(as_upload(noise(load_gray(p), 3)), spec, grainy=False) for p in films]))
    assert clean.max() < VOUCH_GRAIN < noisy.min()
    assert input_grain((np.random.default_rng(0).random((1, 64, 64)) * 255).astype(np.uint8))[0] > 10 * VOUCH_GRAIN


def test_a_hand_crop_heatmap_of_a_padded_film_lands_on_the_hand_of_the_film(data_299):
    """crop_box cuts the padding, then finds the hand: the hand box of a padded film is the film's own hand box moved
    by the padding, and a heatmap goes back there (nothing on the padding)."""
    gray = load_gray(data_299 / "boneage-training-dataset" / "1377.webp")
    padded = _white_padded(gray, 0, 100, 0, 0)
    spec = PreprocessSpec(64, hand_crop=True)
    film = box_pixels(crop_box(gray, spec), gray.shape)
    top, left, bottom, right = box_pixels(crop_box(padded, spec), padded.shape)
    assert film != (0, 0) + gray.shape  # the hand does not fill the film: the crop is exercised
    np.testing.assert_allclose((top, left - 100, bottom, right - 100), film, atol=2)
    back = heatmap_to_original(np.ones((64, 64), np.float32), padded.shape, crop_box(padded, spec))
    assert back[:, :100].max() == 0 and back[top:bottom, left:right].min() > 0
    assert back.sum() == back[top:bottom, left:right].sum()
