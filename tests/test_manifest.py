"""manifest: which model files produced which evaluation, and refusing files that no longer belong together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from boneage_core.checkpoint import file_sha256, read_meta, save_checkpoint
from boneage_core.errors import ArtifactError
from boneage_core.heads import AGE, STAGE
from boneage_core.manifest import (EVALUATED_FILES, MANIFEST_FORMAT, Manifest, build_manifest, evaluated_path,
                                   evaluation_record, fitted_table_path, manifest_version, model_files, read_manifest, stale_reason,
                                   verify_models, write_manifest)
from boneage_core.models import ModelSpec
from boneage_core.preprocess import PreprocessSpec
from boneage_core.views import NO_TTA, TTA_SCALES

MANIFEST, METRICS, PREDICTIONS = "manifest.json", "metrics.json", "predictions.csv"


def _save_tiny(path: Path, heads: tuple[str, ...], seed: int = 0, size: int = 64) -> str:
    spec = ModelSpec(heads=heads, preprocess=PreprocessSpec(image_size=size)).to_dict()
    state = {"w": torch.randn(3, generator=torch.Generator().manual_seed(seed))}
    return save_checkpoint(path, state, spec, {"seed": seed}, {"init_from": "scratch"}, extra={"best_epoch": seed})


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two tiny models and two files that are not models."""
    _save_tiny(tmp_path / "regressor.pt", (AGE,), seed=1, size=48)
    _save_tiny(tmp_path / "multihead.pt", (STAGE, AGE), seed=2)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "old.pt.bak").write_text("not a model either")
    return tmp_path


@pytest.fixture
def evaluated(folder) -> tuple[Path, Manifest]:
    """The folder after an evaluation: metrics and predictions recorded in the written manifest."""
    (folder / METRICS).write_text(json.dumps({"cnn_age": {"mae": 9.5}}))
    (folder / PREDICTIONS).write_text("id,boneage,male,cnn_age\n1,100,True,98.5\n")
    manifest = build_manifest(folder, views=TTA_SCALES)
    manifest.evaluation = evaluation_record(folder, manifest, "test", 1)
    write_manifest(folder, manifest)
    return folder, manifest


def test_model_files_are_the_checkpoints(folder):
    assert model_files(folder) == ["multihead.pt", "regressor.pt"]


def test_build_describes_every_model(folder):
    manifest = build_manifest(folder)
    assert manifest.members == ["multihead.pt", "regressor.pt"]  # default: every .pt, sorted
    assert set(manifest.models) == {"multihead.pt", "regressor.pt"}
    for name, entry in manifest.models.items():
        meta = read_meta(folder / name)
        assert entry["sha256"] == file_sha256(folder / name) == meta["sha256"]
        assert entry["heads"] == meta["spec"]["heads"] and entry["backbone"] == "tf_efficientnet_lite0"
        assert entry["created"] == meta["created"] and entry["git_commit"] == meta["git_commit"]
        assert entry["lineage"] == {"init_from": "scratch"} and entry["training"] == meta["extra"]
    assert manifest.models["regressor.pt"]["image_size"] == 48 and manifest.models["multihead.pt"]["image_size"] == 64
    assert manifest.heads() == [STAGE, AGE]
    assert manifest.member_hashes() == {n: file_sha256(folder / n) for n in manifest.members}
    assert manifest.views == NO_TTA and manifest.evaluation is None


def test_members_subset_keeps_every_model_described(folder):
    manifest = build_manifest(folder, ["regressor.pt"])
    assert manifest.members == ["regressor.pt"] and manifest.heads() == [AGE]
    assert set(manifest.models) == {"multihead.pt", "regressor.pt"}
    assert list(manifest.member_hashes()) == ["regressor.pt"]


def test_unknown_member_is_refused(folder):
    with pytest.raises(ArtifactError, match="classifier.pt"):
        build_manifest(folder, ["regressor.pt", "classifier.pt"])


def test_folder_without_models_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="no model files"):
        build_manifest(tmp_path)


