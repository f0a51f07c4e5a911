"""Prediction latency with and without runtime.torch_ops_beside (torch held to one thread beside OpenVINO's passes).

python -m benchmarks.bench_thread_hold --images A.webp,B.webp,C.webp --images FULL1.png,FULL2.png --rounds 4
Each --images group is one row per setting; the two settings take turns in one process (the machine's noise hits
both), each image predicted once to warm up and once timed per round. Medians and minima in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch

import boneage_core.inference as inference
from boneage_core.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--images", action="append", required=True, help="comma-separated image files (one group)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.artifacts)
    groups = {text: [Path(f).read_bytes() for f in text.split(",")] for text in args.images}
    hold = inference.torch_ops_beside
    settings = {"held": hold, "not held": lambda net: contextlib.nullcontext()}
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for setting, context in settings.items():
                inference.torch_ops_beside = context
                for text, images in groups.items():
                    for data in images:
                        predictor.predict(data, True, name="image")
                        t0 = time.perf_counter()
                        predictor.predict(data, True, name="image")
                        times.setdefault((text, setting), []).append(time.perf_counter() - t0)
    finally:
        inference.torch_ops_beside = hold
    for (text, setting), values in times.items():
        print(f"{setting:9s} median {np.median(values) * 1e3:6.0f} ms, min {np.min(values) * 1e3:6.0f} ms "
              f"(n={len(values)}): {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
