"""Predictor: loads any artifacts layout through the manifest, predicts on real full-size files, gates inputs, explains with Grad-CAM."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from boneage_core.calibration import CALIBRATION_FILE, load_calibration
from boneage_core.errors import ArtifactError, InputError, MissingArtifactError
from boneage_core.gate import INVERT_UNSURE, RADIOGRAPH_ABOVE, Correction, NotARadiographError
from boneage_core.heads import AGE, STAGE
from boneage_core.imaging import ImageLoadError, load_gray
from boneage_core.manifest import build_manifest, read_manifest, write_manifest
from boneage_core.models import load_model
from boneage_core.predictor import Predictor, overlay_heatmap
from boneage_core.preprocess import (FULL_BOX, box_pixels, crop_box, heatmap_to_original, prepare,
                                     preprocess_source, resize_to, to_uint8)
from boneage_core.report import years_months
from boneage_core.views import NO_TTA, TTA_SCALES
from boneage_core.vocab import STAGE_FROM_AGE, STAGE_FROM_HEAD, SexError


@pytest.fixture(scope="module")
def predictor(quick_run):
    return Predictor.load(quick_run)


def test_prediction_on_full_size_sample(predictor, fullres_sample):
    pred = predictor.predict(fullres_sample, male=False)
    assert 0 <= pred.bone_age_months <= 240
    assert pred.stage_source == STAGE_FROM_HEAD
    assert sum(pred.stage_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.stage_name == predictor.scheme.names[pred.stage]
    spec = predictor.member_for(AGE).spec.preprocess
    assert pred.model_input.shape == (spec.image_size, spec.image_size)
    np.testing.assert_array_equal(to_uint8(pred.model_input), to_uint8(preprocess_source(fullres_sample, spec)))
    assert pred.interval is not None and pred.interval.low <= pred.bone_age_months <= pred.interval.high
    assert pred.gate is not None and not pred.gate.refused
    json.dumps(pred.to_dict())


@pytest.mark.slow
def test_two_file_layout_and_one_file_multihead_load_through_the_same_call(format1_models, quick_run,
                                                                          fullres_sample):
    pair, single = Predictor.load(format1_models), Predictor.load(quick_run)
    assert sorted(pair.members) == ["classifier.pt", "regressor.pt"] and list(single.members) == ["multihead.pt"]
    for loaded in (pair, single):
        assert set(loaded.heads) == {AGE, STAGE}
        pred = loaded.predict(fullres_sample, male=False)
        assert pred.bone_age_months is not None and pred.stage_probabilities is not None


def test_bytes_path_and_array_give_the_same_answer(predictor, fullres_sample):
    a = predictor.predict(fullres_sample, male=True)
    b = predictor.predict(fullres_sample.read_bytes(), male=True)
    c = predictor.predict(a.original, male=True)
    assert a.bone_age_months == pytest.approx(b.bone_age_months) == pytest.approx(c.bone_age_months)


@pytest.mark.parametrize("spelling", ["F", "female", "girl", 0, False])
def test_sex_is_required_and_read_with_the_shared_vocabulary(predictor, fullres_sample, spelling):
    female = predictor.predict(fullres_sample, male=False)
    assert predictor.predict(fullres_sample, male=spelling).bone_age_months == pytest.approx(female.bone_age_months)
    assert predictor.predict(fullres_sample, male="M").bone_age_months != female.bone_age_months


@pytest.mark.parametrize("value", [None, "", "x"])
def test_missing_or_unknown_sex_is_refused(predictor, fullres_sample, value):
    with pytest.raises(SexError):
        predictor.predict(fullres_sample, male=value)


def test_tta_runs_and_stays_close(predictor, fullres_sample):
    plain = predictor.predict(fullres_sample, male=True, views=NO_TTA)
    tta = predictor.predict(fullres_sample, male=True, views=TTA_SCALES)
    assert plain.bone_age_months != tta.bone_age_months and abs(plain.bone_age_months - tta.bone_age_months) < 30
    with pytest.raises(ValueError, match="must include 1.0"):
        predictor.predict(fullres_sample, male=True, views=(0.94,))


def test_default_views_follow_the_manifest(quick_run, tmp_path, fullres_sample):
    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["views"]
    records = [({"tta": False}, NO_TTA), ({"tta": True}, TTA_SCALES), ({"views": [1.0, 0.94]}, (1.0, 0.94))]
    estimates = set()
    for record, views in records:  # the legacy flag of older manifests, and a view set
        (folder / "manifest.json").write_text(json.dumps({**manifest, **record}))
        loaded = Predictor.load(folder)
        assert loaded.views == views
        default = loaded.predict(fullres_sample, male=True)
        assert default.bone_age_months == pytest.approx(loaded.predict(fullres_sample, male=True,
                                                                       views=views).bone_age_months)
        estimates.add(round(default.bone_age_months, 6))
    assert len(estimates) == 3  # each view set gives its own estimate


@pytest.mark.parametrize("name", ["multihead.pt", "gate.npz"])
def test_a_changed_model_or_gate_file_is_refused(quick_run, tmp_path, name):
    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    with open(folder / name, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match=f"{name}: the file changed since the manifest"):
        Predictor.load(folder)


def test_missing_calibration_gives_no_intervals_and_says_why(quick_run, tmp_path, fullres_sample):
    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    calibrated = Predictor.load(folder)
    assert calibrated.calibration is not None and calibrated.predict(fullres_sample, male=True).interval is not None
    (folder / CALIBRATION_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"lists {CALIBRATION_FILE}, which is missing"):
        Predictor.load(folder)  # the manifest records it: a lost file is an error, not a silent change
    manifest = read_manifest(folder)
    write_manifest(folder, build_manifest(folder, manifest.members, manifest.views, manifest.evaluation))
    loaded = Predictor.load(folder)
    assert loaded.calibration is None and any(CALIBRATION_FILE in note for note in loaded.notes)
    assert loaded.predict(fullres_sample, male=True).interval is None


def test_calibration_of_other_weights_is_refused(quick_run, tmp_path, fullres_sample):
    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    calibration = load_calibration(folder)
    other = dataclasses.replace(calibration, members={name: "0" * 64 for name in calibration.members})
    other.save(folder)
    write_manifest(folder, build_manifest(folder, read_manifest(folder).members, read_manifest(folder).views))
    loaded = Predictor.load(folder)  # hashes fine, but the calibration belongs to other weights
    assert loaded.calibration is None and any("other weights" in note for note in loaded.notes)


def test_calibration_corrects_the_age_the_predictor_shows(quick_run, fullres_sample):
    loaded = Predictor.load(quick_run)
    corrected = loaded.predict(fullres_sample, male=True)
    loaded.calibration = None
    raw = loaded.predict(fullres_sample, male=True)
    calibration = load_calibration(quick_run)
    assert corrected.bone_age_months == pytest.approx(float(calibration.correct(raw.bone_age_months)), abs=1e-6)
    assert corrected.interval.low <= corrected.bone_age_months <= corrected.interval.high


def test_folder_without_manifest_loads_every_checkpoint_without_tta_or_intervals(quick_run, tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    (folder / "manifest.json").unlink()
    loaded = Predictor.load(folder)
    assert list(loaded.members) == ["multihead.pt"] and loaded.views == NO_TTA and loaded.calibration is None
    assert loaded.version == "unversioned" and loaded.notes


def test_ensemble_members_are_combined_by_the_shared_mean(quick_run, tmp_path, fullres_sample):
    single = Predictor.load(quick_run)
    single.calibration = None  # the pair below has no manifest, so no calibration: compare the raw ensembles
    folder = tmp_path / "pair"
    shutil.copytree(quick_run, folder)
    (folder / "manifest.json").unlink()
    shutil.copy(folder / "multihead.pt", folder / "copy.pt")
    pair = Predictor.load(folder)
    assert len(pair.members) == 2
    a, b = single.predict(fullres_sample, male=True, views=NO_TTA), pair.predict(fullres_sample, male=True, views=NO_TTA)
    assert a.bone_age_months == pytest.approx(b.bone_age_months, abs=1e-6)


@pytest.mark.parametrize("head", [AGE, STAGE])
def test_gradcam_is_aligned_to_the_input(predictor, fullres_sample, head):
    pred = predictor.predict(fullres_sample, male=False)
    exp = predictor.explain(pred.original, male=False, head=head, alpha=0.5)
    assert exp.heatmap.shape == pred.original.shape
    assert exp.overlay.shape == (*pred.original.shape, 3) and exp.overlay.dtype == np.uint8
    assert 0.0 <= exp.heatmap.min() and exp.heatmap.max() <= 1.0
    assert exp.is_blank == (exp.model_heatmap.max() <= 0)


@pytest.mark.slow
def test_gradcam_of_a_hand_crop_model_lies_in_the_crop_box(format1_models, fullres_dir):
    """A checkpoint whose spec crops to the hand: its heatmap is put back into the crop box, zeros outside."""
    gray = load_gray(fullres_dir / "1378.png")  # its hand fills only part of the film
    net, _ = load_model(format1_models / "regressor.pt")
    plain_exp = Predictor({"plain.pt": net}, net.mean.device).explain(gray, male=True)
    np.testing.assert_array_equal(plain_exp.heatmap, np.clip(resize_to(plain_exp.model_heatmap, gray.shape), 0, 1))
    cropped, _ = load_model(format1_models / "regressor.pt")
    cropped.spec = dataclasses.replace(cropped.spec, preprocess=dataclasses.replace(cropped.spec.preprocess,
                                                                                   hand_crop=True))
    predictor = Predictor({"cropped.pt": cropped}, cropped.mean.device)
    spec = cropped.spec.preprocess
    box = crop_box(gray, spec)
    assert box != FULL_BOX
    exp = predictor.explain(gray, male=True)
    assert exp.heatmap.shape == gray.shape and exp.model_heatmap.shape == (spec.image_size, spec.image_size)
    np.testing.assert_array_equal(exp.heatmap, np.clip(heatmap_to_original(exp.model_heatmap, gray.shape, box), 0, 1))
    top, left, bottom, right = box_pixels(box, gray.shape)
    outside = np.ones(gray.shape, bool)
    outside[top:bottom, left:right] = False
    assert not exp.heatmap[outside].any() and exp.heatmap[~outside].max() > 0
    pred = predictor.predict(gray, male=True)
    np.testing.assert_array_equal(to_uint8(pred.model_input), prepare(gray, spec))


def test_explain_unknown_head(predictor, hand_like):
    with pytest.raises(InputError, match="no model with a 'tea' head"):
        predictor.explain(hand_like, male=True, head="tea")


def test_explain_runs_the_network_forward_once(predictor, hand_like):
    """Grad-CAM's target reads the output of the CAM's own pass: no forward pass before it (issue 30)."""
    net = predictor.member_for(AGE)
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        predictor.explain(hand_like, male=True)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_stage_gradcam_explains_the_given_stage(predictor, fullres_sample):
    pred = predictor.predict(fullres_sample, male=False)
    other = (pred.stage + 1) % predictor.scheme.n_classes
    assert predictor.explain(pred.original, False, STAGE, class_index=other).class_index == other
    assert predictor.explain(pred.original, False, AGE).class_index is None


def test_overlay_alpha_changes_the_picture(hand_like):
    heat = np.linspace(0, 1, hand_like.size, dtype=np.float32).reshape(hand_like.shape)
    assert not np.array_equal(overlay_heatmap(hand_like, heat, 0.1), overlay_heatmap(hand_like, heat, 0.9))
    cold = np.zeros_like(hand_like)
    cold[:10, :10] = 1.0  # one hot corner
    blended = overlay_heatmap(hand_like, cold, 0.4).astype(int)
    plain = overlay_heatmap(hand_like, np.zeros_like(hand_like), 0.4).astype(int)
    assert np.abs(blended[20:, 20:] - plain[20:, 20:]).max() == 0, "a cold region must show the film untinted"
    assert (plain[..., 0] == plain[..., 2]).all(), "no heat, no colour (no dark-blue cast over the film)"
    assert np.abs(blended[:10, :10] - plain[:10, :10]).max() > 20, "the hot corner is coloured"
    with pytest.raises(ValueError):
        overlay_heatmap(hand_like, heat, 1.5)


def test_bad_inputs_give_clear_errors(predictor):
    with pytest.raises(ImageLoadError, match="not an image|not a readable image|text"):
        predictor.predict(b"definitely not an image", male=True)
    blank = io.BytesIO()
    Image.new("L", (300, 400), 128).save(blank, format="PNG")
    with pytest.raises(ImageLoadError, match="blank"):
        predictor.predict(blank.getvalue(), male=True, name="blank.png")


def test_missing_artifacts_are_reported(tmp_path):
    with pytest.raises(MissingArtifactError, match="run train.py"):
        Predictor.load(tmp_path)


def test_stage_derived_from_age_without_a_stage_head(format1_models, tmp_path, fullres_sample):
    folder = tmp_path / "age-only"
    folder.mkdir()
    shutil.copy(format1_models / "regressor.pt", folder)
    pred = Predictor.load(folder).predict(fullres_sample, male=False)
    assert pred.stage_source == STAGE_FROM_AGE and pred.stage_probabilities is None
    assert pred.stage == pred.stage_from_age


def test_the_gate_refuses_a_page_of_text(committed_predictor):
    from PIL import ImageDraw

    page = Image.new("L", (1200, 1600), 250)
    draw = ImageDraw.Draw(page)
    for row in range(60):
        draw.text((40, 20 + 25 * row), "Bone age assessment report - lorem ipsum dolor sit amet " * 2, fill=10)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    with pytest.raises(NotARadiographError, match="does not look like a hand radiograph"):
        committed_predictor.predict(buffer.getvalue(), male=True, name="page.png")


def test_an_upside_down_hand_is_turned_back_or_flagged(committed_predictor, fullres_dir):
    loaded = committed_predictor
    for stem in ("1377", "1380", "1385"):
        upright = loaded.predict(fullres_dir / f"{stem}.png", male=False)
        flipped = loaded.predict(np.ascontiguousarray(upright.original[::-1, ::-1]), male=False)
        assert any("rotated" in w for w in flipped.warnings), stem  # never silently scored upside down
        if flipped.gate.apply_turn or any("was turned" in w for w in flipped.warnings):
            assert flipped.bone_age_months == pytest.approx(upright.bone_age_months, abs=3.0)


@pytest.mark.slow
def test_a_sideways_hand_is_scored_turned_not_refused(committed_predictor, fullres_dir):
    """The gate's texture level refuses some sideways films as given; the suggested turn brings them back."""
    loaded = committed_predictor
    for stem in ("1377", "1380", "1385"):
        upright = loaded.predict(fullres_dir / f"{stem}.png", male=False)
        for k in (1, 3):
            sideways = loaded.predict(np.ascontiguousarray(np.rot90(upright.original, k)), male=False)
            assert any("rotated" in w for w in sideways.warnings), (stem, k)
            if any("was turned" in w for w in sideways.warnings):
                assert sideways.bone_age_months == pytest.approx(upright.bone_age_months, abs=3.0), (stem, k)


