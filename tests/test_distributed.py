"""distributed: per-epoch shards, the single-process context, the mmap cache, and train.py under torchrun (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from boneage_core.checkpoint import read_meta
from boneage_core.data import find_dataset, load_images, load_images_mmap, read_labels
from boneage_core.distributed import LOCAL, init_from_env, shard_indices
from boneage_core.predictor import Predictor
from boneage_core.preprocess import PreprocessSpec
from boneage_core.training import SHARD_LOG_ENV

REPO = Path(__file__).resolve().parents[1]

#: Both runs: 240 images (168 train / 36 val), quick settings (96 px, 2 epochs, from scratch), age + stage heads.
RUN_ARGS = ["--quick", "--no-pretrained", "--limit", "240", "--stages", "multihead", "--workers", "1"]
#: Global batch 32 in both runs: 2 ranks x 16 against 1 x 32, so both take the same steps at the same learning rates.
GLOBAL_BATCH = 32


@pytest.mark.parametrize("n, world", [(168, 2), (10, 3), (7, 4), (5, 1), (3, 5)])
def test_shards_have_equal_length_and_cover_the_split(n, world):
    shards = [shard_indices(n, epoch=0, seed=42, rank=r, world=world) for r in range(world)]
    assert {len(s) for s in shards} == {-(-n // world)}
    joined = torch.cat(shards)
    assert set(joined.tolist()) == set(range(n))
    assert len(joined) - n == (-n) % world  # padding: the fewest repeats that make the shards equal


@pytest.mark.parametrize("n, world", [(168, 2), (12, 3), (64, 4)])
def test_shards_are_disjoint_when_world_divides_the_split(n, world):
    shards = [set(shard_indices(n, 3, 7, r, world).tolist()) for r in range(world)]
    assert sum(len(s) for s in shards) == n == len(set().union(*shards))


def test_shards_are_seeded_by_seed_and_epoch():
    one = shard_indices(100, 1, 42, 0, 2)
    assert torch.equal(one, shard_indices(100, 1, 42, 0, 2))
    assert not torch.equal(one, shard_indices(100, 2, 42, 0, 2))
    assert not torch.equal(one, shard_indices(100, 1, 43, 0, 2))


@pytest.mark.parametrize("args", [(0, 0, 1, 0, 1), (10, 0, 1, 2, 2), (10, 0, 1, -1, 2)])
def test_bad_shard_arguments_are_refused(args):
    with pytest.raises(ValueError):
        shard_indices(*args)


def test_without_torchrun_the_context_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_from_env(torch.device("cpu"))
    assert (dist.rank, dist.world, dist.is_main, dist.enabled) == (0, 1, True, False)
    assert dist.device == torch.device("cpu")
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    t = torch.tensor([1.0, 3.0])
    assert torch.equal(dist.all_reduce_mean(t), t)
    dist.barrier()
    dist.destroy()
    assert LOCAL.is_main and not LOCAL.enabled


def test_mmap_cache_matches_load_images_and_is_shared(data_299, tmp_path):
    csv, image_dir = find_dataset(data_299)
    ids = read_labels(csv)["id"].tolist()[:6]
    paths = [str(image_dir / f"{i}.webp") for i in ids]
    spec = PreprocessSpec(image_size=64)
    first = load_images_mmap(ids, paths, spec, tmp_path)
    again = load_images_mmap(ids, paths, spec, tmp_path)
    plain = load_images(ids, paths, spec)
    assert first.ids == again.ids == plain.ids and first.failures == []
    np.testing.assert_array_equal(again.images, plain.images)
    assert isinstance(again.images, np.memmap) and again.images.flags.writeable  # copy-on-write: no torch warning
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]  # no temporary files left


def _train(out, cache, args: list[str], nproc: int, shard_log=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(SHARD_LOG_ENV, None)
    if shard_log is not None:
        env[SHARD_LOG_ENV] = str(shard_log)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(REPO / "train.py"), *args,
           "--out", str(out), "--cache-dir", str(cache)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, data_299):
    """train.py under torchrun with 2 CPU ranks (gloo), each writing its first epoch's shard."""
    root = tmp_path_factory.mktemp("ddp")
    out, shards = root / "runs" / "artifacts", root / "shards"
    args = [*RUN_ARGS, "--data-dir", str(data_299), "--batch-size", str(GLOBAL_BATCH // 2)]
    _train(out, root / "cache", args, nproc=2, shard_log=shards)
    return out, shards


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory, data_299):
    root = tmp_path_factory.mktemp("single")
    out = root / "artifacts"
    _train(out, root / "cache", [*RUN_ARGS, "--data-dir", str(data_299), "--batch-size", str(GLOBAL_BATCH)], nproc=1)
    return out


def test_ranks_train_on_disjoint_shards_covering_the_train_split(two_rank_run):
    out, shards = two_rank_run
    logs = [json.loads((shards / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(log["rank"], log["world"]) for log in logs] == [(0, 2), (1, 2)]
    first, second = (set(log["indices"]) for log in logs)
    split = pd.read_csv(out / "split.csv", dtype={"id": str})
    n_train = int((split["split"] == "train").sum())
    assert len(logs[0]["indices"]) == len(logs[1]["indices"]) == n_train // 2
    assert not first & second
    assert first | second == set(range(n_train))


def test_one_artifacts_folder_is_written_and_its_model_predicts(two_rank_run, data_299):
    out, _ = two_rank_run
    assert [p.name for p in out.parent.iterdir()] == ["artifacts"]  # no staging (.tmp-) or old (.old-) folders
    names = {p.name for p in out.iterdir()}
    assert {"multihead.pt", "split.csv", "history_multihead.csv", "manifest.json", "config.json",
            "run_report.md"} <= names
    assert read_meta(out / "multihead.pt")["extra"]["processes"] == 2
    csv, image_dir = find_dataset(data_299)
    first_id = pd.read_csv(out / "split.csv", dtype={"id": str})["id"].iloc[0]
    pred = Predictor.load(out).predict(image_dir / f"{first_id}.webp", male=True)
    assert 0 <= pred.bone_age_months <= 240


def test_two_ranks_learn_like_one_process(two_rank_run, one_rank_run):
    """Same seed, split and global batch; shards, batch composition, augmentation draws and per-rank
    BatchNorm statistics differ, so the scores are close, not equal. Measured: 33.50 vs 33.53 months
    MAE here (0.1 %), 35.41 vs 34.26 with 360 images (3 %). The runs are deterministic on the CPU;
    5 % allows for that spread and stays below the gap to predicting the training mean (36.4 months,
    about 8 % worse), so a run that learns nothing or diverges fails (the falling loss checks too)."""
    out, _ = two_rank_run
    assert (out / "split.csv").read_text() == (one_rank_run / "split.csv").read_text()
    two = pd.read_csv(out / "history_multihead.csv")
    one = pd.read_csv(one_rank_run / "history_multihead.csv")
    assert len(two) == len(one)
    for history in (one, two):
        assert np.isfinite(history["val_score"]).all()
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    best_one, best_two = one["val_score"].min(), two["val_score"].min()
    assert abs(best_two - best_one) <= 0.05 * best_one, (best_one, best_two)
