"""Ensemble: loaded once (each member file read and hashed once); Predictor, evaluate and the calibrate stage share its
outputs, and they give the numbers the committed holdout predictions were made with."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from boneage_core import checkpoint, ensemble as ensemble_module, manifest as manifest_module
from boneage_core.data import attach_paths, read_labels
from boneage_core.ensemble import Ensemble
from boneage_core.evaluate import cnn_columns, gate_columns
from boneage_core.heads import AGE, CNN, STAGE, UNCORRECTED, system_column
from boneage_core.imaging import load_gray
from boneage_core.manifest import build_manifest, write_manifest
from boneage_core.preprocess import FULL_BOX, crop_box, prepare
from boneage_core.runtime import RUNTIME_ENV, TORCH


@pytest.fixture(scope="module")
def holdout(committed_artifacts, data_299) -> pd.DataFrame:
    """Five 299 px test-split films with their rows of the committed predictions.csv (made by the evaluate stage)."""
    committed = pd.read_csv(committed_artifacts / "predictions.csv", dtype={"id": str}).head(5)
    labels = read_labels(data_299 / "boneage-training-dataset.csv")
    frame = labels[labels["id"].astype(str).isin(committed["id"])].reset_index(drop=True)
    assert len(frame) == 5
    return attach_paths(frame, data_299 / "boneage-training-dataset").merge(
        committed.drop(columns=["boneage", "male"]), on="id", suffixes=("", "_committed"))


def test_evaluate_columns_give_the_committed_holdout_predictions(committed_predictor, holdout):
    """cnn_columns through the Ensemble reproduce predictions.csv (the previous evaluate wiring) on real films."""
    frame = holdout[["id", "boneage", "male", "path"]]
    table = cnn_columns(committed_predictor, frame, None).table
    columns = [system_column(CNN, AGE), system_column(UNCORRECTED, AGE), "cnn_age_low", "cnn_age_high",
               *(system_column(m.removesuffix(".pt"), AGE) for m in committed_predictor.members)]
    for column in columns:  # the committed table was written by another run (batches, machine): 1e-3 months
        np.testing.assert_allclose(table[column].to_numpy(float), holdout[column].to_numpy(float), atol=1e-3,
                                   err_msg=column)
    assert table[system_column(CNN, STAGE)].tolist() == holdout[system_column(CNN, STAGE)].tolist()


def test_evaluate_and_predictor_agree_exactly_on_the_same_films(committed_predictor, holdout):
    """One film at a time (one batch, as the Predictor runs it), evaluate's columns equal the Predictor's answer: the
    gate's corrections on every film, and the estimates on the films the gate leaves as given (evaluate's CNN columns
    score each film as filmed, the Predictor a corrected one corrected)."""
    compared = 0
    for _, row in holdout.iterrows():
        frame = holdout.loc[[row.name], ["id", "boneage", "male", "path"]]
        new = cnn_columns(committed_predictor, frame, None)
        gate = gate_columns(committed_predictor, frame, None, new.gate_features)
        pred = committed_predictor.predict(row["path"], male=bool(row["male"]))
        assert (pred.turn, pred.mirrored, pred.inverted) == (gate["gate_turn"].iloc[0], gate["gate_mirrored"].iloc[0],
                                                            gate["gate_inverted"].iloc[0])
        if pred.turn or pred.mirrored or pred.inverted:
            continue
        compared += 1
        assert gate["gate_score"].iloc[0] == pred.gate.score
        assert new.table[system_column(CNN, AGE)].iloc[0] == pred.bone_age_months
        assert (new.table["cnn_age_low"].iloc[0], new.table["cnn_age_high"].iloc[0]) == (pred.interval.low,
                                                                                       pred.interval.high)
        assert new.table[system_column(CNN, STAGE)].iloc[0] == pred.stage
        assert [new.table[f"cnn_stage_p{k}"].iloc[0] for k in range(len(pred.stage_probabilities))] == list(
            pred.stage_probabilities.values())
    assert compared >= 3


def test_outputs_are_the_members_views_combined_then_calibrated(committed_predictor, fullres_sample):
    """EnsembleOutputs: raw is the combination of every member's views; combined is raw calibrated, with bounds."""
    from boneage_core.inference import ensemble_outputs

    out = committed_predictor.outputs(committed_predictor.inputs(load_gray(fullres_sample)), [False])
    assert list(out.members) == list(committed_predictor.members)
    assert all(len(views) == len(committed_predictor.views) for o in out.members.values() for views in o.values())
    for head, values in ensemble_outputs(list(out.members.values())).items():
        np.testing.assert_array_equal(out.raw[head], values)
    calibration = committed_predictor.calibration
    np.testing.assert_array_equal(out.combined[AGE], calibration.correct(out.raw[AGE]))
    np.testing.assert_array_equal(out.bounds[0], calibration.bounds(out.combined[AGE])[0])
    assert out.gate_features.shape[0] == 1


