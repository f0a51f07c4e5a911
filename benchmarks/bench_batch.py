"""Archive batch throughput (images/s) of boneage_core.batch over full-size samples or 299 px images, with peak memory.

python -m benchmarks.bench_batch --samples ../shared/data/samples-fullres --threads 2 [--repeat 2] [--device cuda]
python -m benchmarks.bench_batch --data-299 ../shared/data/rsna-bone-age-299 --n 48 --threads 2 --runtime torch
Scores every sample `repeat` times (24 x 2 = 48 images), or the first `n` 299 px images of the Kaggle layout, through
a CSV list, as `python -m boneage_core.batch` does, with the committed artifacts on `--runtime` (default: the
library's, OpenVINO on the CPU); the models are loaded and warmed up on one image before the clock starts.
Targets (issue 30, OpenVINO): >= 10 images/s full-size, >= 25 images/s at 299 px.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from boneage_core.batch import load_scorer, rows_from_list, score_rows
from boneage_core.runtime import RUNTIME_ENV, RUNTIMES


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_list(samples: Path, data_299: Path | None, repeat: int, n: int, folder: Path) -> Path:
    """id,path,sex for every full-size sample, `repeat` times under distinct ids, or for the first n 299 px images."""
    if data_299 is not None:
        labels = pd.read_csv(data_299 / "boneage-training-dataset.csv").head(n)
        folder_299 = data_299 / "boneage-training-dataset"
        entries = [(i, folder_299 / f"{i}.webp", m) for i, m in zip(labels["id"], labels["male"])]
    else:
        labels = pd.read_csv(samples / "boneage-samples.csv")
        entries = [(f"{r}/{i}", samples / f"{i}.png", m) for r in range(repeat)
                   for i, m in zip(labels["id"], labels["male"])]
    lines = ["id,path,sex"] + [f"{i},{path},{'M' if m else 'F'}" for i, path, m in entries]
    path = folder / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path("../shared/data/samples-fullres"))
    parser.add_argument("--data-299", type=Path, help="score 299 px images of this Kaggle-layout folder instead")
    parser.add_argument("--n", type=int, default=48, help="how many 299 px images (with --data-299)")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="the inference runtime (default: BONEAGE_RUNTIME, else openvino on the CPU)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.runtime:
        os.environ[RUNTIME_ENV] = args.runtime

    with tempfile.TemporaryDirectory() as tmp:
        data_299 = args.data_299.resolve() if args.data_299 else None
        rows = rows_from_list(_write_list(args.samples.resolve(), data_299, args.repeat, args.n, Path(tmp)))
        t0 = time.perf_counter()
        predict = load_scorer(args.artifacts, args.device)
        load_s = time.perf_counter() - t0
        predict(rows[0].path, bool(rows[0].male))  # warm-up, not timed
        t0 = time.perf_counter()
        summary = score_rows(rows, predict, Path(tmp) / "out.csv", progress=False)
        elapsed = time.perf_counter() - t0
        frame = pd.read_csv(Path(tmp) / "out.csv")

    n = len(rows)
    what = "299 px images" if args.data_299 else f"{n // args.repeat} full-size samples x {args.repeat}"
    print(f"images           {n} ({what}); device {args.device}, torch threads {torch.get_num_threads()}, "
          f"runtime {os.environ.get(RUNTIME_ENV) or 'default (openvino on the CPU)'}")
    print(f"model load       {load_s:.2f} s")
    print(f"batch            {elapsed:.2f} s -> {n / elapsed:.2f} images/s ({1000 * elapsed / n:.0f} ms/image, "
          "decode + input gate + TTA ensemble + CSV write with fsync)")
    print(f"result           {summary.scored} scored, {summary.failed} failed; mean bone age "
          f"{frame['bone_age_months'].mean():.1f} months")
    print(f"peak RSS         {_peak_rss_mb():.0f} MB")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
