"""Plotly figures and summary tables for the app, built from metrics.json, predictions.csv and histories."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .heads import AGE, BASELINE, CNN, STAGE, UNCORRECTED, age_stage_column, get_head, system_column
from .vocab import parse_sex

logger = logging.getLogger(__name__)

#: Display names of the systems in metrics.json / predictions.csv (columns are <system>_<head>).
SYSTEM_LABELS = {CNN: "CNN ensemble", UNCORRECTED: "CNN ensemble before bias correction", BASELINE: "HOG + XGBoost"}
#: What a column of each kind holds, after the system's name.
HEAD_TITLES = {AGE: "bone age", STAGE: "stage head"}
AGE_STAGE_TITLE = "stage from predicted age"
SEX_COLOURS = {"female": "#d6336c", "male": "#1c7ed6"}
#: One colour per model on every page: the served ensemble dark blue (drawn emphasised), its variants lighter blues,
#: the baseline greys, members the palette in name order; a model outside the metrics light grey.
SYSTEM_COLOURS = {CNN: "#1864ab", UNCORRECTED: "#74c0fc", BASELINE: "#495057"}
AGE_STAGE_COLOURS = {CNN: "#339af0", BASELINE: "#adb5bd"}
MEMBER_PALETTE = ("#f08c00", "#2f9e44", "#ae3ec9", "#e03131", "#0c8599", "#5c940d", "#845ef7", "#e8590c")
OTHER_COLOUR = "#ced4da"
#: Subgroups with fewer cases than this are marked "few cases" (their numbers are noisy).
FEW_CASES = 30

_REGRESSION_ROWS = (("n", "Images"), ("mae", "MAE (months)"), ("rmse", "RMSE (months)"), ("r2", "R²"),
                    ("pearson_r", "Pearson r"), ("bias", "Bias, predicted − true (months)"),
                    ("within_6m", "Within 6 months"), ("within_12m", "Within 12 months"),
                    ("within_24m", "Within 24 months"))
_CLASSIFICATION_ROWS = (("n", "Images"), ("accuracy", "Accuracy"), ("precision_macro", "Precision (macro)"),
                        ("recall_macro", "Recall (macro)"), ("f1_macro", "F1 (macro)"),
                        ("qwk", "Quadratic weighted kappa"))


def _split(column: str, head: str | None = None) -> tuple[str, str | None]:
    """(system or member, what the column holds: a HEAD_TITLES key, AGE_STAGE_TITLE, or None) of a prediction column /
    metrics key ('multihead_crop_l1_age' -> ('multihead_crop_l1', 'age')); the one parser of column names here."""
    for system in SYSTEM_LABELS:
        if column == age_stage_column(system):
            return system, AGE_STAGE_TITLE
    for name in ([head] if head in HEAD_TITLES else list(HEAD_TITLES)):
        suffix = system_column("", name)
        if column.endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)], name
    return column, None


def _system_and_title(column: str, head: str | None) -> tuple[str, str]:
    """(system or member name, what the column holds) of a prediction column / metrics key."""
    system, kind = _split(column, head)
    if kind is None:
        return column.replace("_", " "), ""
    title = AGE_STAGE_TITLE if kind == AGE_STAGE_TITLE else HEAD_TITLES[kind]
    return SYSTEM_LABELS.get(system, f"member {system}"), title


def column_label(column: str, head: str | None = None) -> str:
    """Human-readable name of a prediction column ('cnn_age' -> 'CNN ensemble — bone age')."""
    system, title = _system_and_title(column, head)
    return f"{system} — {title}" if title else system


def column_title(column: str, head: str | None = None) -> str:
    """What a prediction column holds, without the system ('cnn_age_stage' -> 'stage from predicted age')."""
    return _system_and_title(column, head)[1] or column_label(column, head)


def _system_of(column: str) -> str:
    """The system or member a prediction column belongs to ('multihead_crop_l1_age' -> 'multihead_crop_l1')."""
    return _split(column)[0]


def column_colour(column: str, metrics: Mapping | None = None) -> str:
    """The colour of the model a column belongs to, the same on every page (SYSTEM_COLOURS, MEMBER_PALETTE).

    A member's colour is its rank among the members named in `metrics` (every page passes the same
    metrics.json, so the same member gets the same colour everywhere); a model not in `metrics` is OTHER_COLOUR.
    """
    system = _system_of(column)
    if column == age_stage_column(system) and system in AGE_STAGE_COLOURS:
        return AGE_STAGE_COLOURS[system]
    if system in SYSTEM_COLOURS:
        return SYSTEM_COLOURS[system]
    members = sorted({_system_of(k) for k in (metrics or {})} - set(SYSTEM_COLOURS))
    return MEMBER_PALETTE[members.index(system) % len(MEMBER_PALETTE)] if system in members else OTHER_COLOUR


def is_served_ensemble(column: str) -> bool:
    """Whether a column is the served ensemble's (drawn emphasised)."""
    return _system_of(column) == CNN