def test_the_hand_is_found_once_per_image_for_all_crop_members(committed_predictor, fullres_sample, monkeypatch):
    """Hand-crop members share one crop box (found once), the others one box without the padding; members with the
    same spec share one preparation; each member's input is still prepare(gray, its spec)."""
    loaded = committed_predictor
    crop_specs = [net.spec.preprocess for net in loaded.members.values() if net.spec.preprocess.hand_crop]
    assert crop_specs, "the served ensemble has a hand-crop member"
    gray = load_gray(fullres_sample)
    boxes, seen = [], []
    monkeypatch.setattr(ensemble_module, "crop_box", lambda g, spec: boxes.append(crop_box(g, spec)) or boxes[-1])
    monkeypatch.setattr(ensemble_module, "prepare", lambda g, spec, box=None, grainy=None:
                        seen.append((spec, prepare(g, spec, box, grainy))) or seen[-1][1])
    fed = []
    real_outputs = ensemble_module.member_outputs
    monkeypatch.setattr(ensemble_module, "member_outputs",
                        lambda net, images, *a, **k: fed.append(images[0].numpy().copy()) or real_outputs(net, images, *a, **k))
    loaded.outputs(loaded.inputs(gray), [True])
    specs = [net.spec.preprocess for net in loaded.members.values()]
    assert len(boxes) == len({spec.hand_crop for spec in specs}) and any(box != FULL_BOX for box in boxes)
    assert [spec for spec, _ in seen] == list(dict.fromkeys(specs)), "one preparation per distinct spec"
    for net, image in zip(loaded.members.values(), fed, strict=True):
        np.testing.assert_array_equal(image, prepare(gray, net.spec.preprocess))


@pytest.fixture
def pair_folder(format1_models, tmp_path):
    """A folder of two members (the format-1 pair) with a manifest."""
    folder = tmp_path / "pair"
    shutil.copytree(format1_models, folder)
    write_manifest(folder, build_manifest(folder))
    return folder


def test_each_member_file_is_read_and_hashed_once(pair_folder, monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, TORCH)
    reads, hashed = [], []
    real_read, real_hash = checkpoint.read_hashed, manifest_module.file_sha256
    monkeypatch.setattr(ensemble_module, "read_hashed", lambda path: reads.append(path.name) or real_read(path))
    monkeypatch.setattr(manifest_module, "file_sha256", lambda path: hashed.append(path.name) or real_hash(path))
    loaded = Ensemble.load(pair_folder)
    assert sorted(reads) == ["classifier.pt", "regressor.pt"]
    assert not {"classifier.pt", "regressor.pt"} & set(hashed), hashed  # the manifest check reuses the read's hash
    assert loaded.member_hashes() == {name: real_hash(pair_folder / name) for name in reads}


def test_a_changed_member_is_refused_before_it_is_loaded(pair_folder, monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, TORCH)
    with open(pair_folder / "regressor.pt", "ab") as handle:
        handle.write(b"\0")
    monkeypatch.setattr(ensemble_module, "load_member", lambda *a, **k: pytest.fail("a changed file was loaded"))
    with pytest.raises(manifest_module.ArtifactError, match="regressor.pt: the file changed since the manifest"):
        Ensemble.load(pair_folder)


