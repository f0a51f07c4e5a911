"""Training throughput (images/s) of the real input pipeline against the model's own forward+backward on random tensors.

python -m benchmarks.bench_train_throughput --data-dir ../shared/data/rsna-bone-age-299 --image-size 160 --steps 20
If the two numbers are close, the input pipeline (uint8 tensor -> device -> augment) is not the bottleneck.
With --freeze-blocks N > 0 it also times a step that starts from the frozen trunk's stored activations
(``BoneAgeNet.trunk``): the most a frozen-trunk feature cache could speed training up, before any
augmentation of the cached maps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from boneage_core.data import attach_paths, find_dataset, load_images, read_labels
from boneage_core.heads import AGE, STAGE, get_head
from boneage_core.imagenet import BACKBONES
from boneage_core.inference import autocast, cpu_has_bf16, resolve_device, to_input
from boneage_core.models import INIT_SCRATCH, ModelSpec, create_model, freeze_blocks
from boneage_core.preprocess import PreprocessSpec
from boneage_core.training import augment


def _update(net, opt, out, y) -> None:
    loss = sum(get_head(head).loss(out[head], y[head]) for head in net.spec.heads)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _step(net, opt, x, m, y, device, cpu_bf16):
    with autocast(device, cpu_bf16):
        out = net(x, m)
    _update(net, opt, out, y)


def _cached_step(net, opt, activations, m, y, device, cpu_bf16, from_block):
    with autocast(device, cpu_bf16):
        out = net.read_heads(net.embed(activations, from_block, texture=False)[0], m)
    _update(net, opt, out, y)


def _timed(fn, steps: int, batch: int, device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--freeze-blocks", type=int, default=3)
    p.add_argument("--cpu-bf16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", default="age,stage", help="heads of the network (age,stage = one multi-head model)")
    p.add_argument("--backbone", default=ModelSpec.backbone, choices=BACKBONES)
    p.add_argument("--compile", action="store_true", help="train through torch.compile (inductor); the first, compiling "
                   "step is timed apart")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    csv, image_dir = find_dataset(args.data_dir)
    labels = attach_paths(read_labels(csv), image_dir).head(args.batch_size * 8)
    spec = PreprocessSpec(image_size=args.image_size)
    images = torch.from_numpy(load_images(labels["id"].tolist(), labels["path"].tolist(), spec).images)
    model_spec = ModelSpec(heads=tuple(args.heads.split(",")), backbone=args.backbone, preprocess=spec)
    net = create_model(model_spec, INIT_SCRATCH)[0].to(device)
    net.to(memory_format=torch.channels_last)
    freeze_blocks(net, args.freeze_blocks)
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-4)
    step_net = torch.compile(net) if args.compile else net
    b = args.batch_size
    m = torch.ones(b, dtype=torch.long, device=device)
    y = {AGE: torch.zeros(b, device=device), STAGE: torch.zeros(b, dtype=torch.long, device=device)}
    rand = torch.rand(b, 1, args.image_size, args.image_size, device=device).contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)

    def pipeline_step():
        idx = torch.randint(0, len(images), (b,), generator=gen)
        _step(step_net, opt, augment(to_input(images[idx], device), gen), m, y, device, args.cpu_bf16)

    t0 = time.perf_counter()
    _step(step_net, opt, rand, m, y, device, args.cpu_bf16)
    first = time.perf_counter() - t0
    model_only = _timed(lambda: _step(step_net, opt, rand, m, y, device, args.cpu_bf16), args.steps, b, device)
    full = _timed(pipeline_step, args.steps, b, device)
    print(f"backbone={args.backbone} device={device} image_size={args.image_size} batch={b} "
          f"freeze_blocks={args.freeze_blocks} threads={torch.get_num_threads()} cpu_bf16={args.cpu_bf16} (native bf16 on this CPU: {cpu_has_bf16()}) "
          f"compile={args.compile}")
    print(f"first step (compiling when --compile): {first:.1f} s")
    print(f"model forward+backward on random tensors: {model_only:8.1f} img/s")
    print(f"real pipeline (uint8 -> device -> augment -> step): {full:8.1f} img/s "
          f"({100 * full / model_only:.0f}% of model-only)")
    if args.freeze_blocks > 0:
        with torch.no_grad(), autocast(device, args.cpu_bf16):
            stored = net.trunk(rand, args.freeze_blocks).float()
        cached = _timed(lambda: _cached_step(net, opt, stored, m, y, device, args.cpu_bf16, args.freeze_blocks),
                        args.steps, b, device)
        print(f"from stored trunk activations {tuple(stored.shape[1:])} (a feature cache): {cached:8.1f} img/s "
              f"(x{cached / model_only:.2f} of model-only)")


if __name__ == "__main__":
    np.random.seed(0)
    torch.manual_seed(0)
    main()
