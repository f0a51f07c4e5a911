"""checkpoint: atomic fp16 checkpoints, reading (with the format-1 upgrade), hashes and lineage."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from boneage_core import checkpoint
from boneage_core.checkpoint import (CHECKPOINT_FORMAT, RESUME_FORMAT, CheckpointError, file_sha256, git_commit,
                                     lineage_of, read_meta, read_payload, read_resume_state, save_checkpoint,
                                     save_resume_state)
from boneage_core.models import BoneAgeNet, ModelSpec

SPEC = {"heads": ["age"], "backbone": "tf_efficientnet_lite0", "note": "a spec is stored as given"}


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": torch.randn(4, 3, generator=g, dtype=torch.float32),
            "layer.bias": torch.randn(4, generator=g, dtype=torch.float64),
            "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
            "mask": torch.tensor([True, False])}


def _save(path: Path, seed: int = 0, **kwargs) -> str:
    kwargs.setdefault("config", {"lr": 0.001, "epochs": 3})
    return save_checkpoint(path, _state(seed), SPEC, **kwargs)


def test_round_trip(tmp_path):
    path = tmp_path / "model.pt"
    lineage = {"init_from": "scratch"}
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    sha = _save(path, lineage=lineage, extra={"best_epoch": 2, "val": 0.5})
    after = dt.datetime.now(dt.timezone.utc)
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    payload = read_payload(path)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["spec"] == SPEC and payload["config"] == {"lr": 0.001, "epochs": 3}
    assert payload["lineage"] == lineage and payload["extra"] == {"best_epoch": 2, "val": 0.5}
    assert payload["git_commit"] == git_commit() and payload["git_commit"]
    assert payload["torch_version"] == str(torch.__version__)
    created = dt.datetime.fromisoformat(payload["created"])
    assert created.tzinfo is not None and before <= created <= after
    source = _state()
    assert set(payload["state_dict"]) == set(source)
    for key, value in source.items():
        stored = payload["state_dict"][key]
        if value.is_floating_point():  # weights stored in fp16
            assert stored.dtype == torch.float16, key
            assert torch.equal(stored, value.half()), key
        else:
            assert stored.dtype == value.dtype and torch.equal(stored, value), key


def test_defaults_for_lineage_and_extra(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _state(), SPEC, {})
    payload = read_payload(path)
    assert payload["lineage"] == {"init_from": "unknown"} and payload["extra"] == {}


def test_read_meta_has_no_weights_and_the_hash(tmp_path):
    path = tmp_path / "model.pt"
    sha = _save(path, lineage={"init_from": "imagenet"})
    meta = read_meta(path)
    assert "state_dict" not in meta
    assert meta["sha256"] == sha and meta["spec"] == SPEC and meta["lineage"] == {"init_from": "imagenet"}


def test_file_sha256_reads_large_files_in_chunks(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several read blocks and a remainder
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "model.pt"
    first = _save(path, seed=0)
    second = _save(path, seed=1)
    assert first != second == file_sha256(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no .partial left behind
    assert torch.equal(read_payload(path)["state_dict"]["layer.weight"], _state(1)["layer.weight"].half())


def _failing_save(payload, target):
    Path(target).write_bytes(b"half a checkpoint")
    raise OSError("disk full")


def test_failed_save_leaves_the_existing_checkpoint_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    _save(path)
    original = path.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, seed=1)
    assert path.read_bytes() == original
    monkeypatch.undo()
    assert torch.equal(read_payload(path)["state_dict"]["layer.weight"], _state(0)["layer.weight"].half())


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither a checkpoint nor a half-written temp file


def _garbage(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello, this is not a checkpoint\n")
    elif kind == "lfs-pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 123\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no-format":
        torch.save({"state_dict": {}}, path)
    elif kind == "other-format":
        torch.save({"format": "someone-else/9", "state_dict": {}}, path)
    elif kind == "truncated":
        _save(path)
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "v1-unknown-task":
        torch.save({"format": "boneage-checkpoint/1", "spec": {"task": "segmentation"}, "state_dict": {}}, path)
    return path


@pytest.mark.parametrize("kind", ["text", "lfs-pointer", "random", "empty", "tensor", "no-format", "other-format",
                                  "truncated", "v1-unknown-task"])
def test_foreign_or_garbage_file_is_a_checkpoint_error(tmp_path, kind):
    path = _garbage(tmp_path, kind)
    with pytest.raises(CheckpointError) as info:
        read_payload(path)
    assert path.name in str(info.value)
    with pytest.raises(ValueError):  # CheckpointError is a ValueError
        read_meta(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        read_payload(tmp_path / "nothing.pt")


@pytest.mark.parametrize("name,head", [("regressor.pt", "age"), ("classifier.pt", "stage")])
def test_format_1_files_upgrade(format1_models, name, head):
    path = format1_models / name
    sha = file_sha256(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "boneage-checkpoint/1"  # the files really are the old format
    payload = read_payload(path)
    assert payload["format"] == CHECKPOINT_FORMAT
    spec = payload["spec"]
    assert spec["heads"] == [head] and "task" not in spec and "n_outputs" not in spec
    state = payload["state_dict"]
    assert not any(k.startswith("head.") for k in state)
    head_keys = {k for k in state if k.startswith(f"heads.{head}.")}
    assert head_keys == {f"heads.{head}.{k[len('head.'):]}" for k in raw["state_dict"] if k.startswith("head.")}
    assert head_keys
    for key, value in raw["state_dict"].items():
        new_key = f"heads.{head}.{key[len('head.'):]}" if key.startswith("head.") else key
        assert torch.equal(state[new_key], value), key
    expected_init = "imagenet" if raw["config"].get("pretrained") else "scratch"
    assert payload["lineage"] == {"init_from": expected_init, "upgraded_from": "boneage-checkpoint/1"}
    assert payload["config"] == raw["config"] and payload["extra"] == raw["extra"]
    # the upgraded layout is exactly what today's network has
    net = BoneAgeNet(ModelSpec.from_dict(spec))
    assert set(net.state_dict()) == set(state)
    assert file_sha256(path) == sha  # reading never rewrites the file


def test_lineage_of_a_parent(tmp_path):
    parent = tmp_path / "parent.pt"
    sha = _save(parent, config={"lr": 0.5}, lineage={"init_from": "imagenet"})
    meta = read_meta(parent)
    lineage = lineage_of(parent)
    assert lineage["init_from"] == str(parent)
    assert lineage["parent_sha256"] == sha
    assert lineage["parent_config"] == {"lr": 0.5}
    assert lineage["parent_spec"] == SPEC
    assert lineage["parent_lineage"] == {"init_from": "imagenet"}
    assert lineage["parent_created"] == meta["created"] and lineage["parent_git_commit"] == meta["git_commit"]
    # a grandchild's lineage reaches back to the grandparent's hash
    child = tmp_path / "child.pt"
    _save(child, seed=1, lineage=lineage)
    assert lineage_of(child)["parent_lineage"]["parent_sha256"] == sha


def test_lineage_of_a_format_1_parent(format1_models):
    path = format1_models / "regressor.pt"
    lineage = lineage_of(path)
    assert lineage["parent_sha256"] == file_sha256(path)
    assert lineage["parent_lineage"]["upgraded_from"] == "boneage-checkpoint/1"
    assert lineage["parent_spec"]["heads"] == ["age"]


def test_git_commit_is_a_hash_or_unknown(monkeypatch):
    commit = git_commit()
    assert commit == "unknown" or (len(commit) == 40 and set(commit) <= set("0123456789abcdef"))

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(checkpoint.subprocess, "run", no_git)
    assert git_commit() == "unknown"


def test_resume_state_round_trip_is_full_precision_and_described(tmp_path):
    path = tmp_path / "run" / "resume" / "model.pt"  # the folder is made
    state = {"weights": _state(), "history": [{"epoch": 1, "train_loss": 0.5}], "best": float("inf"), "rng": [None]}
    assert save_resume_state(path, state, SPEC, {"lr": 0.001}, {"init_from": "scratch"}, {"epochs_done": 1}) == path
    payload = read_resume_state(path)
    assert payload["format"] == RESUME_FORMAT and payload["spec"] == SPEC and payload["config"] == {"lr": 0.001}
    assert payload["lineage"] == {"init_from": "scratch"} and payload["extra"] == {"epochs_done": 1}
    assert payload["git_commit"] == git_commit() and payload["created"]
    assert all(torch.equal(payload["state"]["weights"][k], v) and payload["state"]["weights"][k].dtype == v.dtype
               for k, v in _state().items())  # not halved
    assert payload["state"]["history"] == state["history"] and payload["state"]["best"] == float("inf")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no .partial left behind


def test_a_checkpoint_is_not_a_resume_state_nor_the_other_way_round(tmp_path):
    _save(tmp_path / "model.pt")
    save_resume_state(tmp_path / "state.pt", {}, SPEC, {})
    with pytest.raises(CheckpointError, match="not a training resume state"):
        read_resume_state(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a bone-age checkpoint"):
        read_payload(tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a readable resume state"):
        read_resume_state(tmp_path / "nothing.pt")
