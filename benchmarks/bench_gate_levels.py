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
from boneage_core.models import BoneAgeNet, load_model
from boneage_core.preprocess import prepare
from tests.negatives import negative_set

K = 20


@torch.no_grad()
def block_statistics(net: BoneAgeNet, u8: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Per block, (N, 2C) per-channel mean then std of its activations; last, the (N, F) pooled features."""
    chunks = []
    for i in range(0, len(u8), batch):
        x = torch.from_numpy(u8[i:i + batch]).float()[:, None] / 255.0
        h, levels = net.trunk(x, 0), []
        for block in net.backbone.blocks:
            h = block(h)
            levels.append(torch.cat([h.mean((2, 3)), h.std((2, 3), correction=0)], 1).numpy())
        levels.append(net.embed(x)[0].numpy())
        chunks.append(levels)
    return [np.concatenate(level) for level in zip(*chunks)]


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def kth_distance(bank: np.ndarray, features: np.ndarray, k: int = K) -> np.ndarray:
    """Cosine distance of each feature row to its k-th nearest bank row."""
    return np.partition(1.0 - _unit(features) @ _unit(bank).T, k - 1, axis=1)[:, k - 1]


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
                kept.append(prepare(gray, net.spec.preprocess))
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
            bank = features["train"][level][:, cols]
            limit = kth_distance(bank, features["val"][level][:, cols]).max()
            counts = {g: (kth_distance(bank, features[g][level][:, cols]) > limit, len(features[g][level]))
                      for g in ("test", "samples", "negatives")}
            print(f"{name + label:24s} dim {bank.shape[1]:5d}  limit {limit:.3f}  " + "  ".join(
                f"{g} refused {int(r.sum())}/{n}" for g, (r, n) in counts.items()))


if __name__ == "__main__":
    main()
