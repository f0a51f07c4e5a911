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


# --- signals, failed swaps, unwritable outputs ---


def test_sigterm_unwinds_like_ctrl_c_and_cleans_up(tmp_path):
    import os
    import signal

    from boneage_core.artifacts import Terminated

    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "a.txt").write_text("old")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        with staged_folder(target) as staging:
            (staging / "a.txt").write_text("half-written")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the run")
    assert isinstance(info.value, Terminated)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # staging copy removed
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_handle_sigterm_restores_the_previous_handler():
    import signal

    from boneage_core.artifacts import handle_sigterm

    def mine(signum, frame):
        raise RuntimeError("mine")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with handle_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("fail_on", ["first", "second"])
def test_failed_swap_keeps_the_results_and_says_where(tmp_path, monkeypatch, fail_on):
    import os

    from boneage_core import artifacts
    from boneage_core.errors import ArtifactError

    target = tmp_path / "artifacts"
    target.mkdir()
    (target / "a.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == (1 if fail_on == "first" else 2):
            raise OSError(30, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", flaky_replace)
    with pytest.raises(ArtifactError) as info:
        with staged_folder(target) as staging:
            (staging / "a.txt").write_text("new")
    staging_dirs = [p for p in tmp_path.iterdir() if p.name.startswith("artifacts.tmp-")]
    assert len(staging_dirs) == 1 and (staging_dirs[0] / "a.txt").read_text() == "new"
    assert str(info.value) == (f"the run finished but its results could not be moved into {target.resolve()} "
                               f"(Read-only file system); they are complete in {staging_dirs[0]}: "
                               "move that folder there yourself")
    assert (target / "a.txt").read_text() == "old"  # the previous artifacts are back in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artifacts", staging_dirs[0].name])


def test_check_writable_refuses_before_any_work(tmp_path, monkeypatch):
    import tempfile

    from boneage_core import artifacts
    from boneage_core.artifacts import check_writable
    from boneage_core.errors import ArtifactError

    assert check_writable(tmp_path / "new" / "artifacts") == (tmp_path / "new" / "artifacts").resolve()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for target in (blocker / "artifacts", blocker):  # real failures, even for root
        with pytest.raises(ArtifactError, match=r"file.txt exists and is not a folder; choose another output folder"):
            check_writable(target)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(artifacts.tempfile, "mkdtemp", denied)  # root ignores chmod: simulate a read-only parent
    with pytest.raises(ArtifactError) as info:
        with staged_folder(tmp_path / "ro" / "artifacts"):
            raise AssertionError("the run started although the output cannot be written")
    assert str(info.value) == (f"cannot write the output folder {(tmp_path / 'ro' / 'artifacts').resolve()}: "
                               f"{(tmp_path / 'ro').resolve()} is not writable (Permission denied); "
                               "choose another output folder")
    assert tempfile.mkdtemp is denied


def test_an_earlier_runs_config_and_report_are_kept_in_order(tmp_path):
    """A gate- or evaluate-only run into a trained folder keeps the training run's config.json and run_report.md."""
    from boneage_core.artifacts import CONFIG_FILE, EARLIER_RUNS_DIR, REPORT_FILE, keep_earlier_run

    assert keep_earlier_run(tmp_path) is None and not (tmp_path / EARLIER_RUNS_DIR).exists()
    (tmp_path / CONFIG_FILE).write_text('{"stages": ["multihead"]}')
    (tmp_path / REPORT_FILE).write_text("# training run")
    first = keep_earlier_run(tmp_path)
    assert first == tmp_path / EARLIER_RUNS_DIR / "001"
    assert (first / REPORT_FILE).read_text() == "# training run" and not (tmp_path / REPORT_FILE).exists()
    (tmp_path / REPORT_FILE).write_text("# gate run")  # the next run wrote only a report
    second = keep_earlier_run(tmp_path)
    assert second.name == "002" and sorted(p.name for p in second.iterdir()) == [REPORT_FILE]
    assert (first / CONFIG_FILE).read_text() == '{"stages": ["multihead"]}'