def test_write_read_round_trip(folder):
    manifest = build_manifest(folder, ["multihead.pt"], views=(1.0, 1.06), evaluation={"split": "test"})
    manifest.extra["note"] = "kept"
    path = write_manifest(folder, manifest)
    assert path == folder / MANIFEST
    assert not list(folder.glob(".*partial"))
    data = json.loads(path.read_text())
    assert data["format"] == MANIFEST_FORMAT and data["note"] == "kept" and data["views"] == [1.0, 1.06]
    back = read_manifest(folder)
    assert back == manifest
    assert back.views == (1.0, 1.06) and back.evaluation == {"split": "test"} and back.members == ["multihead.pt"]


def test_missing_manifest_reads_as_none_and_unversioned(folder):
    assert read_manifest(folder) is None
    assert manifest_version(folder) == "unversioned"


@pytest.mark.parametrize("content,match", [
    (b'{"format": "boneage-manifest/1", "members": [', "unreadable manifest"),
    (b"\xff\xfe not utf-8", "unreadable manifest"),
    (b'["a list"]', "not a bone-age manifest"),
    (b'{"format": "other/1", "members": [], "models": {}}', "not a bone-age manifest"),
    (b'{"format": "boneage-manifest/1", "models": {}}', "lacks"),
    (b'{"format": "boneage-manifest/1", "members": ["a.pt"], "models": {}}', "a.pt"),
])
def test_corrupt_manifest_is_an_artifact_error(folder, content, match):
    (folder / MANIFEST).write_bytes(content)
    with pytest.raises(ArtifactError, match=match):
        read_manifest(folder)


def test_manifest_version_follows_the_manifest(folder):
    manifest = build_manifest(folder)
    write_manifest(folder, manifest)
    first = manifest_version(folder)
    assert first == file_sha256(folder / MANIFEST)[:12] and len(first) == 12
    write_manifest(folder, manifest)
    assert manifest_version(folder) == first  # same content, same version
    manifest.views = TTA_SCALES
    write_manifest(folder, manifest)
    assert manifest_version(folder) != first


def test_verify_models_accepts_the_described_files(folder):
    (folder / "gate.npz").write_bytes(b"a fitted gate")  # a companion the manifest records is checked too
    checked = verify_models(folder, build_manifest(folder))
    assert checked == {name: file_sha256(folder / name) for name in ("multihead.pt", "regressor.pt", "gate.npz")}