@pytest.mark.slow
def test_a_turn_is_tried_on_the_gate_member_alone(committed_predictor, fullres_dir, monkeypatch):
    """The ensemble runs again only on a film scored corrected; a refusal costs one ensemble pass; the laterality test
    costs one gate-member pass per scored film."""
    loaded = committed_predictor
    calls = {"outputs": 0, "gate_features": 0}
    for method in calls:
        def counted(*args, _method=getattr(loaded, method), _name=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)
        monkeypatch.setattr(loaded, method, counted)
    tried = 0
    for path in sorted(fullres_dir.glob("*.png"))[:8]:
        gray = load_gray(path)
        for k in (1, 3):
            calls.update(outputs=0, gate_features=0)
            try:
                pred = loaded.predict(np.ascontiguousarray(np.rot90(gray, k)), male=False)
            except NotARadiographError:
                assert calls["outputs"] == 1 and calls["gate_features"] == 1, (path.name, k)  # tried, and failed
                tried += 1
                continue
            turned = any("was turned" in w for w in pred.warnings)
            searched = any("of the three turns" in w for w in pred.warnings)  # sure it is turned, not which way
            flagged = any("may be rotated" in w for w in pred.warnings)  # its three turns tried, none surely upright
            assert (pred.turn != 0) == turned and pred.to_dict()["turned_degrees"] == 90 * pred.turn
            assert pred.mirrored == any("read as a right hand" in w for w in pred.warnings) == pred.to_dict()["mirrored"]
            # `original` is the image as scored: the given one corrected
            np.testing.assert_array_equal(pred.original, Correction(pred.inverted, pred.turn, pred.mirrored).apply(
                np.rot90(gray, k)))
            corrected = turned or pred.mirrored or pred.inverted
            assert calls["outputs"] == (2 if corrected else 1), (path.name, k)
            # the turn: never tried when scored as given; the suggested turn, or each of the three when searched or
            # flagged; then the laterality test's mirror image (and the image inverted back, when it read as inverted)
            inversion_tried = pred.inverted or any(w.startswith(INVERT_UNSURE) for w in pred.warnings)
            expected = (3 if searched or flagged else int(turned)) + 1 + inversion_tried
            assert calls["gate_features"] == expected, (path.name, k)
            tried += calls["gate_features"] - 1
    assert tried >= 1  # some sideways film was tried turned


