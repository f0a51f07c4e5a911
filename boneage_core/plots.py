"""Plotly figures and summary tables for the dashboard, built from metrics.json, predictions.csv and histories."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

logger = logging.getLogger(__name__)

#: Display names of the models in metrics.json / predictions.csv.
MODEL_LABELS = {
    "regressor": "CNN regressor",
    "classifier": "CNN classifier",
    "baseline_regressor": "HOG + XGBoost regressor",
    "baseline_classifier": "HOG + XGBoost classifier",
}
REGRESSORS = ("regressor", "baseline_regressor")
CLASSIFIERS = ("classifier", "baseline_classifier")
SEX_COLOURS = {"female": "#d6336c", "male": "#1c7ed6"}
MODEL_COLOURS = {"regressor": "#1c7ed6", "classifier": "#1c7ed6",
                 "baseline_regressor": "#f08c00", "baseline_classifier": "#f08c00"}

_REGRESSION_ROWS = (("n", "Images"), ("mae", "MAE (months)"), ("rmse", "RMSE (months)"), ("r2", "R²"),
                    ("pearson_r", "Pearson r"), ("bias", "Bias, predicted − true (months)"),
                    ("within_6m", "Within 6 months"), ("within_12m", "Within 12 months"),
                    ("within_24m", "Within 24 months"))
_CLASSIFICATION_ROWS = (("n", "Images"), ("accuracy", "Accuracy"), ("precision_macro", "Precision (macro)"),
                        ("recall_macro", "Recall (macro)"), ("f1_macro", "F1 (macro)"),
                        ("qwk", "Quadratic weighted kappa"))


def model_label(name: str) -> str:
    """Human-readable name of a model key ('baseline_regressor' -> 'HOG + XGBoost regressor')."""
    return MODEL_LABELS.get(name, name.replace("_", " "))


def _present(metrics: Mapping, names: Sequence[str]) -> list[str]:
    return [n for n in names if isinstance(metrics.get(n), Mapping) and metrics[n].get("n")]


def _metric_table(metrics: Mapping, names: Sequence[str], rows: Sequence[tuple[str, str]]) -> pd.DataFrame:
    models = _present(metrics, names)
    data = {model_label(m): [metrics[m].get(key, np.nan) for key, _ in rows] for m in models}
    return pd.DataFrame(data, index=[label for _, label in rows]).rename_axis("Metric")


def regression_table(metrics: Mapping) -> pd.DataFrame:
    """One column per regression model present in metrics.json, one row per metric."""
    return _metric_table(metrics, REGRESSORS, _REGRESSION_ROWS)


def classification_table(metrics: Mapping) -> pd.DataFrame:
    """One column per classification model present in metrics.json, one row per metric."""
    return _metric_table(metrics, CLASSIFIERS, _CLASSIFICATION_ROWS)


def group_table(metrics: Mapping, model: str, group: str, metric: str) -> pd.DataFrame:
    """Rows per subgroup ('by_sex' or 'by_age_group') with n, the metric and its 95% CI."""
    groups = (metrics.get(model) or {}).get(group) or {}
    rows = []
    for name, values in groups.items():
        ci = values.get(f"{metric}_ci95") or [np.nan, np.nan]
        rows.append({"group": name, "n": int(values.get("n", 0)), metric: values.get(metric, np.nan),
                     "ci_low": ci[0], "ci_high": ci[1]})
    return pd.DataFrame(rows, columns=["group", "n", metric, "ci_low", "ci_high"])


def group_metric_figure(metrics: Mapping, models: Sequence[str], group: str, metric: str,
                        title: str | None = None) -> go.Figure:
    """Grouped bars of a metric per subgroup for each model, with asymmetric 95% CI error bars."""
    fig = go.Figure()
    for model in models:
        table = group_table(metrics, model, group, metric)
        if table.empty:
            continue
        value = table[metric].to_numpy(dtype=float)
        fig.add_bar(
            x=[f"{g} (n={n})" for g, n in zip(table["group"], table["n"])], y=value, name=model_label(model),
            marker_color=MODEL_COLOURS.get(model),
            error_y=dict(type="data", symmetric=False, array=table["ci_high"].to_numpy(dtype=float) - value,
                         arrayminus=value - table["ci_low"].to_numpy(dtype=float)),
            hovertemplate="%{x}<br>" + metric + " %{y:.3f}<extra>" + model_label(model) + "</extra>")
    fig.update_layout(barmode="group", title=title, yaxis_title=metric.upper() if len(metric) <= 4 else metric,
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=50, b=10))
    return fig


def _xy_limits(frame: pd.DataFrame, columns: Sequence[str]) -> list[float]:
    values = pd.concat([frame["boneage"]] + [frame[c] for c in columns]).dropna()
    return [0.0, float(max(values.max(), 1.0)) * 1.03]


def scatter_predicted_vs_true(predictions: pd.DataFrame, columns: Sequence[str] = REGRESSORS) -> go.Figure:
    """Predicted against true bone age for each regression column, with the identity line."""
    columns = [c for c in columns if c in predictions]
    fig = go.Figure()
    for col in reversed(columns):  # the first (main) model drawn last, on top
        fig.add_scattergl(x=predictions["boneage"], y=predictions[col], mode="markers", name=model_label(col),
                          marker=dict(size=4, opacity=0.45, color=MODEL_COLOURS.get(col)),
                          hovertemplate="true %{x:.0f} m<br>predicted %{y:.1f} m")
    if columns:
        lim = _xy_limits(predictions, columns)
        fig.add_scatter(x=lim, y=lim, mode="lines", name="identity", line=dict(color="gray", dash="dash"))
    fig.update_layout(title="Predicted vs true bone age (holdout)", xaxis_title="True bone age (months)",
                      yaxis_title="Predicted bone age (months)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(t=50, b=10))
    return fig


def residuals_vs_true(predictions: pd.DataFrame, columns: Sequence[str] = REGRESSORS) -> go.Figure:
    """Residual (predicted − true) against true age, with a zero line."""
    columns = [c for c in columns if c in predictions]
    fig = go.Figure()
    for col in reversed(columns):
        fig.add_scattergl(x=predictions["boneage"], y=predictions[col] - predictions["boneage"], mode="markers",
                          name=model_label(col), marker=dict(size=4, opacity=0.45, color=MODEL_COLOURS.get(col)))
    fig.add_hline(y=0, line=dict(color="gray", dash="dash"))
    fig.update_layout(title="Residuals vs true bone age", xaxis_title="True bone age (months)",
                      yaxis_title="Predicted − true (months)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(t=50, b=10))
    return fig


def bland_altman_stats(true: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Bias (mean of predicted − true), its SD and the 95% limits of agreement (bias ± 1.96 SD)."""
    t = np.asarray(true, dtype=float)
    p = np.asarray(predicted, dtype=float)
    keep = np.isfinite(t) & np.isfinite(p)
    diff = p[keep] - t[keep]
    if diff.size < 2:
        raise ValueError("Bland-Altman needs at least two paired values")
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return {"n": int(diff.size), "bias": bias, "sd": sd, "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd}


def bland_altman(predictions: pd.DataFrame, column: str = "regressor") -> go.Figure:
    """Mean of (true, predicted) against their difference, with bias and ±1.96 SD limits of agreement."""
    stats = bland_altman_stats(predictions["boneage"], predictions[column])
    mean = (predictions["boneage"] + predictions[column]) / 2
    diff = predictions[column] - predictions["boneage"]
    fig = go.Figure()
    fig.add_scattergl(x=mean, y=diff, mode="markers", name=model_label(column),
                      marker=dict(size=4, opacity=0.45, color=MODEL_COLOURS.get(column)))
    for value, text, dash in ((stats["bias"], "bias", "solid"), (stats["upper"], "+1.96 SD", "dash"),
                              (stats["lower"], "−1.96 SD", "dash")):
        fig.add_hline(y=value, line=dict(color="black", dash=dash),
                      annotation_text=f"{text}: {value:+.1f} m", annotation_position="top right")
    fig.update_layout(title=f"Bland-Altman: {model_label(column)} (n={stats['n']})",
                      xaxis_title="Mean of true and predicted (months)", yaxis_title="Predicted − true (months)",
                      showlegend=False, margin=dict(t=50, b=10))
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], normalise: bool = False,
                     title: str = "") -> go.Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted); row-normalised on request."""
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {len(class_names)} classes")
    if normalise:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        text = [[f"{v:.0%}" for v in row] for row in values]
    else:
        values = counts
        text = [[f"{int(v)}" for v in row] for row in values]
    names = list(class_names)
    fig = go.Figure(go.Heatmap(z=values, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
                               zmin=0, zmax=1 if normalise else None, showscale=False,
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="Predicted stage", yaxis_title="True stage",
                      yaxis=dict(autorange="reversed"), margin=dict(t=50, b=10))
    return fig


def per_class_figure(metrics: Mapping, models: Sequence[str] = CLASSIFIERS) -> go.Figure:
    """Precision and recall per stage for each classification model."""
    models = _present(metrics, models)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Precision", "Recall"), shared_yaxes=True)
    for model in models:
        per_class = metrics[model].get("per_class") or {}
        names = list(per_class)
        for col, key in ((1, "precision"), (2, "recall")):
            fig.add_bar(x=names, y=[per_class[n].get(key, np.nan) for n in names], name=model_label(model),
                        marker_color=MODEL_COLOURS.get(model), showlegend=col == 1, row=1, col=col,
                        customdata=[per_class[n].get("support", 0) for n in names],
                        hovertemplate="%{x}<br>%{y:.2f} (support %{customdata})<extra>" + model_label(model) + "</extra>")
    fig.update_layout(barmode="group", title="Per-stage precision and recall", yaxis=dict(range=[0, 1]),
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=60, b=10))
    return fig


def training_curves(histories: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Train and validation loss per epoch for each history, plus the validation score on a second row."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("Loss", "Validation score (regressor: MAE months; classifier: val loss)"))
    for name, history in histories.items():
        colour = MODEL_COLOURS.get(name)
        fig.add_scatter(x=history["epoch"], y=history["train_loss"], mode="lines+markers", row=1, col=1,
                        name=f"{name} train", line=dict(color=colour, dash="dot"))
        fig.add_scatter(x=history["epoch"], y=history["val_loss"], mode="lines+markers", row=1, col=1,
                        name=f"{name} val", line=dict(color=colour))
        if "val_score" in history:
            fig.add_scatter(x=history["epoch"], y=history["val_score"], mode="lines+markers", row=2, col=1,
                            name=f"{name} val score", line=dict(color=colour, dash="dash"))
    fig.update_xaxes(title_text="Epoch", dtick=1, row=2, col=1)
    fig.update_layout(height=520, legend=dict(orientation="h", y=-0.15), margin=dict(t=50, b=10))
    return fig


def stage_probability_figure(probabilities: Mapping[str, float], highlight: str | None = None) -> go.Figure:
    """Horizontal bars of stage probabilities, the predicted stage highlighted."""
    names = list(probabilities)
    colours = ["#1c7ed6" if n == highlight else "#adb5bd" for n in names]
    fig = go.Figure(go.Bar(x=[probabilities[n] for n in names], y=names, orientation="h", marker_color=colours,
                           text=[f"{probabilities[n]:.0%}" for n in names], textposition="auto",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_layout(xaxis=dict(range=[0, 1], tickformat=".0%", title="Probability"),
                      yaxis=dict(autorange="reversed"), height=260, margin=dict(t=10, b=10, l=10, r=10))
    return fig


def with_errors(predictions: pd.DataFrame, column: str = "regressor") -> pd.DataFrame:
    """predictions with sex, error (predicted − true) and absolute error columns for one model."""
    if column not in predictions or "boneage" not in predictions:
        raise KeyError(f"predictions lack column {column!r} or 'boneage'")
    out = predictions.copy()
    out["sex"] = np.where(out["male"].astype(str).str.lower().isin(["true", "1", "m"]), "male", "female")
    out["error"] = out[column] - out["boneage"]
    out["abs_error"] = out["error"].abs()
    return out


def error_vs_age_by_sex(predictions: pd.DataFrame, column: str = "regressor", bin_months: int = 24) -> go.Figure:
    """Mean absolute error per true-age bin for each sex (points scattered faintly behind)."""
    frame = with_errors(predictions, column).dropna(subset=["error"])
    edges = np.arange(0, (np.floor(frame["boneage"].max() / bin_months) + 2) * bin_months, bin_months)  # max included
    frame["bin"] = pd.cut(frame["boneage"], edges, right=False)
    fig = go.Figure()
    for sex, colour in SEX_COLOURS.items():
        part = frame[frame["sex"] == sex]
        fig.add_scattergl(x=part["boneage"], y=part["abs_error"], mode="markers", name=f"{sex} cases",
                          marker=dict(size=3, opacity=0.2, color=colour), showlegend=False)
        summary = part.groupby("bin", observed=True)["abs_error"].agg(["mean", "count"]).reset_index()
        mids = [interval.mid for interval in summary["bin"]]
        fig.add_scatter(x=mids, y=summary["mean"], mode="lines+markers", name=f"{sex}: mean |error|",
                        line=dict(color=colour, width=3), customdata=summary["count"],
                        hovertemplate="age bin centre %{x:.0f} m<br>MAE %{y:.1f} m (n=%{customdata})")
    fig.update_layout(title=f"Absolute error vs true bone age by sex ({model_label(column)}, {bin_months}-month bins)",
                      xaxis_title="True bone age (months)", yaxis_title="|Predicted − true| (months)",
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=50, b=10))
    return fig


def worst_cases(predictions: pd.DataFrame, column: str = "regressor", n: int = 15) -> pd.DataFrame:
    """The n holdout cases with the largest absolute error of one model."""
    frame = with_errors(predictions, column).dropna(subset=["error"])
    keep = [c for c in ("id", "sex", "boneage", column, "error", "abs_error", "stage", "classifier") if c in frame]
    return frame.nlargest(n, "abs_error")[keep].reset_index(drop=True)
