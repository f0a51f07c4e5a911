"""Pilot (not used by the tool): would scaling the conformal interval by the members' spread narrow it?

Reads an evaluated folder's predictions.csv (test split), splits it at random into three parts (fit the
bias correction and the age-local error scale / take the conformal quantiles / measure), and compares
the served scale (age only) with the age scale times a spread factor ``a + b * SD ** p`` (p = 0.5 or 1),
fitted by least squares to |residual| / age scale on the fit part.
Run: ``python -m tools.spread_pilot --artifacts artifacts --splits 50``. Documented in docs/ablations.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from boneage_core.artifacts import PREDICTIONS_FILE
from boneage_core.calibration import (LEVEL, SCALE_KNOTS, conformal_quantiles, error_scale, linear_correction,
                                      local_scale)
from boneage_core.evaluate import member_prefix
from boneage_core.heads import AGE, UNCORRECTED, system_column
from boneage_core.manifest import read_manifest

POWERS = (0.0, 0.5, 1.0)  # 0 = the served interval (age-local scale only)
#: Smallest spread factor, as a fraction of its mean on the fit part (keeps the scaled residuals finite).
MIN_FACTOR = 0.25


def spread_factor(sd: np.ndarray, ratio: np.ndarray, fit: np.ndarray, power: float) -> np.ndarray:
    """a + b * sd ** power fitted to `ratio` on the `fit` rows, floored at MIN_FACTOR of its mean (1 for power 0)."""
    if power == 0:
        return np.ones_like(sd)
    x = sd ** power
    b, a = np.polyfit(x[fit], ratio[fit], 1)
    factor = a + b * x
    return np.maximum(factor, MIN_FACTOR * factor[fit].mean())


def one_split(pred: np.ndarray, true: np.ndarray, sd: np.ndarray, rng: np.random.Generator,
              level: float) -> dict[float, tuple[float, float]]:
    """(coverage, mean width) on the third part, per power of the spread factor."""
    order = rng.permutation(len(pred))
    fit, conf, test = np.array_split(order, 3)
    slope, intercept = np.polyfit(pred[fit], true[fit], 1)
    corr = linear_correction(pred, intercept, slope)
    values = tuple(local_scale(corr[fit], true[fit] - corr[fit]))
    age_scale = error_scale(corr, SCALE_KNOTS, values)
    out = {}
    for p in POWERS:
        scale = age_scale * spread_factor(sd, np.abs(true - corr) / age_scale, fit, p)
        lo, hi = conformal_quantiles((true[conf] - corr[conf]) / scale[conf], level)
        low, high = corr[test] + lo * scale[test], corr[test] + hi * scale[test]
        out[p] = (float(np.mean((true[test] >= low) & (true[test] <= high))), float(np.mean(high - low)))
    return out


def main(argv: list[str] | None = None) -> None:
    """Print coverage and width per variant, averaged over random splits, and how |residual| follows the spread."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--splits", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    folder = Path(args.artifacts)
    frame = pd.read_csv(folder / PREDICTIONS_FILE)
    frame = frame[frame["split"] == "test"]
    members = [member_prefix(m) for m in read_manifest(folder).members]
    pred = frame[system_column(UNCORRECTED, AGE)].to_numpy(float)
    true = frame["boneage"].to_numpy(float)
    sd = frame[[system_column(m, AGE) for m in members]].to_numpy(float).std(axis=1)
    rng = np.random.default_rng(args.seed)
    runs = [one_split(pred, true, sd, rng, LEVEL) for _ in range(args.splits)]
    print(f"{len(frame)} test images, {len(members)} members, {args.splits} random 3-way splits, level {LEVEL}")
    for p in POWERS:
        cov, width = np.mean([r[p][0] for r in runs]), np.mean([r[p][1] for r in runs])
        name = "age-local (served)" if p == 0 else f"age-local x (a + b SD^{p:g})"
        print(f"scale = {name}: coverage {cov:.3f}, mean width {width:.2f} months")
    absres = np.abs(true - linear_correction(pred, *np.polyfit(pred, true, 1)[::-1]))
    print(f"corr(member SD, |residual|) Pearson {np.corrcoef(sd, absres)[0, 1]:.2f}, "
          f"Spearman {pd.Series(sd).corr(pd.Series(absres), method='spearman'):.2f}")
    quintile = pd.qcut(sd, 5, labels=False)
    print("mean |residual| by member-SD quintile:",
          " / ".join(f"{absres[quintile == q].mean():.1f}" for q in range(5)))


if __name__ == "__main__":
    main()