def test_mirrored_and_inverted_films_are_read_corrected(committed_predictor, fullres_dir):
    """A right hand (a mirrored film) is mirrored back and an inverted grey scale inverted back, both said in the
    warnings and the JSON, and read within a few months of the film as given; the films as given are not corrected."""
    loaded = committed_predictor
    for stem in ("1377", "1380", "1385"):
        gray = load_gray(fullres_dir / f"{stem}.png")
        clean = loaded.predict(gray, male=False)
        assert not (clean.mirrored or clean.inverted or clean.turn), (stem, clean.warnings)
        right = loaded.predict(np.ascontiguousarray(gray[:, ::-1]), male=False)
        assert right.mirrored and right.to_dict()["mirrored"] and "read as a right hand" in right.warnings[0], stem
        inverted = loaded.predict(1.0 - gray, male=False)
        assert inverted.inverted and inverted.to_dict()["grey_scale_inverted"], stem
        assert "grey scale was inverted" in inverted.warnings[0], stem
        for pred in (right, inverted):
            assert pred.bone_age_months == pytest.approx(clean.bone_age_months, abs=3.0), (stem, pred.warnings)


@pytest.mark.parametrize("months,text", [(0, "0 y 0 m"), (124.6, "10 y 5 m"), (239.7, "20 y 0 m")])
def test_years_months(months, text):
    assert years_months(months) == text


