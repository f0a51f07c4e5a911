"""evaluate: scores the manifest's ensemble, each member and the baseline; agrees with Predictor image by image."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage_core import evaluate
from boneage_core.data import attach_paths, read_labels
from boneage_core.gate import NotARadiographError
from boneage_core.imaging import load_gray
from boneage_core.heads import AGE, BASELINE, CNN, STAGE, UNCORRECTED, age_stage_column, get_head, system_column
from boneage_core.views import NO_TTA, TTA_SCALES
from boneage_core.manifest import read_manifest
from boneage_core.metrics import regression_metrics
from boneage_core.predictor import Predictor
from boneage_core.stages import DEFAULT_SCHEME

CNN_AGE, CNN_STAGE = system_column(CNN, AGE), system_column(CNN, STAGE)


def _official_folder(data_299, tmp_path, n=24):
    labels = pd.read_csv(data_299 / "boneage-training-dataset.csv").sample(n=n, random_state=1)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in labels["id"]:
        shutil.copy(data_299 / "boneage-training-dataset" / f"{i}.webp", img_dir / f"{i}.webp")
    rows = ["Case ID,Sex,Ground truth bone age (months)"]
    rows += [f"{i},{'M' if m else 'F'},{a}" for i, m, a in zip(labels["id"], labels["male"], labels["boneage"])]
    csv = tmp_path / "official.csv"
    csv.write_bytes(("\ufeff" + "\r".join(rows) + "\r").encode("utf-8"))
    return img_dir, csv, labels


def test_cli_on_official_format(quick_run, data_299, tmp_path, capsys):
    img_dir, csv, labels = _official_folder(data_299, tmp_path)
    out_json, out_csv = tmp_path / "m.json", tmp_path / "p.csv"
    code = evaluate.main(["--artifacts", str(quick_run), "--images", str(img_dir), "--labels", str(csv),
                          "--out", str(out_json), "--predictions", str(out_csv), "--bootstrap", "20"])
    assert code == 0
    assert system_column(BASELINE, AGE) in capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    expected = {CNN_AGE, CNN_STAGE, age_stage_column(CNN), system_column(BASELINE, AGE), system_column(BASELINE, STAGE)}
    assert expected <= set(metrics)
    assert {metrics[c]["head"] for c in expected} == {AGE, STAGE}
    assert metrics[CNN_AGE]["n"] == len(labels)
    preds = pd.read_csv(out_csv, dtype={"id": str})
    truth = labels.set_index(labels["id"].astype(str))["boneage"]
    recomputed = regression_metrics(truth[preds["id"]].to_numpy(), preds[CNN_AGE].to_numpy())
    assert np.isclose(recomputed["mae"], metrics[CNN_AGE]["mae"])


def test_cli_missing_ids_is_a_clear_error(quick_run, data_299, tmp_path, caplog):
    img_dir, csv, labels = _official_folder(data_299, tmp_path, n=6)
    (img_dir / f"{labels['id'].iloc[0]}.webp").unlink()
    code = evaluate.main(["--artifacts", str(quick_run), "--images", str(img_dir), "--labels", str(csv)])
    assert code == 2
    assert "1 of 6 id(s) have no image" in caplog.text


def test_score_predictions_scores_only_present_columns():
    frame = pd.DataFrame({"boneage": [10.0, 100.0, 200.0, 150.0], "male": [True, False, True, False],
                          CNN_AGE: [12.0, 90.0, 210.0, 150.0]})
    metrics = evaluate.score_predictions(frame, {CNN_AGE: AGE, CNN_STAGE: STAGE}, n_boot=10)
    assert list(metrics) == [CNN_AGE] and metrics[CNN_AGE]["head"] == AGE
    assert np.isclose(metrics[CNN_AGE]["mae"], (2 + 10 + 10 + 0) / 4)


@pytest.mark.parametrize("views", [NO_TTA, (1.0, 0.94), TTA_SCALES])
def test_evaluate_and_predictor_agree_image_by_image(quick_run, fullres_dir, views):
    """The one inference path: evaluate's batched columns equal Predictor.predict on each file. The CNN columns score
    each film as filmed, so the Predictor runs without its gate here (the quick run's gate, fitted on a few hundred
    films, corrects films at random; the gate columns against the Predictor: tests/test_ensemble.py)."""
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv"), fullres_dir).head(6)
    frame, columns, failures = evaluate.predict_frame(quick_run, labels, views=views)
    assert not failures and {CNN_AGE, CNN_STAGE} <= set(columns)
    predictor = Predictor.load(quick_run)
    predictor.gate = None
    probability_columns = [f"{CNN_STAGE}_p{k}" for k in range(DEFAULT_SCHEME.n_classes)]
    for _, row in frame.iterrows():
        pred = predictor.predict(row["path"], male=bool(row["male"]), views=views)
        assert pred.bone_age_months == pytest.approx(row[CNN_AGE], abs=0.01)
        assert pred.stage == int(row[CNN_STAGE])
        stored = row[probability_columns].to_numpy(dtype=float)
        assert stored.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(list(pred.stage_probabilities.values()), stored, atol=1e-4)


def test_per_view_columns_average_to_the_ensemble_and_view_0_is_the_plain_image(quick_run, fullres_dir):
    """Each member's columns on each test-time view (for view ablations): written, not scored, only with 2+ views."""
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv"), fullres_dir).head(3)
    frame, columns, _ = evaluate.predict_frame(quick_run, labels, views=TTA_SCALES, per_view=True)
    member = evaluate.member_prefix(read_manifest(quick_run).members[0])
    prefixes = [evaluate.view_prefix(member, v) for v in TTA_SCALES]
    assert not any(p in c for c in columns for p in prefixes)  # not among the scored columns
    raw = frame[system_column(UNCORRECTED, AGE) if system_column(UNCORRECTED, AGE) in frame else CNN_AGE]
    views = np.stack([get_head(AGE).from_columns(frame, p).to_numpy() for p in prefixes])
    np.testing.assert_allclose(views.mean(axis=0), raw, atol=1e-6)
    assert np.ptp(views, axis=0).max() > 0  # the views differ
    probs = np.stack([get_head(STAGE).probabilities(frame, p, DEFAULT_SCHEME.n_classes) for p in prefixes])
    np.testing.assert_allclose(probs.mean(axis=0), get_head(STAGE).probabilities(frame, CNN, DEFAULT_SCHEME.n_classes),
                               atol=1e-6)
    plain, plain_columns, _ = evaluate.predict_frame(quick_run, labels, views=NO_TTA, per_view=True)
    plain_raw = plain[system_column(UNCORRECTED, AGE) if system_column(UNCORRECTED, AGE) in plain else CNN_AGE]
    np.testing.assert_allclose(views[0], plain_raw, atol=1e-4)
    assert not [c for c in plain if c.startswith(evaluate.view_prefix(member, 1.0))]  # one view: nothing to ablate


