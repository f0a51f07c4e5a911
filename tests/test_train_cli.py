"""train_cli (train.py): a --quick run on real images writes a complete, described artifacts folder; warm starts record lineage; named members share a folder; presets; bad input is refused cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import types
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from boneage_core import train_cli as train
from boneage_core.checkpoint import file_sha256, read_meta, read_resume_state
from boneage_core.config import PRESETS, QUICK_OUT, TrainConfig, preset_config
from boneage_core.data import SPLIT_RECORD, split_fingerprint
from boneage_core.heads import AGE, BASELINE, CNN, STAGE, UNCORRECTED, age_stage_column, system_column
from boneage_core.manifest import read_manifest, stale_reason
from boneage_core.models import load_model
from boneage_core.predictor import Predictor
from boneage_core.views import NO_TTA


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (the resume states in its resume/ too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_quick_run_writes_every_artifact(quick_run):
    names = {p.name for p in quick_run.iterdir()}
    expected = {"split.csv", "metrics.json", "predictions.csv", "config.json", "run_report.md", "multihead.pt",
                "manifest.json", "gate.npz", "baseline.json", "baseline_regressor.ubj", "baseline_classifier.ubj",
                "history_multihead.csv", "calibration.json", "calibration_predictions.csv", "resume"}
    assert expected <= names, expected - names
    assert read_resume_state(quick_run / "resume" / "multihead.pt")["extra"]["finished"]


def test_quick_metrics_have_every_head_and_breakdown(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    ages = [system_column(CNN, AGE), system_column(BASELINE, AGE)]
    stages = [system_column(CNN, STAGE), age_stage_column(CNN), system_column(BASELINE, STAGE)]
    uncorrected = system_column(UNCORRECTED, AGE)  # the ensemble before the validation-fitted correction
    assert set(metrics) == set(ages + stages + [uncorrected])
    assert metrics[system_column(CNN, AGE)]["interval"]["n"] == metrics[system_column(CNN, AGE)]["n"]
    for name in ages:
        m = metrics[name]
        assert m["head"] == AGE and {"mae", "rmse", "r2", "n", "by_sex", "by_age_group"} <= set(m)
        assert sum(g["n"] for g in m["by_sex"].values()) == m["n"]
        assert sum(g["n"] for g in m["by_age_group"].values()) == m["n"]
    for name in stages:
        assert metrics[name]["head"] == STAGE
        assert {"accuracy", "f1_macro", "qwk", "per_class", "confusion_matrix"} <= set(metrics[name])


def test_manifest_ties_metrics_and_predictions_to_the_model(quick_run):
    manifest = read_manifest(quick_run)
    assert manifest.members == ["multihead.pt"]
    assert manifest.models["multihead.pt"]["sha256"] == file_sha256(quick_run / "multihead.pt")
    assert manifest.models["multihead.pt"]["heads"] == [AGE, STAGE]
    evaluation = manifest.evaluation
    assert evaluation["model_sha256"] == {"multihead.pt": file_sha256(quick_run / "multihead.pt")}
    for name in ("metrics.json", "predictions.csv"):
        assert evaluation["files"][name] == file_sha256(quick_run / name)
        assert stale_reason(quick_run, manifest, name) is None
    assert manifest.extra["gate"]["sha256"] == file_sha256(quick_run / "gate.npz")


def test_split_is_70_15_15_and_predictions_cover_the_test_split(quick_run):
    split = pd.read_csv(quick_run / "split.csv", dtype={"id": str})
    shares = split["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.02 and abs(shares["val"] - 0.15) < 0.02
    preds = pd.read_csv(quick_run / "predictions.csv", dtype={"id": str})
    assert set(preds["id"]) == set(split.loc[split["split"] == "test", "id"])
    assert preds[system_column(CNN, AGE)].between(0, 240).all()
    fitted_on = pd.read_csv(quick_run / "calibration_predictions.csv", dtype={"id": str})
    assert set(fitted_on["id"]) == set(split.loc[split["split"] == "val", "id"])  # the calibration's own cases
    assert fitted_on[system_column(CNN, AGE)].between(0, 240).all()


def test_checkpoint_is_self_describing(quick_run):
    net, meta = load_model(quick_run / "multihead.pt")
    assert meta["spec"]["backbone"] == "tf_efficientnet_lite0" and meta["spec"]["heads"] == [AGE, STAGE]
    assert meta["spec"]["preprocess"]["image_size"] == TrainConfig().quick_version().training_phases()[-1].image_size
    assert meta["spec"]["age_scaling"]["std"] > 0
    assert meta["config"]["quick"] is True and meta["lineage"] == {"init_from": "scratch"}
    assert TrainConfig.load(quick_run / "config.json").quick


def test_warm_start_continues_from_a_checkpoint_at_a_new_size_and_records_lineage(quick_run, data_299, tmp_path):
    parent = quick_run / "multihead.pt"
    out = tmp_path / "child"
    code = train.main(["--data-dir", str(data_299), "--quick", "--limit", "240", "--stages", "regressor",
                       "--init-from", str(parent), "--phases", "80:1:3e-4:2", "--out", str(out),
                       "--cache-dir", str(tmp_path / "c"), "--workers", "1"])
    assert code == 0
    meta = read_meta(out / "regressor.pt")
    lineage = meta["lineage"]
    assert lineage["init_from"] == str(parent) and lineage["parent_sha256"] == file_sha256(parent)
    assert lineage["parent_config"] == read_meta(parent)["config"]
    assert meta["spec"]["preprocess"]["image_size"] == 80 and meta["spec"]["heads"] == [AGE]
    parent_scaling = read_meta(parent)["spec"]["age_scaling"]
    assert meta["spec"]["age_scaling"] == parent_scaling  # the age head continues on the parent's scale
    manifest = read_manifest(out)
    assert manifest.members == ["regressor.pt"] and manifest.models["regressor.pt"]["lineage"]["parent_sha256"]
    predictor = Predictor.load(out)  # no calibration in this run: no intervals, said in the notes
    assert predictor.calibration is None and any("interval" in note for note in predictor.notes)


def test_weights_start_from_imagenet_unless_told_otherwise():
    assert train.parse_args(["--data-dir", "x"]).init_from == "imagenet"
    assert train.parse_args(["--data-dir", "x", "--no-pretrained"]).init_from == "scratch"
    assert train.parse_args(["--data-dir", "x", "--init-from", "a.pt"]).init_from == "a.pt"


def test_quick_without_out_never_targets_the_committed_artifacts():
    cfg = train.parse_args(["--data-dir", "x", "--quick"])
    assert cfg.out == QUICK_OUT
    assert train.parse_args(["--data-dir", "x", "--quick", "--out", "artifacts"]).out == "artifacts"


def test_the_seed_does_not_change_the_split():
    assert train.parse_args(["--data-dir", "x", "--seed", "7"]).split_seed == TrainConfig().split_seed
    assert train.parse_args(["--data-dir", "x", "--split-seed", "3"]).split_seed == 3


def test_checkpoints_record_their_split_and_other_splits_are_refused(quick_run, data_299, tmp_path, caplog):
    import shutil

    split = pd.read_csv(quick_run / "split.csv", dtype={"id": str})
    assert read_meta(quick_run / "multihead.pt")["extra"][SPLIT_RECORD] == split_fingerprint(split)
    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    train_row, test_row = split.index[split["split"] == "train"][0], split.index[split["split"] == "test"][0]
    split.loc[[train_row, test_row], "split"] = ["test", "train"]  # one training image now in the test part
    split.to_csv(out / "split.csv", index=False)
    before = _files(out)
    common = ["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
              "--cache-dir", str(tmp_path / "c")]
    for stage in ("evaluate", "calibrate"):
        caplog.clear()
        assert train.main(common + ["--stages", stage, "--out", str(out)]) == 2
        assert "trained on another split" in caplog.text and "multihead.pt" in caplog.text
    assert _files(out) == before  # nothing written
    caplog.clear()
    code = train.main(common + ["--stages", "multihead", "--split-seed", "5", "--init-from",
                                str(quick_run / "multihead.pt"), "--out", str(tmp_path / "child")])
    assert code == 2 and "--init-from multihead.pt was trained on another split" in caplog.text


def test_calibrate_with_views_writes_each_views_columns(quick_run, data_299, tmp_path, caplog):
    """calibration_predictions.csv holds every member's columns on each test-time view it used, numbered by the
    zoom's position in TTA_SCALES (tools/ensemble_subsets --views); the calibration records the view set. Without
    the evaluate stage the manifest keeps its evaluated views, and the log says the new calibration is therefore
    not applied."""
    import shutil

    import numpy as np

    from boneage_core.evaluate import member_prefix, view_prefix
    from boneage_core.calibration import load_calibration
    from boneage_core.checkpoint import file_sha256

    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240", "--cache-dir",
                       str(tmp_path / "c"), "--stages", "calibrate", "--views", "1,1.06", "--out", str(out)])
    assert code == 0
    frame = pd.read_csv(out / "calibration_predictions.csv", dtype={"id": str})
    member = member_prefix(read_manifest(out).members[0])
    views = np.stack([frame[system_column(view_prefix(member, v), AGE)] for v in (1.0, 1.06)])
    assert system_column(view_prefix(member, 0.94), AGE) not in frame  # zoom 0.94 was not used
    assert load_calibration(out).views == (1.0, 1.06)
    table_sha = file_sha256(out / "calibration_predictions.csv")  # the table the calibration was fitted on
    assert load_calibration(out).fitted_on["predictions_sha256"] == table_sha
    np.testing.assert_allclose(views.mean(axis=0), frame[system_column(CNN, AGE)], atol=1e-6)  # uncalibrated here
    assert np.ptp(views, axis=0).max() > 0
    served = read_manifest(quick_run).views
    assert served != (1.0, 1.06) and read_manifest(out).views == served
    assert "the calibration is not applied: run the evaluate stage with the same --views" in caplog.text
    caplog.clear()
    served_text = ",".join(f"{v:g}" for v in served)
    assert train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240", "--cache-dir",
                       str(tmp_path / "c"), "--stages", "calibrate", "--views", served_text, "--out", str(out)]) == 0
    assert load_calibration(out).views == served and "calibration is not applied" not in caplog.text


def test_rerun_reuses_split_and_keeps_untouched_models(quick_run, data_299, tmp_path):
    import shutil

    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    before = (out / "split.csv").read_text()
    model_bytes = (out / "multihead.pt").read_bytes()
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
                       "--stages", "baseline,evaluate", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    assert (out / "split.csv").read_text() == before
    assert (out / "multihead.pt").read_bytes() == model_bytes
    report = (out / "run_report.md").read_text()
    assert "multihead.pt (kept from the run of" in report and "best_epoch" in report  # kept models still described
    assert read_manifest(out).members == ["multihead.pt"]


def test_interrupted_run_leaves_previous_artifacts_intact(quick_run, data_299, tmp_path, monkeypatch):
    import shutil

    from boneage_core import pipeline

    out = tmp_path / "artifacts"
    shutil.copytree(quick_run, out)
    snapshot = _files(out)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "evaluate_stage", boom)
    code = train.main(["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "240",
                       "--stages", "baseline,evaluate", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 130
    assert _files(out) == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("artifacts.tmp-")]


def test_bad_stage_and_missing_data_give_clear_errors(tmp_path, caplog):
    assert train.main(["--data-dir", str(tmp_path), "--stages", "baseline,bogus"]) == 2
    assert "unknown stage" in caplog.text
    assert train.main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert "data folder not found" in caplog.text
    assert not (tmp_path / "a").exists()


def test_csv_with_missing_columns_is_refused(tmp_path, caplog):
    (tmp_path / "labels-train.csv").write_text("id,age\n1,10\n")
    (tmp_path / "labels-train").mkdir()
    assert train.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "found columns" in caplog.text


@pytest.mark.parametrize("flag", ["--help"])
def test_help_lists_stages(flag, capsys):
    with pytest.raises(SystemExit):
        train.main([flag])
    assert "--stages" in capsys.readouterr().out


# --- flips, model names, presets ------------------------------------------------------------------------------

def test_flip_prob_flag_comes_from_the_fit_config(caplog):
    assert train.parse_args(["--data-dir", "x"]).fit.flip_prob == 0.0
    assert train.parse_args(["--data-dir", "x", "--flip-prob", "0.5"]).fit.flip_prob == 0.5
    assert train.main(["--data-dir", "x", "--flip-prob", "1.5"]) == 2
    assert "flip_prob" in caplog.text


def test_shift_prob_flag_comes_from_the_fit_config(caplog):
    assert train.parse_args(["--data-dir", "x"]).fit.shift_prob == 0.0  # the recipe before acquisition changes
    assert train.parse_args(["--data-dir", "x", "--shift-prob", "0.3"]).fit.shift_prob == 0.3
    assert train.main(["--data-dir", "x", "--shift-prob", "2"]) == 2
    assert "shift_prob" in caplog.text


def test_model_name_flag(caplog, tmp_path):
    cfg = train.parse_args(["--data-dir", "x", "--stages", "multihead", "--model-name", "multihead_lite2_s1"])
    assert cfg.model_name == "multihead_lite2_s1" and cfg.model_stem("multihead") == "multihead_lite2_s1"
    assert train.parse_args(["--data-dir", "x"]).model_name == ""
    assert train.main(["--data-dir", "x", "--model-name", "../elsewhere", "--out", str(tmp_path / "a")]) == 2
    assert "letters, digits" in caplog.text and not (tmp_path / "a").exists()


def test_named_members_train_into_one_folder_and_are_served_together(data_299, tmp_path):
    out, cache = tmp_path / "ensemble", tmp_path / "cache"
    common = ["--data-dir", str(data_299), "--quick", "--no-pretrained", "--limit", "60", "--phases", "64:1:1e-3:3",
              "--out", str(out), "--cache-dir", str(cache), "--workers", "1"]
    assert train.main(common + ["--stages", "multihead", "--model-name", "a", "--preset", "gpu"]) == 0
    first = (out / "a.pt").read_bytes()
    assert train.main(common + ["--stages", "multihead", "--model-name", "b.pt", "--seed", "7"]) == 0
    assert (out / "a.pt").read_bytes() == first  # the second run added its member next to the first
    assert {"a.pt", "b.pt", "history_a.csv", "history_b.csv"} <= {p.name for p in out.iterdir()}
    assert not (out / "multihead.pt").exists()
    assert read_meta(out / "a.pt")["config"]["preset"] == "gpu"
    assert read_meta(out / "a.pt")["config"]["fit"]["flip_prob"] == 0.5  # the preset's flips, through a real fit
    assert read_meta(out / "b.pt")["config"]["preset"] == "" and read_meta(out / "b.pt")["config"]["seed"] == 7

    assert train.main(common + ["--stages", "evaluate", "--members", "a.pt,b.pt"]) == 0
    manifest = read_manifest(out)
    assert manifest.members == ["a.pt", "b.pt"]
    assert manifest.evaluation["model_sha256"] == {m: file_sha256(out / m) for m in ("a.pt", "b.pt")}
    # each run's config and report stay: the evaluate-only run did not overwrite the training runs'
    earlier = sorted((out / "earlier_runs").iterdir())
    assert [json.loads((e / "config.json").read_text())["stages"] for e in earlier] == [["multihead"], ["multihead"]]
    assert json.loads((out / "config.json").read_text())["stages"] == ["evaluate"]
    metrics = json.loads((out / "metrics.json").read_text())
    for system in (CNN, "a", "b"):  # the ensemble and each member
        assert metrics[system_column(system, AGE)]["n"] > 0 and metrics[system_column(system, STAGE)]["n"] > 0
    predictions = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    ensemble = (predictions[system_column("a", AGE)] + predictions[system_column("b", AGE)]) / 2
    assert (predictions[system_column(CNN, AGE)] - ensemble).abs().max() < 0.01  # the mean of the two members


def test_preset_sets_the_defaults_and_is_recorded():
    for name in PRESETS:
        cfg = train.parse_args(["--data-dir", "x", "--preset", name])
        assert cfg == replace(preset_config(name), data_dir="x")
        assert cfg.to_dict()["preset"] == name
    assert train.parse_args(["--data-dir", "x"]) == replace(TrainConfig(), data_dir="x")


def test_flags_given_override_the_preset():
    cfg = train.parse_args(["--data-dir", "x", "--epochs", "3", "--preset", "gpu", "--flip-prob", "0",
                            "--no-tta", "--batch-size", "16", "--stages", "multihead"])
    gpu = preset_config("gpu")
    assert cfg.epochs == 3 and cfg.training_phases()[0].epochs == 3 and cfg.image_size == gpu.image_size
    assert cfg.fit.flip_prob == 0.0 and cfg.fit.batch_size == 16 and cfg.views == NO_TTA and cfg.stages == ("multihead",)
    assert cfg.fit.ema_decay == gpu.fit.ema_decay and cfg.fit.patience == gpu.fit.patience and cfg.preset == "gpu"
    phased = train.parse_args(["--data-dir", "x", "--preset", "gpu", "--phases", "224:2:5e-4:1"])
    assert [(p.image_size, p.epochs, p.lr, p.freeze_blocks) for p in phased.training_phases()] == [(224, 2, 5e-4, 1)]
    cpu = train.parse_args(["--data-dir", "x", "--preset", "cpu", "--no-cpu-bf16", "--patience", "9"])
    assert not cpu.fit.cpu_bf16 and cpu.fit.patience == 9 and cpu.fit.warmup_epochs == 0.3


def test_quick_preset_run_is_shrunk_and_keeps_the_preset():
    cfg = train.parse_args(["--data-dir", "x", "--preset", "gpu", "--quick"])
    assert cfg.quick and cfg.preset == "gpu" and cfg.out == QUICK_OUT
    assert cfg.training_phases()[0].image_size <= 96 and cfg.fit.flip_prob == 0.5


def test_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--data-dir", "x", "--preset", "tpu"])
    assert exc.value.code == 2 and "tpu" in capsys.readouterr().err


SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_ensemble.sh"


def test_gpu_ensemble_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert SCRIPT.read_text().splitlines()[0] == "#!/usr/bin/env bash" and os.access(SCRIPT, os.X_OK)


def test_gpu_ensemble_script_issues_parseable_commands(tmp_path):
    """The script's commands, recorded by a stand-in interpreter, parse into the intended runs (nothing trains)."""
    log, fake = tmp_path / "calls.jsonl", tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "SPLIT": ""}
    result = subprocess.run(["bash", str(SCRIPT), "DATA", str(out), "--cache-dir", "/tmp/c"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    calls = [line.rstrip("\0").split("\0") for line in log.read_text().splitlines()]
    assert all(Path(call[0]).name == "train.py" for call in calls)
    configs = [train.parse_args(call[1:]) for call in calls]
    assert len(configs) == 4 and all(c.preset == "gpu" and c.out == str(out) and c.data_dir == "DATA"
                                     and c.cache_dir == "/tmp/c" for c in configs)
    members = [(c.model_name, c.backbone, c.seed) for c in configs[:3]]
    assert members == [("multihead_lite0_s1", "tf_efficientnet_lite0", 1),
                       ("multihead_lite0_s2", "tf_efficientnet_lite0", 2),
                       ("multihead_lite2_s1", "tf_efficientnet_lite2", 1)]
    assert all(c.stages == ("multihead",) for c in configs[:3])
    assert configs[3].stages == ("gate", "calibrate", "evaluate")
    assert configs[3].members == tuple(f"{name}.pt" for name, _, _ in members)
    assert subprocess.run(["bash", str(SCRIPT), "DATA"], capture_output=True, env=env).returncode == 2


def test_hand_crop_flag_reaches_the_preprocessing_spec():
    assert not train.parse_args(["--data-dir", "x"]).preprocess_spec(96).hand_crop
    cfg = train.parse_args(["--data-dir", "x", "--hand-crop"])
    assert cfg.hand_crop and cfg.preprocess_spec(96).hand_crop and cfg.preprocess_spec(96).image_size == 96
    assert cfg.preprocess_spec(96).with_size(128).hand_crop  # phases keep the crop


# --- train.py --resume -----------------------------------------------------------------------------------

_RESUME_FLAGS = ["--no-pretrained", "--limit", "40", "--phases", "32:2:1e-3,40:1:5e-4", "--batch-size", "4",
                 "--stages", "multihead", "--workers", "1"]  # 28 training images: 7 steps an epoch, 21 in all
_HISTORY = ["epoch", "phase", "image_size", "train_loss", "val_score", "val_age", "val_stage", "lr"]


def _train_chunk(monkeypatch, argv: list[str], cut_after_step: int = 0) -> int:
    """train.main(argv) on a clock that jumps an hour after step `cut_after_step` (0: never): the budget ends there."""
    from boneage_core import training

    now, steps, real = [1_000.0], [], training._train_step

    def counting(*args, **kwargs):
        loss = real(*args, **kwargs)
        steps.append(1)
        now[0] += 3600.0 if len(steps) == cut_after_step else 0.0
        return loss

    with monkeypatch.context() as patch:
        patch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))
        patch.setattr(training, "_train_step", counting)
        return train.main(argv)


