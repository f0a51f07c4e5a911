"""metrics: compared with independent numpy / scipy / sklearn computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (
    cohen_kappa_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)

from boneage_core.data import AGE_GROUPS
from boneage_core.metrics import (
    bootstrap_ci,
    classification_breakdown,
    classification_metrics,
    quadratic_weighted_kappa,
    regression_breakdown,
    regression_metrics,
)


def _ages(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 228, n)
    p = t + rng.normal(3, 12, n)
    return t, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_sklearn_and_scipy(seed):
    t, p = _ages(seed)
    m = regression_metrics(t, p)
    assert m["n"] == len(t)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), rel=1e-12)
    assert m["r2"] == pytest.approx(r2_score(t, p), rel=1e-12)
    assert m["pearson_r"] == pytest.approx(pearsonr(t, p)[0], rel=1e-10)
    assert m["bias"] == pytest.approx(float(np.mean(p - t)), rel=1e-12)
    for months in (6, 12, 24):
        assert m[f"within_{months}m"] == pytest.approx(sum(abs(a - b) <= months for a, b in zip(p, t)) / len(t))


def test_regression_edge_cases():
    assert regression_metrics([], []) == {"n": 0}
    m = regression_metrics([10, 10, 10], [9, 11, 10])
    assert math.isnan(m["r2"]) and math.isnan(m["pearson_r"]) and m["mae"] == pytest.approx(2 / 3)
    perfect = regression_metrics([1, 2, 3], [1, 2, 3])
    assert perfect["mae"] == 0 and perfect["r2"] == 1 and perfect["within_6m"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_qwk_matches_cohen_kappa(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 200)
    noisy = np.clip(t + rng.integers(-1, 2, 200), 0, 4)
    for p in (noisy, rng.integers(0, 5, 200)):
        expected = cohen_kappa_score(t, p, weights="quadratic")
        assert quadratic_weighted_kappa(t, p, 5) == pytest.approx(expected, abs=1e-10)
        assert quadratic_weighted_kappa(t, p) == pytest.approx(expected, abs=1e-10)


def test_qwk_extremes():
    t = np.array([0, 1, 2, 3, 4] * 10)
    assert quadratic_weighted_kappa(t, t, 5) == pytest.approx(1.0)
    assert quadratic_weighted_kappa(t, 4 - t, 5) < -0.9  # systematic reversal is worse than chance


@pytest.mark.parametrize("seed", [0, 3])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, 150)  # class 4 never occurs in the truth
    p = np.where(rng.random(150) < 0.6, t, rng.integers(0, 5, 150))
    names = ["a", "b", "c", "d", "e"]
    m = classification_metrics(t, p, 5, class_names=names)
    assert m["n"] == 150 and m["accuracy"] == pytest.approx(np.mean(t == p))
    present = sorted(set(t.tolist()))
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, labels=present, average="macro", zero_division=0)
    assert m["precision_macro"] == pytest.approx(prec)
    assert m["recall_macro"] == pytest.approx(rec)
    assert m["f1_macro"] == pytest.approx(f1)
    per = precision_recall_fscore_support(t, p, labels=list(range(5)), zero_division=0)
    for i, name in enumerate(names):
        assert m["per_class"][name]["precision"] == pytest.approx(per[0][i])
        assert m["per_class"][name]["recall"] == pytest.approx(per[1][i])
        assert m["per_class"][name]["support"] == int((t == i).sum())
    manual = np.zeros((5, 5), int)
    for a, b in zip(t, p):
        manual[a, b] += 1
    assert m["confusion_matrix"] == manual.tolist()
    assert m["qwk"] == pytest.approx(cohen_kappa_score(t, p, weights="quadratic"))
    assert m["class_names"] == names
    assert classification_metrics([], [], 5) == {"n": 0}


def test_bootstrap_ci_contains_estimate_and_narrows():
    def mae(a, b):
        return float(np.abs(a - b).mean())

    widths = []
    for n in (40, 400, 4000):
        t, p = _ages(5, n)
        lo, hi = bootstrap_ci(mae, t, p, n_boot=300, seed=0)
        assert lo < mae(t, p) < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 4  # about sqrt(100) = 10 in theory
    t, p = _ages(5, 100)
    assert bootstrap_ci(mae, t, p, n_boot=100, seed=1) == bootstrap_ci(mae, t, p, n_boot=100, seed=1)
    assert all(math.isnan(x) for x in bootstrap_ci(mae, t[:1], p[:1]))
    assert all(math.isnan(x) for x in bootstrap_ci(mae, t, p, n_boot=0))


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t, p = _ages(seed, n)
    stage = rng.integers(0, 5, n)
    return pd.DataFrame({"boneage": t, "pred": p, "male": rng.random(n) < 0.5, "stage": stage,
                         "pred_stage": np.where(rng.random(n) < 0.7, stage, rng.integers(0, 5, n))})


def test_regression_breakdown_counts_and_values():
    frame = _frame()
    out = regression_breakdown(frame, n_boot=50)
    assert sum(g["n"] for g in out["by_sex"].values()) == len(frame)
    assert sum(g["n"] for g in out["by_age_group"].values()) == len(frame)
    assert set(out["by_age_group"]) == {label for label, _, _ in AGE_GROUPS}
    males = frame[frame["male"]]
    assert out["by_sex"]["male"]["n"] == len(males)
    assert out["by_sex"]["male"]["mae"] == pytest.approx(mean_absolute_error(males["boneage"], males["pred"]))
    young = frame[frame["boneage"] < 24]
    assert out["by_age_group"]["0-2 y"]["n"] == len(young)
    assert out["by_age_group"]["0-2 y"]["mae"] == pytest.approx(mean_absolute_error(young["boneage"], young["pred"]))
    lo, hi = out["by_sex"]["female"]["mae_ci95"]
    assert lo < out["by_sex"]["female"]["mae"] < hi


def test_classification_breakdown_counts_and_empty_groups():
    frame = _frame()
    frame = frame[frame["boneage"] >= 24].reset_index(drop=True)  # leaves the 0-2 y group empty
    out = classification_breakdown(frame, 5, n_boot=50)
    assert sum(g["n"] for g in out["by_sex"].values()) == len(frame)
    assert sum(g["n"] for g in out["by_age_group"].values()) == len(frame)
    assert out["by_age_group"]["0-2 y"] == {"n": 0}
    females = frame[~frame["male"]]
    assert out["by_sex"]["female"]["accuracy"] == pytest.approx((females["stage"] == females["pred_stage"]).mean())
    assert out["by_sex"]["female"]["qwk"] == pytest.approx(
        cohen_kappa_score(females["stage"], females["pred_stage"], weights="quadratic"))
    lo, hi = out["by_sex"]["female"]["accuracy_ci95"]
    assert lo <= out["by_sex"]["female"]["accuracy"] <= hi


def test_subgroup_findings_read_the_breakdown():
    from boneage_core.metrics import subgroup_findings

    reg = {"by_sex": {"female": {"n": 10, "mae": 9.0, "mae_ci95": [8.0, 10.0]},
                      "male": {"n": 12, "mae": 12.0, "mae_ci95": [11.0, 13.0]}},
           "by_age_group": {"0-2 y": {"n": 3, "mae": 15.0, "bias": 10.0, "mae_ci95": [5.0, 25.0]},
                            "10-15 y": {"n": 50, "mae": 7.0, "bias": 0.5, "mae_ci95": [6.5, 7.5]},
                            "15-19 y": {"n": 20, "mae": 9.0, "bias": -6.0, "mae_ci95": [8.0, 10.0]}}}
    text = " ".join(subgroup_findings(reg))
    assert "do not overlap" in text
    assert "only 3 holdout images fall in 0-2 y" in text and "Largest error:** 0-2 y" in text
    assert "Regression to the middle" in text
    reg["by_sex"]["male"]["mae_ci95"] = [9.5, 13.0]
    assert "intervals overlap" in " ".join(subgroup_findings(reg))
    assert subgroup_findings({}) == []
