"""preprocess: the one path from gray image to model input; full-size uploads match the 299 px training copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boneage_core.imaging import ImageLoadError, load_gray
from boneage_core.data import _load_one
from boneage_core.preprocess import prepare
from boneage_core.preprocess import (
    PreprocessSpec,
    preprocess,
    preprocess_source,
    squash_resize,
    to_uint8,
)

#: Bounds for full-size original vs the RSNA 299 px WebP copy, both through preprocess_source at 256 px.
#: Measured on the 24 shared originals: mean |diff| 0.0054-0.0158, Pearson r 0.9959-0.9996. The bounds leave
#: about 2x headroom on the diff and 0.006 on r, and are far from what a geometry error gives (padding to a
#: square instead of squashing: mean |diff| >= 0.17, r <= 0.73; a different patient: r <= 0.62).
MAX_MEAN_ABS_DIFF = 0.03
MIN_PEARSON_R = 0.99


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
    gray[:, : w // 3] = 0.9  # bright left third
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
    gray[: h // 3] = 0.9  # bright top third
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