def test_members_are_scored_one_by_one_when_a_head_has_several(quick_run, tmp_path, fullres_dir):
    folder = tmp_path / "two"
    shutil.copytree(quick_run, folder)
    (folder / "manifest.json").unlink()
    shutil.copy(folder / "multihead.pt", folder / "second.pt")
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv"), fullres_dir).head(3)
    frame, columns, _ = evaluate.predict_frame(folder, labels, members=["multihead.pt", "second.pt"])
    for member in ("multihead", "second"):
        assert columns[system_column(member, AGE)] == AGE
        np.testing.assert_allclose(frame[system_column(member, AGE)], frame[CNN_AGE], atol=1e-6)  # identical copies


def test_many_members_on_every_view_are_joined_in_one_step(quick_run, tmp_path, fullres_dir):
    """Five members on three views add over a hundred columns: built as one frame and joined once, not inserted
    column by column (pandas' PerformanceWarning, an error under pytest.ini, fired here when they were)."""
    folder = tmp_path / "five"
    shutil.copytree(quick_run, folder)
    (folder / "manifest.json").unlink()
    members = ["multihead.pt"] + [f"copy{i}.pt" for i in range(4)]
    for name in members[1:]:
        shutil.copy(folder / "multihead.pt", folder / name)
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv"), fullres_dir).head(2)
    frame, _, _ = evaluate.predict_frame(folder, labels, views=TTA_SCALES, members=members, per_view=True)
    view_columns = [c for c in frame if ".view" in c]
    assert len(view_columns) > 100 and len(frame) == 2
    for member in members:
        for v in TTA_SCALES:
            column = system_column(evaluate.view_prefix(evaluate.member_prefix(member), v), AGE)
            np.testing.assert_allclose(frame[column], frame[system_column(evaluate.view_prefix("multihead", v), AGE)])