def test_calibration_is_applied_only_with_the_views_it_was_fitted_with(quick_run, fullres_sample):
    loaded = Predictor.load(quick_run)
    fitted = loaded.calibration.views
    assert loaded.calibration_for(fitted) is loaded.calibration
    assert loaded.predict(fullres_sample, male=True, views=fitted).interval is not None
    for other in {NO_TTA, (1.0, 0.94), TTA_SCALES} - {fitted}:
        assert loaded.calibration_for(other) is None
        assert loaded.predict(fullres_sample, male=True, views=other).interval is None  # as evaluate: no correction


@pytest.mark.slow
def test_a_grainy_film_is_judged_as_given_and_read_smoothed(committed_predictor, data_299, monkeypatch):
    """Noise of 3 grey levels: the gate reads the film as given (a smoothed photograph looked like a film), its
    radiograph model lets it through with a warning; the members read it smoothed, and the report says so."""
    from boneage_core.acquisition import as_upload, noise

    film = load_gray(sorted((data_299 / "boneage-training-dataset").glob("*.webp"))[5])
    noisy = as_upload(noise(film, 3))
    seen: list[np.ndarray] = []
    gate_features = committed_predictor.gate_features
    monkeypatch.setattr(committed_predictor, "gate_features", lambda gray: seen.append(gray) or gate_features(gray))
    pred = committed_predictor.predict(noisy, male=True)
    assert seen and seen[0] is noisy
    assert any("grainy" in w for w in pred.warnings) and any("unusual image" in w for w in pred.warnings)
    assert pred.to_dict()["input_gate_radiograph_probability"] >= RADIOGRAPH_ABOVE and pred.gate.vouched
    spec = next(iter(committed_predictor.members.values())).spec.preprocess
    assert np.array_equal(np.round(pred.model_input * 255), committed_predictor.inputs(noisy)[spec][0])
    assert not np.array_equal(committed_predictor.inputs(noisy)[spec], committed_predictor.inputs(noisy, False)[spec])
    clean = committed_predictor.predict(film, male=True)
    assert not any("grainy" in w for w in clean.warnings)
    assert abs(pred.bone_age_months - clean.bone_age_months) < 12.0