def test_named_members_without_calibration_give_the_raw_combination(pair_folder, monkeypatch, fullres_sample):
    """What the calibrate stage loads: the named members, no calibration applied (it fits one), no gate."""
    monkeypatch.setenv(RUNTIME_ENV, TORCH)
    loaded = Ensemble.load(pair_folder, members=["regressor.pt"], views=(1.0, 0.94), calibrated=False, gated=False)
    assert list(loaded.members) == ["regressor.pt"] and loaded.views == (1.0, 0.94)
    assert loaded.calibration is None and loaded.gate is None
    out = loaded.outputs(loaded.inputs(load_gray(fullres_sample)), [True])
    assert out.bounds is None and out.gate_features is None
    np.testing.assert_array_equal(out.combined[AGE], out.raw[AGE])


def test_decisions_read_each_film_once_however_many_corrections_are_tried(committed_predictor, fullres_dir):
    """A sideways or upside-down film has several corrections tried (turns, then the mirror image): its file is read
    once; `decide` on one image is the same rule."""
    grays = [np.ascontiguousarray(np.rot90(load_gray(p), k)) for p, k in
             zip(sorted(fullres_dir.glob("*.png"))[:3], (1, 2, 3))]
    features = np.concatenate([committed_predictor.gate_features(g) for g in grays])
    reads: list[int] = []
    decisions = committed_predictor.decisions(features, lambda i: reads.append(i) or grays[i])
    assert reads and len(reads) == len(set(reads))  # at most once per film, though each had several tries
    for gray, decision in zip(grays, decisions):
        again = committed_predictor.decide(gray)
        assert (again.correction, again.refused) == (decision.correction, decision.refused)


@pytest.fixture
def gate_apart_folder(quick_run, tmp_path):
    """The quick run with its gate refitted, in effect, on a network that is not a member: `gatenet.pt`, the member's
    weights moved a little (other features, another hash), the gate's record pointing at it."""
    from boneage_core.gate import GATE_FILE, InputGate
    from boneage_core.models import load_model, save_model

    folder = tmp_path / "artifacts"
    shutil.copytree(quick_run, folder)
    net, meta = load_model(folder / "multihead.pt")
    with torch.no_grad():
        next(net.backbone.parameters()).mul_(1.5)
    sha256 = save_model(folder / "gatenet.pt", net, meta["config"], {"init_from": "multihead.pt"})
    gate = InputGate.load(folder / GATE_FILE)
    gate.member, gate.member_sha256 = "gatenet.pt", sha256
    gate.save(folder / GATE_FILE)
    return folder


def test_a_gate_fitted_on_a_network_outside_the_ensemble_reads_that_network(gate_apart_folder, fullres_sample):
    from boneage_core.inference import member_features

    loaded = Ensemble.load(gate_apart_folder, members=["multihead.pt"])
    assert loaded.gate is not None and loaded.gate_apart and loaded.gate_name == "gatenet.pt"
    assert list(loaded.members) == ["multihead.pt"]  # not in the combined estimate
    gray = load_gray(fullres_sample)
    images = loaded.inputs(gray)
    out = loaded.outputs(images, [True])
    spec = loaded.gate_net.spec.preprocess
    expected = member_features(loaded.gate_net, images[spec], loaded.device)
    np.testing.assert_allclose(out.gate_features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.gate_features(gray), expected, rtol=1e-5, atol=1e-6)
    member = member_features(loaded.members["multihead.pt"], images[spec], loaded.device)
    assert not np.allclose(member, expected, atol=1e-3)  # the member's own features are not what the gate reads


def test_a_changed_or_missing_gate_network_leaves_no_gate_and_says_why(gate_apart_folder):
    with open(gate_apart_folder / "gatenet.pt", "ab") as f:
        f.write(b"\0")
    changed = Ensemble.load(gate_apart_folder, members=["multihead.pt"])
    assert changed.gate is None and changed.gate_name == "multihead.pt"
    assert any("fitted on gatenet.pt" in note and "re-run `train.py --stages gate`" in note for note in changed.notes)
    (gate_apart_folder / "gatenet.pt").unlink()
    missing = Ensemble.load(gate_apart_folder, members=["multihead.pt"])
    assert missing.gate is None and any("gatenet.pt, which is not in" in note for note in missing.notes)
