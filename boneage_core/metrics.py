"""Regression and classification metrics, bootstrap confidence intervals, and breakdowns by sex and age group."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .data import AGE_GROUPS, age_group

logger = logging.getLogger(__name__)


def regression_metrics(y_true, y_pred) -> dict:
    """MAE, RMSE, R², Pearson r, bias (mean signed error) and share within 6/12/24 months."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.size == 0:
        return {"n": 0}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    out = {
        "n": int(t.size),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1.0 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "pearson_r": float(np.corrcoef(t, p)[0, 1]) if t.size > 1 and t.std() > 0 and p.std() > 0 else float("nan"),
        "bias": float(err.mean()),
    }
    for m in (6, 12, 24):
        out[f"within_{m}m"] = float((np.abs(err) <= m).mean())
    return out


def quadratic_weighted_kappa(y_true, y_pred, n_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights (1 = perfect agreement, 0 = chance)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    k = n_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    observed = np.zeros((k, k), dtype=np.float64)
    np.add.at(observed, (t, p), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1.0)
    idx = np.arange(k)
    weights = (idx[:, None] - idx[None, :]) ** 2 / max((k - 1) ** 2, 1)
    denom = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denom) if denom > 0 else float("nan")


def classification_metrics(y_true, y_pred, n_classes: int, class_names=None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, QWK."""
    # imported here: the inference path reaches this module through heads and would load scikit-learn (~0.18 GB)
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.size == 0:
        return {"n": 0}
    labels = list(range(n_classes))
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    present = support > 0
    names = list(class_names) if class_names is not None else [str(i) for i in labels]
    return {
        "n": int(t.size),
        "accuracy": float((t == p).mean()),
        "precision_macro": float(prec[present].mean()),
        "recall_macro": float(rec[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "qwk": quadratic_weighted_kappa(t, p, n_classes),
        "per_class": {
            names[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i in labels
        },
        "confusion_matrix": confusion_matrix(t, p, labels=labels).tolist(),
        "class_names": names,
    }


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    y_pred,
    n_boot: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of metric(y_true, y_pred)."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.size < 2 or n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t.size, size=(n_boot, t.size))
    values = np.array([metric(t[i], p[i]) for i in idx], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _mae(t, p) -> float:
    return float(np.abs(np.asarray(p, float) - np.asarray(t, float)).mean())


def _accuracy(t, p) -> float:
    return float((np.asarray(t) == np.asarray(p)).mean())


def _groups(frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Row masks by sex and by age group (on the true bone age)."""
    male = frame["male"].to_numpy(bool)
    groups = age_group(frame["boneage"].to_numpy())
    return {
        "by_sex": {"female": ~male, "male": male},
        "by_age_group": {label: groups == label for label, _, _ in AGE_GROUPS},
    }


def regression_breakdown(frame: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> dict:
    """Regression metrics by sex and age group with bootstrap 95% CIs of the MAE.

    `frame` holds columns boneage (true), pred, male.
    """
    out: dict = {}
    for kind, masks in _groups(frame).items():
        out[kind] = {}
        for name, mask in masks.items():
            sub = frame[mask]
            stats = regression_metrics(sub["boneage"], sub["pred"])
            if stats["n"]:
                stats["mae_ci95"] = list(bootstrap_ci(_mae, sub["boneage"].to_numpy(), sub["pred"].to_numpy(), n_boot, seed))
            out[kind][name] = stats
    return out


def classification_breakdown(frame: pd.DataFrame, n_classes: int, n_boot: int = 500, seed: int = 0) -> dict:
    """Classification metrics by sex and age group with bootstrap 95% CIs of the accuracy.

    `frame` holds columns stage (true), pred_stage, male, boneage.
    """
    out: dict = {}
    for kind, masks in _groups(frame).items():
        out[kind] = {}
        for name, mask in masks.items():
            sub = frame[mask]
            if not len(sub):
                out[kind][name] = {"n": 0}
                continue
            full = classification_metrics(sub["stage"], sub["pred_stage"], n_classes)
            stats = {k: full[k] for k in ("n", "accuracy", "f1_macro", "qwk")}
            stats["accuracy_ci95"] = list(
                bootstrap_ci(_accuracy, sub["stage"].to_numpy(), sub["pred_stage"].to_numpy(), n_boot, seed)
            )
            out[kind][name] = stats
    return out


def _cis_overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def subgroup_findings(regression: dict) -> list[str]:
    """Plain-language findings (markdown) from a regressor's by-sex / by-age-group breakdown."""
    sexes, ages = regression.get("by_sex") or {}, regression.get("by_age_group") or {}
    lines = []
    if {"female", "male"} <= set(sexes):
        f, m = sexes["female"], sexes["male"]
        overlap = _cis_overlap(f.get("mae_ci95"), m.get("mae_ci95"))
        verdict = {True: "The 95% intervals overlap, so this holdout does not show a clear difference.",
                   False: "The 95% intervals do not overlap: the gap is unlikely to be chance alone.",
                   None: "No confidence intervals were computed."}[overlap]
        lines.append(f"**Sex:** the CNN's MAE is {f['mae']:.1f} months for girls (n={f['n']}) and "
                     f"{m['mae']:.1f} months for boys (n={m['n']}). {verdict}")
    if ages:
        smallest = min(ages, key=lambda k: ages[k].get("n", 0))
        s = ages[smallest]
        ci = s.get("mae_ci95") or [float("nan"), float("nan")]
        lines.append(f"**Small groups are uncertain:** only {s['n']} holdout images fall in {smallest}; its MAE "
                     f"of {s['mae']:.1f} months has a 95% interval of {ci[0]:.1f}-{ci[1]:.1f} months. Wide error "
                     "bars mean the group is too small to rank it against the others.")
        worst = max(ages, key=lambda k: ages[k].get("mae", 0))
        lines.append(f"**Largest error:** {worst} (MAE {ages[worst]['mae']:.1f} months, bias "
                     f"{ages[worst].get('bias', float('nan')):+.1f} months); look at the bias as well as the MAE.")
        first, last = ages[next(iter(ages))], ages[list(ages)[-1]]
        if first.get("bias", 0) > 0 > last.get("bias", 0):
            lines.append(f"**Regression to the middle:** the youngest group is over-estimated (bias "
                         f"{first['bias']:+.1f} months) and the oldest under-estimated ({last['bias']:+.1f} "
                         "months), typical of a model trained mostly on mid-range ages.")
    return lines