def _marker(column: str, metrics: Mapping | None) -> dict:
    """Scatter markers: the served ensemble larger and opaque, the others small and faint."""
    main = is_served_ensemble(column)
    return dict(size=5 if main else 3, opacity=0.6 if main else 0.25, color=column_colour(column, metrics))


def columns_for(metrics: Mapping, head: str) -> list[str]:
    """Metrics keys scored as `head` (entry "head"), with cases; the CNN ensemble's first, the baseline's last."""
    keys = [k for k, v in metrics.items() if isinstance(v, Mapping) and v.get("head") == head and v.get("n")]
    rank = {system_column(CNN, head): 0, age_stage_column(CNN): 1, system_column(BASELINE, head): 3,
            age_stage_column(BASELINE): 4}
    return sorted(keys, key=lambda k: rank.get(k, 2))


def _metric_table(metrics: Mapping, columns: Sequence[str], rows: Sequence[tuple[str, str]]) -> pd.DataFrame:
    data = {column_label(c, metrics[c].get("head")): [metrics[c].get(key, np.nan) for key, _ in rows] for c in columns}
    return pd.DataFrame(data, index=[label for _, label in rows]).rename_axis("Metric")


def regression_table(metrics: Mapping) -> pd.DataFrame:
    """One column per bone-age prediction column in metrics.json, one row per metric."""
    return _metric_table(metrics, columns_for(metrics, AGE), _REGRESSION_ROWS)


def classification_table(metrics: Mapping) -> pd.DataFrame:
    """One column per stage prediction column (stage heads and stages from the predicted age), one row per metric."""
    return _metric_table(metrics, columns_for(metrics, STAGE), _CLASSIFICATION_ROWS)


def interval_table(metrics: Mapping, column: str) -> pd.DataFrame:
    """Coverage and mean width of a column's prediction intervals on the holdout: overall, then by true-age group."""
    iv = (metrics.get(column) or {}).get("interval") or {}
    if not iv:
        return pd.DataFrame(columns=["group", "n", "coverage", "mean_width"])
    rows = [{"group": "all", "n": iv["n"], "coverage": iv["coverage"], "mean_width": iv["mean_width"]}]
    rows += [{"group": group_label(name, g["n"]), "n": g["n"], "coverage": g["coverage"], "mean_width": g["mean_width"]}
             for name, g in (iv.get("by_age_group") or {}).items() if g["n"]]
    return pd.DataFrame(rows, columns=["group", "n", "coverage", "mean_width"])


def group_label(name: str, n: int) -> str:
    """'0-2 y (n=14, few cases)' / '5-10 y (n=522)'."""
    return f"{name} (n={n}{', few cases' if n < FEW_CASES else ''})"


