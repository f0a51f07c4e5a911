"""Checkpoints in format 1 (one task per file), written as the first served pair was: the upgrade path's test data.

The first served pair (regressor.pt + classifier.pt, 2026-11-24) was committed for these tests (15 MB); the payload
below is theirs, key for key, with seeded random weights in place of the trained ones: nothing that reads a format-1
file depends on what the weights learnt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from boneage_core.models import BoneAgeNet, ModelSpec

FORMAT_1 = "boneage-checkpoint/1"
_STAGES = {"names": ("Infancy/toddler", "Pre-puberty", "Early/mid puberty", "Late puberty", "Post-puberty"),
           "female_cutoffs": (24.0, 84.0, 156.0, 180.0), "male_cutoffs": (36.0, 108.0, 168.0, 192.0)}
_PREPROCESS = {"image_size": 192, "low_percentile": 0.5, "high_percentile": 99.5, "mean": 0.5, "std": 0.5}
_CONFIG = {"data_dir": "../shared/data/rsna-bone-age-299", "labels": "", "images": "", "out": "artifacts",
           "stages": ["regressor", "classifier", "evaluate"], "seed": 42, "quick": False, "limit": 0,
           "cache_dir": ".cache", "device": "auto", "workers": 0, "backbone": "tf_efficientnet_lite0",
           "pretrained": True, "image_size": 192, "epochs": 6, "batch_size": 32, "lr": 0.001, "weight_decay": 0.0001,
           "warmup_epochs": 0.3, "optimizer": "adamw", "sam_rho": 0.05, "ema_decay": 0.998, "patience": 3,
           "sex_embedding_dim": 16, "augment": True, "freeze_blocks": 3, "cpu_bf16": True, "max_train_minutes": 34.0,
           "baseline_image_size": 128, "hog_pixels_per_cell": 16, "hog_cells_per_block": 2, "hog_orientations": 9,
           "xgb_estimators": 600, "xgb_max_depth": 5, "xgb_learning_rate": 0.05, "bootstrap": 500, "tta": False}
#: file -> (task, head it becomes, n_outputs, age scaling, created, training summary), as the committed pair had them
PAIR = {
    "regressor.pt": ("regression", "age", 1, {"mean": 127.35731279030249, "std": 40.95031482295567},
                     "2026-11-24T21:04:17+00:00", {"best_epoch": 6, "best_val_score": 9.116113597267326,
                                                   "stopped": "completed all epochs", "train_seconds": 1312.3,
                                                   "device": "cpu", "device_name": "cpu"}),
    "classifier.pt": ("classification", "stage", 5, {"mean": 0.0, "std": 1.0},
                      "2026-11-24T21:25:59+00:00", {"best_epoch": 5, "best_val_score": 0.42447638511657715,
                                                    "stopped": "completed all epochs", "train_seconds": 1300.0,
                                                    "device": "cpu", "device_name": "cpu"}),
}


def format1_payload(name: str, seed: int = 0) -> dict:
    """The format-1 payload of one file of the pair: its task in the spec, its head's weights under `head.`, fp16."""
    task, head, n_outputs, scaling, created, extra = PAIR[name]
    spec = {"task": task, "backbone": "tf_efficientnet_lite0", "n_outputs": n_outputs, "sex_embedding_dim": 16,
            "preprocess": dict(_PREPROCESS), "age_scaling": scaling, "stage_scheme": dict(_STAGES)}
    current = {k: v for k, v in spec.items() if k not in ("task", "n_outputs")}
    torch.manual_seed(seed)
    net = BoneAgeNet(ModelSpec.from_dict({**current, "heads": [head]}))
    prefix = f"heads.{head}."
    state = {}
    for key, value in net.state_dict().items():
        old_key = "head." + key[len(prefix):] if key.startswith(prefix) else key  # format 1 had one `head`
        state[old_key] = value.detach().clone().half() if value.is_floating_point() else value.detach().clone()
    return {"format": FORMAT_1, "spec": spec, "config": dict(_CONFIG), "git_commit": "995d6c4fa41c48dc51bc34ebc38743fffe273750",
            "created": created, "torch_version": str(torch.__version__), "extra": dict(extra), "state_dict": state}


def write_format1_pair(folder: Path) -> Path:
    """regressor.pt and classifier.pt in format 1 in `folder` (made if needed); the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(PAIR):
        torch.save(format1_payload(name, seed), folder / name)
    return folder
