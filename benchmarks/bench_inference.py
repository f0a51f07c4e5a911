"""CPU inference latency: file -> prediction, and file -> prediction + Grad-CAM, with peak memory.

python -m benchmarks.bench_inference --image ../shared/data/samples-fullres/1377.png --threads 2
Targets (issue 3): <= 0.5 s to a prediction and <= 1.5 s with Grad-CAM, median of warm runs.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from boneage_core.heads import AGE, STAGE
from boneage_core.predictor import Predictor

TARGET_PREDICT_S = 0.5
TARGET_EXPLAIN_S = 1.5


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--male", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--head", default=AGE, choices=(AGE, STAGE), help="the head Grad-CAM explains")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    predictor = Predictor.load(args.artifacts, "cpu")
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss_mb()

    def predict():
        return predictor.predict(args.image, args.male)

    def predict_and_explain():
        pred = predictor.predict(args.image, args.male)
        return predictor.explain(pred.original, args.male, head=args.head, class_index=pred.stage)

    t0 = time.perf_counter()
    predict_and_explain()
    first_s = time.perf_counter() - t0
    predict_s, p_times = _time(predict, args.repeats)
    explain_s, e_times = _time(predict_and_explain, args.repeats)
    pred = predict()

    print(f"image            {args.image.name} {pred.original.shape[1]}x{pred.original.shape[0]} px, "
          f"{args.image.stat().st_size / 1e6:.2f} MB; torch threads {torch.get_num_threads()}")
    print(f"model load       {load_s:.3f} s ({', '.join(predictor.members)}), peak RSS after load {rss_loaded:.0f} MB")
    print(f"first call       {first_s:.3f} s (prediction + Grad-CAM, cold)")
    print(f"predict          median {predict_s:.3f} s  (min {min(p_times):.3f}, max {max(p_times):.3f}; "
          f"target <= {TARGET_PREDICT_S} s)")
    print(f"predict+gradcam  median {explain_s:.3f} s  (min {min(e_times):.3f}, max {max(e_times):.3f}; "
          f"target <= {TARGET_EXPLAIN_S} s)")
    print(f"peak RSS         {_peak_rss_mb():.0f} MB")
    print(f"result           {pred.bone_age_months:.1f} months, stage {pred.stage} {pred.stage_name}")
    ok = predict_s <= TARGET_PREDICT_S and explain_s <= TARGET_EXPLAIN_S
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
