"""Which backbone level separates hand radiographs from other images: k-NN OOD refusals per level of one member.

python -m benchmarks.bench_gate_levels --data-dir ../shared/data/rsna-bone-age-299 --model artifacts/multihead.pt \
    --samples ../shared/data/samples-fullres

For every backbone block (per-channel mean + std of its activations, or the means alone) and for the
pooled features, the cosine distance to the k-th nearest of a bank of training images; the limit is
the largest validation distance. Printed: how many test-split radiographs, full-size samples and
generated non-radiographs each level refuses (docs/ablations.md, section 6).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from boneage_core.data import attach_paths, find_dataset, read_labels, with_split
from boneage_core.errors import ImageLoadError
from boneage_core.imaging import load_gray
from boneage_core.gate import kth_distance, unit_rows
from boneage_core.inference import to_input
from boneage_core.models import BoneAgeNet, channel_statistics, load_model
from boneage_core.preprocess import prepare
from tests.negatives import negative_set

@torch.no_grad()
def block_statistics(net: BoneAgeNet, u8: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Per block, (N, 2C) `channel_statistics` of its activations; last, the (N, F) pooled features (one pass)."""
    chunks = []
    for i in range(0, len(u8), batch):
        levels = []
        hooks = [block.register_forward_hook(lambda m, a, out: levels.append(channel_statistics(out).numpy()))
                 for block in net.backbone.blocks]
        try:
            pooled, _ = net.embed(to_input(torch.from_numpy(u8[i:i + batch]), torch.device("cpu")), texture=False)
        finally:
            for hook in hooks:
                hook.remove()
        chunks.append(levels + [pooled.numpy()])
    return [np.concatenate(level) for level in zip(*chunks)]


def _limit_and_distances(bank: np.ndarray, val: np.ndarray, groups: dict[str, np.ndarray]):
    reference = unit_rows(bank)
    return kth_distance(reference, val).max(), {g: kth_distance(reference, f) for g, f in groups.items()}


def _images(args) -> dict[str, dict[str, np.ndarray]]:
    csv, image_dir = find_dataset(args.data_dir)
    split = pd.read_csv(args.split, dtype={"id": str, "split": str})
    frame = with_split(attach_paths(read_labels(csv), image_dir), split)
    rng = np.random.default_rng(0)
    groups = {}
    for part, n in (("train", args.n_train), ("val", args.n_val), ("test", args.n_test)):
        rows = frame[frame["split"] == part]
        rows = rows.iloc[rng.choice(len(rows), min(n, len(rows)), replace=False)]
        groups[part] = {str(i): load_gray(p) for i, p in zip(rows["id"], rows["path"])}
    groups["samples"] = {p.stem: load_gray(p) for p in sorted(Path(args.samples).glob("*.png"))}
    groups["negatives"] = negative_set(Path(args.samples))
    return groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", required=True, help="a checkpoint (.pt)")
    p.add_argument("--split", default=None, help="split.csv (default: the one beside the model)")
    p.add_argument("--samples", required=True, help="folder of full-size PNG radiographs")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=400)
    args = p.parse_args()
    args.split = args.split or str(Path(args.model).parent / "split.csv")
    net, _ = load_model(args.model)
    features, refused_before = {}, []
    for group, images in _images(args).items():
        kept = []
        for name, gray in images.items():
            try:
                kept.append(prepare(gray, net.spec.preprocess, grainy=False))  # as the gate reads it
            except ImageLoadError:
                refused_before.append(name)
        features[group] = block_statistics(net, np.stack(kept))
    print(f"refused before the gate (blank or uniform): {', '.join(refused_before) or 'none'}")
    n_levels = len(features["train"])
    for level in range(n_levels):
        name = "pooled features" if level == n_levels - 1 else f"block {level}"
        width = features["train"][level].shape[1]
        variants = [("", slice(None))] if level == n_levels - 1 else [(" mean+std", slice(None)),
                                                                      (" mean only", slice(0, width // 2))]
        for label, cols in variants:
            limit, distances = _limit_and_distances(
                features["train"][level][:, cols], features["val"][level][:, cols],
                {g: features[g][level][:, cols] for g in ("test", "samples", "negatives")})
            print(f"{name + label:24s} dim {features['train'][level][:, cols].shape[1]:5d}  limit {limit:.3f}  "
                  + "  ".join(f"{g} refused {int((d > limit).sum())}/{len(d)}" for g, d in distances.items()))


if __name__ == "__main__":
    main()
