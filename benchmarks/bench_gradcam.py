"""Grad-CAM on the hand: share of heatmap mass inside the hand mask, and where the hottest point lies, per head.

python -m benchmarks.bench_gradcam --artifacts artifacts --samples ../shared/data/samples-fullres
Targets (issue 10): mean share >= 0.8 for each head and no sample whose hottest point is outside the hand.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from boneage_core.handmask import hand_mask, mass_inside, peak_inside
from boneage_core.imaging import load_gray
from benchmarks.samples import load_from_args
from boneage_core.predictor import Predictor

TARGET_MASS = 0.8


def measure(predictor: Predictor, samples: Path) -> pd.DataFrame:
    """One row per sample and head: mass inside the hand, hottest point inside, true age."""
    labels = pd.read_csv(samples / "boneage-samples.csv")
    rows = []
    for _, row in labels.iterrows():
        gray = load_gray(samples / f"{row['id']}.png")
        mask = hand_mask(gray)
        pred = predictor.predict(gray, male=bool(row["male"]))
        for head in predictor.heads:
            exp = predictor.explain(pred.original, pred.male, head=head, class_index=pred.stage)
            rows.append({"id": row["id"], "age": row["boneage"], "head": head,
                         "mass_in_hand": mass_inside(exp.heatmap, mask), "peak_in_hand": peak_inside(exp.heatmap, mask)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    predictor, samples, _ = load_from_args(__doc__, argv)
    table = measure(predictor, samples)
    summary = table.groupby("head").agg(n=("id", "size"), mean_mass=("mass_in_hand", "mean"),
                                        min_mass=("mass_in_hand", "min"),
                                        peaks_outside=("peak_in_hand", lambda s: int((~s.astype(bool)).sum())))
    young = table[table["age"] < 84].groupby("head")["mass_in_hand"].mean().rename("mean_mass_under_7y")
    print(summary.join(young).to_string(float_format=lambda v: f"{v:.3f}"))
    ok = bool((summary["mean_mass"] >= TARGET_MASS).all() and (summary["peaks_outside"] == 0).all())
    print("PASS" if ok else "FAIL", f"(target: mean share >= {TARGET_MASS}, no hottest point outside the hand)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
