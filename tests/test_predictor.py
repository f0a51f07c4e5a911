"""Predictor: rebuilds models from artifacts alone, predicts on real full-size files, explains with Grad-CAM."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from boneage_core.imaging import ImageLoadError
from boneage_core.predictor import Predictor, overlay_heatmap, years_months
from boneage_core.preprocess import preprocess_source


@pytest.fixture(scope="module")
def predictor(quick_run):
    return Predictor.load(quick_run)


def test_prediction_on_full_size_sample(predictor, fullres_sample):
    pred = predictor.predict(fullres_sample, male=False)
    assert 0 <= pred.bone_age_months <= 240
    assert pred.stage_source == "classifier"
    assert sum(pred.stage_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert pred.stage_name == predictor.scheme.names[pred.stage]
    spec = predictor.models["regressor"].spec.preprocess
    assert pred.model_input.shape == (spec.image_size, spec.image_size)
    np.testing.assert_allclose(pred.model_input, preprocess_source(fullres_sample, spec))  # the one pipeline
    assert pred.interval is not None and pred.interval.low <= pred.bone_age_months <= pred.interval.high
    json.dumps(pred.to_dict())


def test_bytes_path_and_array_give_the_same_answer(predictor, fullres_sample):
    a = predictor.predict(fullres_sample, male=True)
    b = predictor.predict(fullres_sample.read_bytes(), male=True)
    c = predictor.predict(a.original, male=True)
    assert a.bone_age_months == pytest.approx(b.bone_age_months) == pytest.approx(c.bone_age_months)


def test_sex_input_is_used(predictor, fullres_sample):
    male = predictor.predict(fullres_sample, male=True)
    female = predictor.predict(fullres_sample, male=False)
    assert male.bone_age_months != female.bone_age_months


def test_tta_runs_and_stays_close(predictor, fullres_sample):
    plain = predictor.predict(fullres_sample, male=True, tta=False)
    tta = predictor.predict(fullres_sample, male=True, tta=True)
    assert abs(plain.bone_age_months - tta.bone_age_months) < 30


@pytest.mark.parametrize("target", ["regressor", "classifier"])
def test_gradcam_is_aligned_to_the_input(predictor, fullres_sample, target):
    pred = predictor.predict(fullres_sample, male=False)
    exp = predictor.explain(pred.original, male=False, target=target, alpha=0.5)
    assert exp.heatmap.shape == pred.original.shape
    assert exp.overlay.shape == (*pred.original.shape, 3) and exp.overlay.dtype == np.uint8
    assert 0.0 <= exp.heatmap.min() and exp.heatmap.max() <= 1.0
    assert exp.is_blank == (exp.model_heatmap.max() <= 0)


@pytest.mark.parametrize("target", ["regressor", "classifier"])
def test_trained_gradcam_focuses_on_the_hand(committed_artifacts, fullres_sample, target):
    predictor = Predictor.load(committed_artifacts)
    pred = predictor.predict(fullres_sample, male=False)
    exp = predictor.explain(pred.original, male=False, target=target)
    assert not exp.is_blank
    # the hand (bright, after the model's own stretch) gets more attention than the dark background
    hand = pred.model_input > 0.5
    assert exp.model_heatmap[hand].mean() > exp.model_heatmap[~hand].mean()


def test_explain_unknown_target(predictor, hand_like):
    with pytest.raises(ValueError, match="no tea"):
        predictor.explain(hand_like, male=True, target="tea")


def test_overlay_alpha_changes_the_picture(hand_like):
    heat = np.linspace(0, 1, hand_like.size, dtype=np.float32).reshape(hand_like.shape)
    assert not np.array_equal(overlay_heatmap(hand_like, heat, 0.1), overlay_heatmap(hand_like, heat, 0.9))
    with pytest.raises(ValueError):
        overlay_heatmap(hand_like, heat, 1.5)


def test_bad_inputs_give_clear_errors(predictor):
    with pytest.raises(ImageLoadError, match="not a readable image"):
        predictor.predict(b"definitely not an image", male=True)
    blank = io.BytesIO()
    Image.new("L", (300, 400), 128).save(blank, format="PNG")
    with pytest.raises(ImageLoadError, match="blank"):
        predictor.predict(blank.getvalue(), male=True, name="blank.png")


def test_missing_artifacts_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="run train.py"):
        Predictor.load(tmp_path)


def test_committed_artifacts_load_and_predict(committed_artifacts, fullres_sample):
    predictor = Predictor.load(committed_artifacts)
    assert predictor.has_regressor and predictor.has_classifier
    pred = predictor.predict(fullres_sample, male=False)
    assert 0 <= pred.bone_age_months <= 240


@pytest.mark.parametrize("months,text", [(0, "0 y 0 m"), (124.6, "10 y 5 m"), (239.7, "20 y 0 m")])
def test_years_months(months, text):
    assert years_months(months) == text


def test_default_tta_follows_how_the_artifacts_were_evaluated(quick_run, tmp_path, fullres_sample):
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    config = json.loads((folder / "config.json").read_text())
    for tta in (False, True):
        (folder / "config.json").write_text(json.dumps({**config, "tta": tta}))
        predictor = Predictor.load(folder)
        assert predictor.tta is tta
        default = predictor.predict(fullres_sample, male=True)
        explicit = predictor.predict(fullres_sample, male=True, tta=tta)
        assert default.bone_age_months == pytest.approx(explicit.bone_age_months)


def test_classifier_gradcam_explains_the_given_stage(predictor, fullres_sample):
    pred = predictor.predict(fullres_sample, male=False)
    other = (pred.stage + 1) % predictor.scheme.n_classes
    assert predictor.explain(pred.original, False, "classifier", class_index=other).class_index == other
    assert predictor.explain(pred.original, False, "regressor").class_index is None


def test_mismatched_stage_schemes_are_refused(quick_run):
    from dataclasses import replace

    from boneage_core.stages import StageScheme

    loaded = Predictor.load(quick_run)
    net = loaded.models["classifier"]
    net.spec = replace(net.spec, scheme=StageScheme(female_cutoffs=(12.0, 84.0, 156.0, 180.0)))
    with pytest.raises(ValueError, match="different stage schemes"):
        Predictor(loaded.models, loaded.meta, loaded.device)
