"""Archive batch throughput (images/s) of boneage_core.batch over the full-size samples, with peak memory.

python -m benchmarks.bench_batch --samples ../shared/data/samples-fullres --threads 2 [--repeat 2] [--device cuda]
Scores every sample `repeat` times (24 x 2 = 48 images) through a CSV list, as `python -m boneage_core.batch` does,
with the committed artifacts; the models are loaded and warmed up on one image before the clock starts.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from boneage_core.batch import load_scorer, rows_from_list, score_rows


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_list(samples: Path, repeat: int, folder: Path) -> Path:
    """id,path,sex for every sample, `repeat` times under distinct ids."""
    labels = pd.read_csv(samples / "boneage-samples.csv")
    lines = ["id,path,sex"]
    for r in range(repeat):
        lines += [f"{r}/{i},{samples / f'{i}.png'},{'M' if m else 'F'}" for i, m in zip(labels["id"], labels["male"])]
    path = folder / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path("../shared/data/samples-fullres"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        rows = rows_from_list(_write_list(args.samples.resolve(), args.repeat, Path(tmp)))
        t0 = time.perf_counter()
        predict = load_scorer(args.artifacts, args.device)
        load_s = time.perf_counter() - t0
        predict(rows[0].path, bool(rows[0].male))  # warm-up, not timed
        t0 = time.perf_counter()
        summary = score_rows(rows, predict, Path(tmp) / "out.csv", progress=False)
        elapsed = time.perf_counter() - t0
        frame = pd.read_csv(Path(tmp) / "out.csv")

    n = len(rows)
    print(f"images           {n} ({n // args.repeat} full-size samples x {args.repeat}); device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"model load       {load_s:.2f} s")
    print(f"batch            {elapsed:.2f} s -> {n / elapsed:.2f} images/s ({1000 * elapsed / n:.0f} ms/image, "
          "decode + input gate + TTA ensemble + CSV write with fsync)")
    print(f"result           {summary.scored} scored, {summary.failed} failed; mean bone age "
          f"{frame['bone_age_months'].mean():.1f} months")
    print(f"peak RSS         {_peak_rss_mb():.0f} MB")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
