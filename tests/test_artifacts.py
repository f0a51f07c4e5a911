"""Staged artifact folders: swapped in whole on success, untouched on failure."""

from __future__ import annotations

import pytest

from boneage_core.artifacts import staged_folder


def test_success_swaps_in_and_keeps_old_files(tmp_path):
    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    (target / "replace.txt").write_text("old")
    with staged_folder(target) as staging:
        assert (staging / "keep.txt").read_text() == "old"
        (staging / "replace.txt").write_text("new")
        assert (target / "replace.txt").read_text() == "old"
    assert (target / "replace.txt").read_text() == "new"
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(target) as staging:
            (staging / "a.txt").write_text("half-written")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_new_target_is_created(tmp_path):
    with staged_folder(tmp_path / "new") as staging:
        (staging / "x").write_text("1")
    assert (tmp_path / "new" / "x").read_text() == "1"


def test_evaluated_with_tta_reads_config(tmp_path):
    from boneage_core.artifacts import evaluated_with_tta

    assert evaluated_with_tta(tmp_path) is False  # no config
    (tmp_path / "config.json").write_text('{"tta": true}')
    assert evaluated_with_tta(tmp_path) is True
    (tmp_path / "config.json").write_text("not json")
    assert evaluated_with_tta(tmp_path) is False