def test_verify_models_refuses_a_changed_member(folder):
    manifest = build_manifest(folder)
    with open(folder / "regressor.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="regressor.pt") as info:
        verify_models(folder, manifest)
    assert "changed" in str(info.value) and "multihead.pt" not in str(info.value)


def test_verify_models_refuses_a_missing_member(folder):
    manifest = build_manifest(folder)
    (folder / "multihead.pt").unlink()
    with pytest.raises(ArtifactError, match="multihead.pt.*missing"):
        verify_models(folder, manifest)


def test_verify_models_ignores_files_that_are_not_members(folder):
    manifest = build_manifest(folder, ["multihead.pt"])
    with open(folder / "regressor.pt", "ab") as handle:
        handle.write(b"\0")
    assert verify_models(folder, manifest) == {"multihead.pt": file_sha256(folder / "multihead.pt")}


def test_fresh_evaluation_is_accepted(evaluated):
    folder, manifest = evaluated
    record = manifest.evaluation
    assert record["split"] == "test" and record["n_images"] == 1 and record["views"] == list(TTA_SCALES)
    assert record["model_sha256"] == manifest.member_hashes()
    assert record["files"] == {name: file_sha256(folder / name) for name in EVALUATED_FILES}
    on_disk = read_manifest(folder)
    for name in (METRICS, PREDICTIONS):
        assert stale_reason(folder, on_disk, name) is None
        assert evaluated_path(folder, on_disk, name) == folder / name


def test_evaluation_of_other_models_is_refused(evaluated):
    """A model retrained after the evaluation: the manifest is rewritten with the old evaluation (describe_models)."""
    folder, old = evaluated
    _save_tiny(folder / "regressor.pt", (AGE,), seed=9, size=48)
    write_manifest(folder, build_manifest(folder, old.members, old.views, old.evaluation))
    manifest = read_manifest(folder)
    for name in (METRICS, PREDICTIONS):
        assert "other model files" in stale_reason(folder, manifest, name)
        with pytest.raises(ArtifactError, match=f"{name} refused"):
            evaluated_path(folder, manifest, name)


def test_evaluation_of_other_members_is_refused(evaluated):
    folder, old = evaluated
    manifest = build_manifest(folder, ["regressor.pt"], old.views, old.evaluation)
    with pytest.raises(ArtifactError, match="other model files"):
        evaluated_path(folder, manifest, PREDICTIONS)


def test_edited_predictions_are_refused(evaluated):
    folder, manifest = evaluated
    with open(folder / PREDICTIONS, "a") as handle:
        handle.write("2,50,False,51.0\n")
    assert "changed after the evaluation" in stale_reason(folder, manifest, PREDICTIONS)
    with pytest.raises(ArtifactError, match="predictions.csv refused"):
        evaluated_path(folder, manifest, PREDICTIONS)
    assert evaluated_path(folder, manifest, METRICS) == folder / METRICS  # the other file is still good


def test_missing_or_unrecorded_evaluated_file_is_refused(evaluated):
    folder, manifest = evaluated
    (folder / METRICS).unlink()
    assert "missing" in stale_reason(folder, manifest, METRICS)
    with pytest.raises(ArtifactError, match="metrics.json"):
        evaluated_path(folder, manifest, METRICS)
    (folder / "split.csv").write_text("id,split\n")
    assert "not recorded" in stale_reason(folder, manifest, "split.csv")
    manifest.evaluation = None
    assert "not recorded" in stale_reason(folder, manifest, PREDICTIONS)


def test_no_manifest_means_no_evaluated_file(folder):
    (folder / PREDICTIONS).write_text("id\n1\n")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        evaluated_path(folder, None, PREDICTIONS)


def test_the_committed_artifacts_folder_is_consistent(committed_artifacts):
    """artifacts/: its files are the ones its manifest hashed, and its metrics belong to its members."""
    manifest = read_manifest(committed_artifacts)
    assert manifest is not None and manifest.members
    verify_models(committed_artifacts, manifest)  # model, gate and calibration hashes
    assert set(manifest.extra) >= {"gate", "calibration"}
    for name in ("metrics.json", "predictions.csv"):
        assert stale_reason(committed_artifacts, manifest, name) is None
    table = fitted_table_path(committed_artifacts, manifest)  # the validation table its calibration was fitted on
    assert table.name == "calibration_predictions.csv"
    with pytest.raises(ArtifactError, match="no manifest.json"):
        fitted_table_path(committed_artifacts, None)


def test_evaluation_with_other_views_is_refused(evaluated):
    """The manifest's views edited after the evaluation: metrics and predictions no longer describe what is served."""
    folder, old = evaluated
    write_manifest(folder, build_manifest(folder, old.members, (1.0, 0.94), old.evaluation))
    with pytest.raises(ArtifactError, match="made with 3 test-time views.*serves 2 test-time views"):
        evaluated_path(folder, read_manifest(folder), METRICS)


def test_manifests_written_before_view_sets_read_their_tta_flag(evaluated):
    """Committed manifests said "tta": true in the manifest and in its evaluation record; they stay valid."""
    folder, manifest = evaluated
    data = json.loads((folder / MANIFEST).read_text())
    data["tta"] = data.pop("views") == list(TTA_SCALES)
    data["evaluation"]["tta"] = data["evaluation"].pop("views") == list(TTA_SCALES)
    (folder / MANIFEST).write_text(json.dumps(data))
    back = read_manifest(folder)
    assert back.views == TTA_SCALES and "tta" not in back.extra
    assert evaluated_path(folder, back, METRICS) == folder / METRICS
    data["views"] = [1.06]
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="must include 1.0"):
        read_manifest(folder)


def test_an_unreadable_evaluation_view_set_is_a_stale_reason(evaluated):
    folder, manifest = evaluated
    manifest.evaluation["views"] = [0.94]
    assert "views are unreadable" in stale_reason(folder, manifest, METRICS)
    with pytest.raises(ArtifactError, match="views are unreadable"):
        evaluated_path(folder, manifest, METRICS)
