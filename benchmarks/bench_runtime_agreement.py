"""Agreement of the OpenVINO runtime with eager PyTorch on test-split images: MAE, stage accuracy, largest age difference.

python -m benchmarks.bench_runtime_agreement --data-dir ../shared/data/rsna-bone-age-299 --n 200 [--precisions f32,bf16]
Scores the first n test-split images of the committed split with the served ensemble (its views and calibration, as
`evaluate` does: batches of 4) once on PyTorch float32 and once per OpenVINO precision, and compares them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from boneage_core.data import attach_paths, read_labels
from boneage_core.ensemble import Ensemble
from boneage_core.evaluate import cnn_columns
from boneage_core.heads import AGE, CNN, STAGE, system_column
from boneage_core.runtime import OPENVINO, PRECISION_ENV, PRECISIONS, RUNTIME_ENV, TORCH
from boneage_core.stages import DEFAULT_SCHEME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/rsna-bone-age-299"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="f32", help=f"OpenVINO precisions to compare, of {PRECISIONS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = pd.read_csv(args.artifacts / "split.csv", dtype={"id": str})
    test_ids = set(split.loc[split["split"] == "test", "id"])
    labels = read_labels(args.data_dir / "boneage-training-dataset.csv")
    frame = attach_paths(labels[labels["id"].astype(str).isin(test_ids)].head(args.n).reset_index(drop=True),
                         args.data_dir / "boneage-training-dataset")
    truth_stage = DEFAULT_SCHEME.stage_of(frame["boneage"].to_numpy(float), frame["male"].to_numpy(bool))
    age, stage = system_column(CNN, AGE), system_column(CNN, STAGE)
    runs = [(TORCH, None)] + [(OPENVINO, p) for p in args.precisions.split(",")]
    tables = {}
    for runtime, precision in runs:
        os.environ[RUNTIME_ENV] = runtime
        if precision:
            os.environ[PRECISION_ENV] = precision
        t0 = time.perf_counter()
        table = cnn_columns(Ensemble.load(args.artifacts, torch.device("cpu")), frame, None).table
        name = runtime if precision is None else f"{runtime} {precision}"
        tables[name] = table
        mae = float(np.mean(np.abs(table[age] - frame["boneage"])))
        accuracy = float(np.mean(table[stage].to_numpy(int) == truth_stage))
        print(f"{name:<14} n {table[age].notna().sum()}, MAE {mae:.4f} months, stage accuracy {accuracy:.4f} "
              f"({time.perf_counter() - t0:.1f} s with model load)")
    for name, table in tables.items():
        if name == TORCH:
            continue
        diff = (table[age] - tables[TORCH][age]).abs()
        same = float(np.mean(table[stage].to_numpy(int) == tables[TORCH][stage].to_numpy(int)))
        print(f"{name} vs torch: max |age difference| {diff.max():.2e} months (mean {diff.mean():.2e}), "
              f"same stage {same:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
