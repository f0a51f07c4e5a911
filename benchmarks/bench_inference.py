"""CPU inference latency of the served ensemble on OpenVINO and eager PyTorch, alternating, with load time and memory.

python -m benchmarks.bench_inference --image ../shared/data/samples-fullres/1377.png --threads 2 [--runtime both]
Per runtime: full-size file -> prediction, 299 px file -> prediction, full-size file -> prediction + Grad-CAM (medians;
the runtimes take turns, so a noisy machine slows both alike), a breakdown of one prediction (decode, hand crop,
preparation, network passes, input gate, calibration), and in a fresh process each: model load (OpenVINO with a cold
cache, then warm) and peak RSS after load + one prediction (import torch alone: ~0.7 GB with the CUDA build). Targets (issue 30, judged on the first runtime listed):
<= 0.15 s full-size, <= 0.10 s 299 px, <= 0.35 s with Grad-CAM, peak RSS <= 800 MB. Exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from boneage_core.calibration import apply_calibration
from boneage_core.heads import AGE, STAGE
from boneage_core.imaging import load_gray
from boneage_core.inference import ensemble_outputs, member_features, member_outputs
from boneage_core.predictor import Predictor
from boneage_core.runtime import CACHE_ENV, OPENVINO, RUNTIME_ENV, RUNTIMES, TORCH, runtime_of

TARGET_PREDICT_S, TARGET_299_S, TARGET_EXPLAIN_S, TARGET_RSS_MB = 0.15, 0.10, 0.35, 800
DEFAULT_299 = Path("../shared/data/rsna-bone-age-299/boneage-training-dataset/1377.webp")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _load(artifacts: str, runtime: str) -> Predictor:
    os.environ[RUNTIME_ENV] = runtime
    return Predictor.load(artifacts, "cpu")


def _probe(args) -> int:
    """In this fresh process: load (timed), one prediction, peak RSS; one JSON line."""
    t0 = time.perf_counter()
    predictor = _load(args.artifacts, args.probe)
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss_mb()
    predictor.predict(args.image, args.male)
    print(json.dumps({"load_s": load_s, "rss_loaded_mb": rss_loaded, "rss_mb": _peak_rss_mb(),
                      "runtime": runtime_of(next(iter(predictor.members.values())))}))
    return 0


def _fresh_process(args, runtime: str, cache: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_inference", "--image", str(args.image), "--artifacts",
               args.artifacts, "--threads", str(args.threads), "--probe", runtime] + (["--male"] if args.male else [])
    done = subprocess.run(command, env={**os.environ, CACHE_ENV: cache}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _breakdown(predictor: Predictor, image: Path, male: bool) -> dict[str, float]:
    """Seconds spent in each step of one prediction (the steps Predictor.predict takes, timed one by one)."""
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    gray = load_gray(image)
    steps["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = predictor.inputs(gray)  # the one preparation path: hand crop found once, one input per distinct spec
    steps["prepare + hand crop"] = time.perf_counter() - t0
    male_t, per_member, features = torch.tensor([int(male)]), [], []
    for name, net in predictor.members.items():
        t0 = time.perf_counter()
        per_member.append(member_outputs(net, torch.from_numpy(images[net.spec.preprocess]), male_t, predictor.device,
                                         predictor.views, features=features if name == predictor.gate_name else None))
        steps[f"network {name}"] = time.perf_counter() - t0
    if predictor.gate_apart:  # the gate reads a network of its own: one pass over the unzoomed view
        t0 = time.perf_counter()
        net = predictor.gate_net
        features.append(member_features(net, images[net.spec.preprocess], predictor.device))
        steps[f"gate network {predictor.gate_name}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if predictor.gate is not None:
        predictor.gate.verdicts(features[0])
    steps["gate k-NN"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_calibration({h: v[0] for h, v in ensemble_outputs(per_member).items()},
                      predictor.calibration_for(predictor.views))
    steps["combine + calibration"] = time.perf_counter() - t0
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="a full-size radiograph")
    parser.add_argument("--image-299", type=Path, default=DEFAULT_299, help="a 299 px image")
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--male", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtime", default="both", choices=(*RUNTIMES, "both"),
                        help="both: OpenVINO and PyTorch, taking turns (OpenVINO judged against the targets)")
    parser.add_argument("--head", default=AGE, choices=(AGE, STAGE), help="the head Grad-CAM explains")
    parser.add_argument("--probe", choices=RUNTIMES, help=argparse.SUPPRESS)  # internal: the fresh-process measure
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        return _probe(args)
    runtimes = [OPENVINO, TORCH] if args.runtime == "both" else [args.runtime]

    fresh: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as cold_cache:
        for runtime in runtimes:
            fresh[runtime] = _fresh_process(args, runtime, cold_cache)
            if runtime == OPENVINO:
                fresh["warm"] = _fresh_process(args, runtime, cold_cache)
        os.environ[CACHE_ENV] = cold_cache  # now warm: the timed predictors load from it
        predictors = {runtime: _load(args.artifacts, runtime) for runtime in runtimes}

        def explain(p: Predictor):
            pred = p.predict(args.image, args.male)
            return p.explain(pred.original, args.male, head=args.head, class_index=pred.stage)

        cases = {"full-size": lambda p: p.predict(args.image, args.male),
                 "299 px": lambda p: p.predict(args.image_299, args.male), "+ Grad-CAM": explain}
        times = {(r, c): [] for r in runtimes for c in cases}
        breakdowns = {r: [] for r in runtimes}
        for p in predictors.values():  # warm-up, not timed
            explain(p)
            p.predict(args.image_299, args.male)
        for _ in range(args.repeats):
            for case, fn in cases.items():
                for runtime, p in predictors.items():
                    times[runtime, case].append(_timed(lambda: fn(p)))
            for runtime, p in predictors.items():
                breakdowns[runtime].append(_breakdown(p, args.image, args.male))
        results = {r: predictors[r].predict(args.image, args.male) for r in runtimes}

    gray = results[runtimes[0]].original
    size_mb = args.image.stat().st_size / 1e6
    print(f"image            {args.image.name} {gray.shape[1]}x{gray.shape[0]} px, {size_mb:.2f} MB"
          f" and {args.image_299.name} (299 px); torch threads {torch.get_num_threads()}; {args.repeats} alternating "
          f"rounds; members {', '.join(predictors[runtimes[0]].members)}")
    medians = {key: statistics.median(v) for key, v in times.items()}
    for runtime in runtimes:
        print(f"--- {runtime_of(next(iter(predictors[runtime].members.values())))}")
        probe = fresh["warm" if runtime == OPENVINO else runtime]
        load = f"model load       {probe['load_s']:.2f} s"
        if runtime == OPENVINO:
            load += (f" (warm cache); cold cache (converting) {fresh[runtime]['load_s']:.2f} s, peak RSS "
                     f"{fresh[runtime]['rss_mb']:.0f} MB")
        print(load + f"; fresh process: peak RSS after load {probe['rss_loaded_mb']:.0f} MB, after one prediction "
              f"{probe['rss_mb']:.0f} MB")
        for case in cases:
            t = times[runtime, case]
            print(f"{case:<16} median {medians[runtime, case]:.3f} s (min {min(t):.3f}, max {max(t):.3f})")
        steps = {k: statistics.median(b[k] for b in breakdowns[runtime]) for k in breakdowns[runtime][0]}
        print("breakdown        " + ", ".join(f"{k} {1000 * v:.0f}" for k, v in steps.items()) + " ms (medians)")
        pred = results[runtime]
        print(f"result           {pred.bone_age_months:.4f} months, stage {pred.stage} {pred.stage_name}")
    if len(runtimes) == 2:
        print("ratio torch/openvino  " + ", ".join(f"{c} {medians[TORCH, c] / medians[OPENVINO, c]:.2f}x"
                                                    for c in cases)
              + f"; |age difference| {abs(results[TORCH].bone_age_months - results[OPENVINO].bone_age_months):.2e}"
              " months")
    judged = runtimes[0]
    ok = (medians[judged, "full-size"] <= TARGET_PREDICT_S and medians[judged, "299 px"] <= TARGET_299_S
          and medians[judged, "+ Grad-CAM"] <= TARGET_EXPLAIN_S
          and fresh["warm" if judged == OPENVINO else judged]["rss_mb"] <= TARGET_RSS_MB)
    print(f"targets ({judged}) full-size <= {TARGET_PREDICT_S} s, 299 px <= {TARGET_299_S} s, + Grad-CAM <= "
          f"{TARGET_EXPLAIN_S} s, peak RSS <= {TARGET_RSS_MB} MB: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