@pytest.fixture
def one_torch_thread():  # on the shared 2-core machine two intra-op threads contend and run much slower
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_run_trained_in_two_chunks_equals_the_run_in_one(data_299, tmp_path, monkeypatch, caplog, one_torch_thread):
    common = ["--data-dir", str(data_299), "--cache-dir", str(tmp_path / "cache"), *_RESUME_FLAGS]
    assert _train_chunk(monkeypatch, [*common, "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "chunked"
    # chunk 1: the budget runs out in epoch 2 (step 10 of 21); the folder holds the state after epoch 1
    assert _train_chunk(monkeypatch, [*common, "--out", str(run), "--max-train-minutes", "1"], cut_after_step=10) == 0
    state = read_resume_state(run / "resume" / "multihead.pt")
    assert state["extra"]["epochs_done"] == 1 and state["extra"]["steps"] == 7 and not state["extra"]["finished"]
    assert state["extra"]["planned_epochs"] == 3 and state["lineage"] == {"init_from": "scratch"}
    assert state["config"]["phases"] == "32:2:1e-3,40:1:5e-4" and state["git_commit"]
    assert not read_meta(run / "multihead.pt")["extra"]["finished"]
    # chunk 2: --resume with the run's own config and no budget
    assert _train_chunk(monkeypatch, ["--resume", str(run), "--max-train-minutes", "0",
                                      "--cache-dir", str(tmp_path / "cache")]) == 0
    meta = read_meta(run / "multihead.pt")
    assert meta["extra"]["first_epoch"] == 2 and meta["extra"]["finished"]
    whole, chunked = (pd.read_csv(tmp_path / name / "history_multihead.csv") for name in ("whole", "chunked"))
    pd.testing.assert_frame_equal(chunked[_HISTORY], whole[_HISTORY])
    a, b = load_model(tmp_path / "whole" / "multihead.pt")[0], load_model(run / "multihead.pt")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # a flag that changes the plan is refused, and so is a folder without a run
    caplog.clear()
    assert train.main(["--resume", str(run), "--seed", "7", "--phases", "32:3"]) == 2
    assert "seed: 42 -> 7" in caplog.text and "phases" in caplog.text and "would change the run's plan" in caplog.text
    assert train.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in caplog.text


def test_the_gate_network_is_the_one_asked_for_else_the_first_member_with_an_age_head(quick_run, tmp_path):
    from boneage_core.errors import MissingArtifactError
    from boneage_core.pipeline import gate_network

    cfg = TrainConfig(data_dir="unused")
    assert gate_network(cfg, quick_run, ["multihead.pt"]) == "multihead.pt"
    assert gate_network(replace(cfg, gate_network="multihead"), quick_run, []) == "multihead.pt"
    with pytest.raises(MissingArtifactError, match="--gate-network other.pt: no such model file"):
        gate_network(replace(cfg, gate_network="other.pt"), quick_run, ["multihead.pt"])


def test_the_gate_stage_counts_are_flags():
    cfg = train.parse_args(["--data-dir", "d", "--gate-fit-images", "500", "--gate-turned", "100",
                      "--gate-counterexample-sources", "20", "--gate-counterexample-variants", "2"])
    assert (cfg.gate_fit_images, cfg.gate_turned, cfg.gate_counterexample_sources,
            cfg.gate_counterexample_variants) == (500, 100, 20, 2)