@pytest.mark.slow
def test_the_gate_columns_follow_the_rule_the_app_applies(committed_predictor, fullres_dir, tmp_path):
    """gate_refused / gate_turn / gate_turn_flagged say what Predictor does with the same file (InputGate.decide)."""
    labels = read_labels(fullres_dir / "boneage-samples.csv").head(3)
    rows = []
    for id_, age, male in zip(labels["id"], labels["boneage"], labels["male"]):
        gray = load_gray(fullres_dir / f"{id_}.png")
        for k in (0, 1, 2, 3):
            Image.fromarray((np.rot90(gray, k) * 255).round().astype(np.uint8)).save(tmp_path / f"{id_}_{k}.png")
            rows.append({"id": f"{id_}_{k}", "boneage": age, "male": male})
    frame = attach_paths(pd.DataFrame(rows), tmp_path)
    predictor = committed_predictor
    gate = evaluate.gate_columns(predictor, frame, None)
    assert gate.index.equals(frame.index)
    out = pd.concat([frame, gate], axis=1)
    assert out["gate_turn"].astype(int).any()  # the turned copies exercise the rule
    for _, row in out.iterrows():
        try:
            pred = predictor.predict(row["path"], male=bool(row["male"]))
        except NotARadiographError:
            assert row["gate_refused"], row["id"]
            continue
        assert not row["gate_refused"], row["id"]
        assert (int(row["gate_turn"]) != 0) == any("was turned" in w for w in pred.warnings), row["id"]
        assert bool(row["gate_turn_flagged"]) == any("may be rotated" in w for w in pred.warnings), row["id"]


def test_the_gate_reads_the_features_of_the_ensemble_pass(committed_artifacts, committed_predictor, fullres_dir,
                                                           monkeypatch):
    """predict_frame takes the gate member's features from its CNN pass; the decisions equal a separate gate pass."""
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv").head(4), fullres_dir)
    predictor = committed_predictor
    alone = evaluate.gate_columns(predictor, labels, None)

    def second_pass(*args, **kwargs):
        raise AssertionError("the gate member's images were run a second time")

    monkeypatch.setattr(evaluate, "member_features", second_pass)
    frame, _, _ = evaluate.predict_frame(committed_artifacts, labels, ensemble=predictor)
    np.testing.assert_allclose(frame["gate_score"].astype(float), alone["gate_score"].astype(float), rtol=1e-4)
    for column in ("gate_refused", "gate_turn", "gate_turn_flagged", "gate_mirrored"):
        assert frame[column].tolist() == alone[column].tolist(), column


@pytest.mark.slow
def test_the_gate_columns_judge_a_grainy_film_as_given(committed_predictor, data_299, tmp_path):
    """The members read a grainy film smoothed; the gate's columns, like the app, judge the film as given."""
    from boneage_core.acquisition import noise
    from boneage_core.preprocess import is_grainy

    film = load_gray(sorted((data_299 / "boneage-training-dataset").glob("*.webp"))[5])
    for name, gray in (("clean", film), ("noisy", noise(film, 3))):
        Image.fromarray((gray * 255).round().astype(np.uint8)).save(tmp_path / f"{name}.png")
    frame = attach_paths(pd.DataFrame({"id": ["clean", "noisy"], "boneage": [100.0, 100.0], "male": [1, 1]}), tmp_path)
    assert [is_grainy(load_gray(p)) for p in frame["path"]] == [False, True]
    gate = evaluate.gate_columns(committed_predictor, frame, None)
    for i, path in enumerate(frame["path"]):
        decision = committed_predictor.decide(load_gray(path))
        assert gate["gate_score"].iloc[i] == pytest.approx(decision.as_given.score, rel=1e-4)
        assert not gate["gate_refused"].iloc[i] and not decision.refused


def test_the_gate_columns_read_each_file_once(committed_predictor, fullres_dir, monkeypatch):
    """The gate's columns read each film once: its grain, its decision and the corrections it tries (the laterality
    test reads every scored film's mirror image) come from the same read."""
    labels = attach_paths(read_labels(fullres_dir / "boneage-samples.csv").head(3), fullres_dir)
    reads: list[str] = []

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return load_gray(path, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load_gray", counted)
    gate = evaluate.gate_columns(committed_predictor, labels, None)
    assert not gate["gate_refused"].any()
    assert sorted(reads) == sorted(map(str, labels["path"]))
