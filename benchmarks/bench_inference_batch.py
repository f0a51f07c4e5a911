"""Inference throughput (images/s) of one member through inference.member_outputs, by batch size.

python -m benchmarks.bench_inference_batch --model artifacts/multihead_299_f0shift.pt --threads 2 [--images 64] [--tta | --views 1,0.94] [--runtime torch]
What evaluate, the calibrate stage and the input gate's fit run: the model's own input size, random uint8 inputs (speed
does not depend on the content), no gradients, float32, through the CPU runtime inference uses (runtime.load_member:
OpenVINO unless --runtime torch; training's validation runs eager PyTorch). The first batch
size is run once before the clock starts; every size is timed `--repeats` times and the best is kept.
"""

from __future__ import annotations

import argparse
import time

import torch

from boneage_core.inference import inference_batch, member_outputs, resolve_device
from boneage_core.runtime import RUNTIMES, load_member, runtime_of
from boneage_core.views import NO_TTA, add_views_arguments, describe_views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="artifacts/multihead_299_f0shift.pt")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: what inference uses on the device")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    add_views_arguments(parser, NO_TTA, "of each image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    net, _ = load_member(args.model, device, runtime=args.runtime)
    size = net.spec.preprocess.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, size, size), dtype=torch.uint8, generator=gen)
    male = torch.randint(0, 2, (args.images,), generator=gen)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    member_outputs(net, images[:sizes[0]], male[:sizes[0]], device, views=args.views, batch_size=sizes[0])
    print(f"{args.model}: {size} px, {args.images} images, {describe_views(args.views)}, "
          f"threads {torch.get_num_threads()}, device {device}, {runtime_of(net)} "
          f"(default batch here: {inference_batch(device)})")
    for b in sizes:
        best = min(_timed(lambda: member_outputs(net, images, male, device, views=args.views, batch_size=b))
                   for _ in range(args.repeats))
        print(f"batch {b:3d}: {args.images / best:7.1f} images/s ({best:.2f} s)")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
