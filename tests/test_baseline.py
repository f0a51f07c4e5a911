"""baseline: HOG features and the HOG + XGBoost models on tiny synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import hog

from boneage_core.baseline import HogParams, HogXGBoost, fit_baseline, hog_features
from boneage_core.preprocess import PreprocessSpec
from boneage_core.stages import DEFAULT_SCHEME


def _images(n: int, size: int = 32, seed: int = 0):
    """Images whose stripe frequency encodes the age, so HOG has something to learn."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(40, 200, n)  # stages 1..4 only, for either sex
    xx = np.arange(size)[None, :]
    imgs = np.stack([np.tile(0.5 + 0.5 * np.sin(xx * a / 400.0 * np.pi), (size, 1)) for a in ages])
    imgs = np.clip(imgs + 0.05 * rng.standard_normal(imgs.shape), 0, 1).astype(np.float32)
    male = rng.random(n) < 0.5
    return imgs, ages, male


def test_hog_features_shape_and_sex_column():
    params = HogParams(pixels_per_cell=8, cells_per_block=2, orientations=9)
    imgs, _, male = _images(5)
    feats = hog_features(imgs, male, params)
    per_image = hog(imgs[0], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
    assert per_image.size == 3 * 3 * 2 * 2 * 9  # (32/8 - 2 + 1)^2 blocks of 2x2 cells x 9 bins
    assert feats.shape == (5, per_image.size + 1) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0, :-1], per_image, atol=1e-6)
    assert feats[:, -1].tolist() == male.astype(float).tolist()
    as_u8 = hog_features(np.round(imgs * 255).astype(np.uint8), male, params)
    np.testing.assert_allclose(as_u8, hog_features(np.round(imgs * 255) / 255, male, params), atol=1e-5)


def test_fit_predict_and_round_trip(tmp_path):
    params = HogParams(pixels_per_cell=8, cells_per_block=2, orientations=9)
    imgs, ages, male = _images(80, seed=1)
    stages = DEFAULT_SCHEME.stage_of(ages, male)
    assert 0 not in stages and len(np.unique(stages)) >= 3
    feats = hog_features(imgs, male, params)
    tr, va = slice(0, 60), slice(60, 80)
    spec = PreprocessSpec(image_size=32)
    model = fit_baseline(feats[tr], ages[tr], stages[tr], feats[va], ages[va], stages[va], spec, params,
                         n_estimators=30, max_depth=2, learning_rate=0.3, seed=0)
    assert model.classes == tuple(int(c) for c in np.unique(stages[tr]))
    pred = model.predict_age(feats[va])
    assert pred.shape == (20,) and np.all((pred >= 0) & (pred <= 240))
    # the stripe frequency is learnable: better than predicting the training mean
    assert np.abs(pred - ages[va]).mean() < np.abs(ages[tr].mean() - ages[va]).mean()
    proba = model.predict_stage_proba(feats[va])
    assert proba.shape == (20, DEFAULT_SCHEME.n_classes)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    absent = [c for c in range(5) if c not in model.classes]
    assert absent and np.all(proba[:, absent] == 0)

    model.save(tmp_path / "baseline")
    loaded = HogXGBoost.load(tmp_path / "baseline")
    assert loaded.spec == spec and loaded.hog_params == params and loaded.scheme == DEFAULT_SCHEME
    assert loaded.classes == model.classes
    np.testing.assert_array_equal(loaded.predict_age(feats[va]), pred)
    np.testing.assert_array_equal(loaded.predict_stage_proba(feats[va]), proba)
    np.testing.assert_array_equal(loaded.features(imgs[:3], male[:3]), feats[:3])


def test_untrained_models_raise(tmp_path):
    empty = HogXGBoost(PreprocessSpec(image_size=32), HogParams(), DEFAULT_SCHEME)
    with pytest.raises(RuntimeError, match="regressor"):
        empty.predict_age(np.zeros((1, 5)))
    with pytest.raises(RuntimeError, match="classifier"):
        empty.predict_stage_proba(np.zeros((1, 5)))
    empty.save(tmp_path / "empty")
    loaded = HogXGBoost.load(tmp_path / "empty")
    assert loaded.regressor is None and loaded.classifier is None