def group_table(metrics: Mapping, column: str, group: str, metric: str) -> pd.DataFrame:
    """Rows per subgroup ('by_sex' or 'by_age_group') with n, the metric, its 95% CI and a few-cases flag."""
    groups = (metrics.get(column) or {}).get(group) or {}
    rows = []
    for name, values in groups.items():
        ci = values.get(f"{metric}_ci95") or [np.nan, np.nan]
        n = int(values.get("n", 0))
        rows.append({"group": name, "n": n, metric: values.get(metric, np.nan), "ci_low": ci[0], "ci_high": ci[1],
                     "few_cases": n < FEW_CASES})
    return pd.DataFrame(rows, columns=["group", "n", metric, "ci_low", "ci_high", "few_cases"])


def _error_bars(table: pd.DataFrame, metric: str) -> dict:
    value = table[metric].to_numpy(dtype=float)
    return dict(type="data", symmetric=False, array=table["ci_high"].to_numpy(dtype=float) - value,
                arrayminus=value - table["ci_low"].to_numpy(dtype=float))


def _metric_title(metric: str) -> str:
    return metric.upper() if len(metric) <= 4 else metric.replace("_", " ")


def group_metric_figure(metrics: Mapping, columns: Sequence[str], group: str, metric: str,
                        title: str | None = None) -> go.Figure:
    """Grouped bars of a metric per subgroup for each column, with asymmetric 95% CI error bars and n per group."""
    fig = go.Figure()
    for column in columns:
        table = group_table(metrics, column, group, metric)
        if table.empty:
            continue
        label = column_label(column, metrics[column].get("head"))
        fig.add_bar(x=[group_label(g, n) for g, n in zip(table["group"], table["n"])], y=table[metric], name=label,
                    marker_color=column_colour(column, metrics), error_y=_error_bars(table, metric),
                    customdata=np.stack([table["ci_low"], table["ci_high"]], axis=1),
                    hovertemplate="%{x}<br>" + metric + " %{y:.3f} (95% CI %{customdata[0]:.3f}–"
                                  "%{customdata[1]:.3f})<extra>" + label + "</extra>")
    fig.update_layout(barmode="group", title=title, yaxis_title=_metric_title(metric),
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=50, b=10))
    return fig


def age_group_figure(metrics: Mapping, columns: Sequence[str], metric: str, title: str | None = None) -> go.Figure:
    """A metric per age group as one line per column, with 95% CI error bars; groups with few cases drawn hollow.

    The x labels carry each group's n; groups under FEW_CASES are labelled "few cases" so a jump there is read
    as noise, not as a trend.
    """
    fig = go.Figure()
    for column in columns:
        table = group_table(metrics, column, "by_age_group", metric)
        if table.empty:
            continue
        label = column_label(column, metrics[column].get("head"))
        colour = column_colour(column, metrics)
        fig.add_scatter(
            x=[group_label(g, n) for g, n in zip(table["group"], table["n"])], y=table[metric], name=label,
            mode="lines+markers", line=dict(color=colour, width=4 if is_served_ensemble(column) else 1.5),
            error_y=_error_bars(table, metric),
            marker=dict(size=10, color=colour, symbol=["circle-open" if f else "circle" for f in table["few_cases"]]),
            customdata=np.stack([table["n"], table["ci_low"], table["ci_high"]], axis=1),
            hovertemplate="%{x}<br>" + metric + " %{y:.3f} (95% CI %{customdata[1]:.3f}–%{customdata[2]:.3f}), "
                          "n=%{customdata[0]}<extra>" + label + "</extra>")
    fig.update_layout(title=title, yaxis_title=_metric_title(metric), xaxis_title="True bone age group",
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=50, b=10))
    return fig


def _xy_limits(frame: pd.DataFrame, columns: Sequence[str]) -> list[float]:
    values = pd.concat([frame["boneage"]] + [frame[c] for c in columns]).dropna()
    return [0.0, float(max(values.max(), 1.0)) * 1.03]