def test_the_report_warns_when_the_networks_disagree():
    """Above MEMBER_SPREAD_ABOVE months between the members' estimates the report says so; at or below, nothing."""
    from boneage_core.predictor import MEMBER_SPREAD_ABOVE, spread_warnings

    assert spread_warnings(MEMBER_SPREAD_ABOVE) == []
    (note,) = spread_warnings(MEMBER_SPREAD_ABOVE + 20.4)
    assert "networks disagree" in note and "50 months apart" in note


@pytest.mark.slow
def test_a_compressed_film_the_networks_disagree_on_is_flagged(committed_predictor, data_299):
    """Validation film 4298 (42 months) saved as JPEG q30 was read 56 months too old with no warning: its members lie
    about 50 months apart, and the report says so. The film as given (members within about 10 months) is not flagged."""
    from boneage_core.acquisition import SHIFTS

    gray = load_gray(data_299 / "boneage-training-dataset" / "4298.webp")
    compressed = committed_predictor.predict(SHIFTS["JPEG q30"](gray), male=True)
    assert any("networks disagree" in w for w in compressed.warnings)
    assert not any("networks disagree" in w for w in committed_predictor.predict(gray, male=True).warnings)


def test_a_strongly_compressed_jpeg_is_read_with_a_warning(committed_predictor, fullres_dir):
    """The file's own JPEG quality is read once with its pixels: quality 30 is warned, 90 and arrays are not, and the
    estimate is the same as from the decoded pixels (the warning adds nothing to the reading)."""
    from boneage_core.acquisition import jpeg

    gray = load_gray(fullres_dir / "1377.png")
    low = committed_predictor.predict(jpeg(gray, 30), male=False)
    assert any("strongly compressed JPEG (quality about 30" in w for w in low.warnings), low.warnings
    high = committed_predictor.predict(io.BytesIO(jpeg(gray, 90)), male=False)
    assert not any("compressed JPEG" in w for w in high.warnings), high.warnings
    same = committed_predictor.predict(load_gray(jpeg(gray, 30)), male=False)
    assert not any("compressed JPEG" in w for w in same.warnings)
    assert same.bone_age_months == low.bone_age_months