def scatter_predicted_vs_true(predictions: pd.DataFrame, columns: Sequence[str],
                              metrics: Mapping | None = None) -> go.Figure:
    """Predicted against true bone age for each regression column, with the identity line (colours: column_colour)."""
    columns = [c for c in columns if c in predictions]
    fig = go.Figure()
    for col in reversed(columns):  # the first (main) model drawn last, on top
        fig.add_scattergl(x=predictions["boneage"], y=predictions[col], mode="markers", name=column_label(col, AGE),
                          marker=_marker(col, metrics), hovertemplate="true %{x:.0f} m<br>predicted %{y:.1f} m")
    if columns:
        lim = _xy_limits(predictions, columns)
        fig.add_scatter(x=lim, y=lim, mode="lines", name="identity", line=dict(color="gray", dash="dash"))
    fig.update_layout(title="Predicted vs true bone age (holdout)", xaxis_title="True bone age (months)",
                      yaxis_title="Predicted bone age (months)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(t=50, b=10))
    return fig


def residuals_vs_true(predictions: pd.DataFrame, columns: Sequence[str], metrics: Mapping | None = None) -> go.Figure:
    """Residual (predicted − true) against true age, with a zero line."""
    columns = [c for c in columns if c in predictions]
    fig = go.Figure()
    for col in reversed(columns):
        fig.add_scattergl(x=predictions["boneage"], y=predictions[col] - predictions["boneage"], mode="markers",
                          name=column_label(col, AGE), marker=_marker(col, metrics))
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


def bland_altman(predictions: pd.DataFrame, column: str, metrics: Mapping | None = None) -> go.Figure:
    """Mean of (true, predicted) against their difference, with bias and ±1.96 SD limits of agreement."""
    stats = bland_altman_stats(predictions["boneage"], predictions[column])
    mean = (predictions["boneage"] + predictions[column]) / 2
    diff = predictions[column] - predictions["boneage"]
    fig = go.Figure()
    fig.add_scattergl(x=mean, y=diff, mode="markers", name=column_label(column, AGE),
                      marker=dict(size=4, opacity=0.45, color=column_colour(column, metrics)))
    for value, text, dash in ((stats["bias"], "bias", "solid"), (stats["upper"], "+1.96 SD", "dash"),
                              (stats["lower"], "−1.96 SD", "dash")):
        fig.add_hline(y=value, line=dict(color="black", dash=dash),
                      annotation_text=f"{text}: {value:+.1f} m", annotation_position="top right")
    fig.update_layout(title=f"Bland-Altman: {column_label(column, AGE)} (n={stats['n']})",
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


def per_class_figure(metrics: Mapping, columns: Sequence[str]) -> go.Figure:
    """Precision and recall per stage for each stage column (support in the hover)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Precision", "Recall"), shared_yaxes=True)
    for column in columns:
        per_class = (metrics.get(column) or {}).get("per_class") or {}
        names = list(per_class)
        label = column_label(column, STAGE)
        for col, key in ((1, "precision"), (2, "recall")):
            fig.add_bar(x=names, y=[per_class[n].get(key, np.nan) for n in names], name=label,
                        marker_color=column_colour(column, metrics), showlegend=col == 1, row=1, col=col,
                        customdata=[per_class[n].get("support", 0) for n in names],
                        hovertemplate="%{x}<br>%{y:.2f} (support %{customdata})<extra>" + label + "</extra>")
    fig.update_layout(barmode="group", title="Per-stage precision and recall", yaxis=dict(range=[0, 1]),
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=60, b=10))
    return fig


def _history_quantities(histories: Mapping[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """(column, subplot title) of each quantity some history has, in a fixed order (old and new history formats)."""
    wanted = [("train_loss", "Training loss"), ("val_loss", "Validation loss")]
    wanted += [(f"val_{h}", f"Validation {get_head(h).score_name}, {h} head") for h in HEAD_TITLES]
    wanted += [("val_score", "Validation score (model selection)"), ("lr", "Learning rate")]
    return [(c, t) for c, t in wanted if any(_curve(h, c) is not None for h in histories.values())]


def _curve(history: pd.DataFrame, column: str) -> pd.Series | None:
    """A history's values of a quantity, None when absent or a copy of another column (val_score repeats a head's score)."""
    if column not in history or history[column].isna().all():
        return None
    if column == "val_score":
        copies = [c for c in history.columns if c != column and c.startswith("val_")]
        if any(np.allclose(history[c], history[column], equal_nan=True) for c in copies
               if pd.api.types.is_numeric_dtype(history[c])):
            return None
    return history[column]


def training_curves(histories: Mapping[str, pd.DataFrame], metrics: Mapping | None = None) -> go.Figure:
    """One subplot per quantity (own y axis) against the epoch, one colour per model (its column_colour, from the
    members in `metrics`) with its own legend group.

    Handles the old histories (train_loss, val_loss, val_score) and the new ones (phase, image_size, train_loss,
    val_<head>); the phase and image size of each epoch are in the hover.
    """
    quantities = _history_quantities(histories)
    fig = make_subplots(rows=max(1, len(quantities)), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[t for _, t in quantities])
    for name, history in histories.items():
        colour = column_colour(system_column(name, AGE), metrics)
        detail = [f"phase {p}, {s} px" for p, s in zip(history["phase"], history["image_size"])] \
            if {"phase", "image_size"} <= set(history.columns) else [""] * len(history)
        shown = False
        for row, (column, title) in enumerate(quantities, start=1):
            values = _curve(history, column)
            if values is None:
                continue
            fig.add_scatter(x=history["epoch"], y=values, mode="lines+markers", row=row, col=1, name=name,
                            legendgroup=name, legendgrouptitle_text=None if shown else name, showlegend=not shown,
                            line=dict(color=colour), customdata=detail,
                            hovertemplate="epoch %{x} %{customdata}<br>" + title + " %{y:.4g}<extra>" + name + "</extra>")
            shown = True
    for row, (column, _) in enumerate(quantities, start=1):
        if column == "lr":
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="Epoch", row=max(1, len(quantities)), col=1)
    fig.update_layout(height=220 * max(1, len(quantities)) + 80, legend=dict(title_text="Model"),
                      margin=dict(t=50, b=10))
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


def with_errors(predictions: pd.DataFrame, column: str) -> pd.DataFrame:
    """predictions with sex, error (predicted − true) and absolute error columns for one model."""
    if column not in predictions or "boneage" not in predictions:
        raise KeyError(f"predictions lack column {column!r} or 'boneage'")
    out = predictions.copy()
    out["sex"] = np.where([parse_sex(v) for v in out["male"]], "male", "female")
    out["error"] = out[column] - out["boneage"]
    out["abs_error"] = out["error"].abs()
    return out


def error_vs_age_by_sex(predictions: pd.DataFrame, column: str, bin_months: int = 24) -> go.Figure:
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
        few = summary["count"] < FEW_CASES
        fig.add_scatter(x=mids, y=summary["mean"], mode="lines+markers+text", name=f"{sex}: mean |error|",
                        line=dict(color=colour, width=3), customdata=summary["count"],
                        marker=dict(size=9, symbol=["circle-open" if f else "circle" for f in few]),
                        text=[f"n={n}" if f else "" for n, f in zip(summary["count"], few)],
                        textposition="top center", textfont=dict(color=colour),
                        hovertemplate="age bin centre %{x:.0f} m<br>MAE %{y:.1f} m (n=%{customdata})")
    fig.update_layout(title=f"Absolute error vs true bone age by sex ({column_label(column, AGE)}, {bin_months}-month "
                            f"bins; hollow, labelled n: fewer than {FEW_CASES} cases)",
                      xaxis_title="True bone age (months)", yaxis_title="|Predicted − true| (months)",
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=50, b=10))
    return fig


def worst_cases(predictions: pd.DataFrame, column: str, n: int = 15) -> pd.DataFrame:
    """The n holdout cases with the largest absolute error of one model."""
    frame = with_errors(predictions, column).dropna(subset=["error"])
    keep = [c for c in ("id", "sex", "boneage", column, "error", "abs_error", "stage", system_column(CNN, STAGE))
            if c in frame]
    return frame.nlargest(n, "abs_error")[keep].reset_index(drop=True)
