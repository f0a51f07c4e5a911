"""Holdout performance of every prediction column: metric tables, scatter, residuals, Bland-Altman, stages, curves."""

from __future__ import annotations

import logging

from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, CNN, STAGE, system_column

logger = logging.getLogger(__name__)


def _styled(table: pd.DataFrame):
    """Three decimals, whole numbers for the image count."""
    style = table.style.format("{:.3f}", na_rep="–")
    if "Images" in table.index:
        style = style.format("{:.0f}", subset=pd.IndexSlice[["Images"], :])
    return style


def _tables(metrics: dict) -> None:
    st.subheader("Holdout metrics")
    sections = (("Bone age", plots.regression_table(metrics), AGE, "perf_age_table"),
                ("Developmental stage: stage head and stage from the predicted age", plots.classification_table(metrics),
                 STAGE, "perf_stage_table"))
    for title, table, head, key in sections:
        st.markdown(f"**{title}**")
        if table.empty:
            st.info(f"No {head} metrics in metrics.json.")
        else:
            st.dataframe(_styled(table), key=key)
    st.caption("MAE/RMSE/bias in months; bias = mean(predicted − true). Within N months = share of images whose "
               "prediction is at most N months off. QWK = quadratic weighted kappa (1 = perfect, 0 = chance). "
               f"'{plots.AGE_STAGE_TITLE}' scores the stage whose bone-age range holds the predicted age.")


def _age_plots(metrics: dict, predictions: pd.DataFrame) -> None:
    columns = [c for c in plots.columns_for(metrics, AGE) if c in predictions]
    if not columns:
        st.info("predictions.csv has no bone-age column that metrics.json describes.")
        return
    others = [c for c in columns if not plots.is_served_ensemble(c)]
    if others and not st.toggle(f"Show the members and the baseline too ({len(others)} more series)",
                                key="perf_show_members"):
        columns = [c for c in columns if plots.is_served_ensemble(c)] or columns
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.scatter_predicted_vs_true(predictions, columns, metrics), key="perf_scatter")
    c2.plotly_chart(plots.residuals_vs_true(predictions, columns, metrics), key="perf_residuals")
    column = st.radio("Bland-Altman for", columns, format_func=lambda c: plots.column_label(c, AGE),
                      key="perf_ba_column", horizontal=True)
    stats = plots.bland_altman_stats(predictions["boneage"], predictions[column])
    st.plotly_chart(plots.bland_altman(predictions, column, metrics), key="perf_bland_altman")
    st.caption(f"Bias {stats['bias']:+.1f} months; 95% limits of agreement {stats['lower']:+.1f} to "
               f"{stats['upper']:+.1f} months (bias ± 1.96 SD of the differences, n = {stats['n']}).")


def _intervals(metrics: dict) -> None:
    column = system_column(CNN, AGE)
    table = plots.interval_table(metrics, column)
    if table.empty:
        st.info("No prediction intervals were evaluated (metrics.json has no interval coverage; the artifacts "
                "have no calibration).")
        return
    level = metrics[column]["interval"]["level"]
    st.dataframe(table.style.format({"coverage": "{:.3f}", "mean_width": "{:.1f}"}, na_rep="–"),
                 key="perf_interval_table", hide_index=True)
    st.caption(f"Share of holdout children whose true bone age lay inside the {level:.0%} interval shown with "
               "each estimate, and its mean width in months. The intervals and the bias correction were fitted "
               "on the validation split (split-conformal), so these holdout figures are an independent check.")


def _stage_plots(metrics: dict) -> None:
    columns = [c for c in plots.columns_for(metrics, STAGE) if metrics[c].get("confusion_matrix")]
    if not columns:
        st.info("No confusion matrices in metrics.json.")
        return
    normalise = st.toggle("Row-normalise (share of each true stage)", key="perf_cm_normalise")
    for start in range(0, len(columns), 2):
        for col, column in zip(st.columns(2), columns[start:start + 2]):
            entry = metrics[column]
            names = entry.get("class_names") or list(entry.get("per_class") or {})
            title = f"{plots.column_label(column, STAGE)} (QWK {entry.get('qwk', float('nan')):.2f})"
            try:
                fig = plots.confusion_figure(entry["confusion_matrix"], names, normalise, title)
            except ValueError as exc:
                col.warning(f"Confusion matrix of {column} not shown: {exc}")
                continue
            col.plotly_chart(fig, key=f"perf_cm_{column}")
    st.plotly_chart(plots.per_class_figure(metrics, columns), key="perf_per_class")


def main() -> None:
    st.title("Model performance")
    st.caption("Every number here is on the held-out test split (never used for training or model selection), "
               "the CNN ensemble next to the HOG + XGBoost baseline.")
    metrics = state.load_metrics()
    predictions = state.load_predictions()
    if metrics is not None:
        _tables(metrics)
        st.subheader("Bone age: predicted vs true")
        if predictions is not None:
            _age_plots(metrics, predictions)
        st.subheader("Prediction intervals: coverage on the holdout")
        _intervals(metrics)
        st.subheader("Stage: confusion matrices and per-stage recall")
        _stage_plots(metrics)
    st.subheader("Training curves")
    _curves(metrics)


def _curves(metrics: dict | None) -> None:
    """The served members' training curves (every model's on request), in the members' colours."""
    histories = state.load_histories()
    manifest = state.load_manifest()
    served = {Path(name).stem for name in manifest.members} if manifest is not None else set(histories)
    others = [name for name in histories if name not in served]
    if others and not st.toggle(f"Show the models that are not served too ({len(others)}: parents, older members)",
                                key="perf_all_curves"):
        histories = {name: h for name, h in histories.items() if name in served}
    if histories:
        st.plotly_chart(plots.training_curves(histories, metrics), key="perf_curves")
        st.caption("One panel per quantity, each with its own axis; losses are on each head's training scale. "
                   "Hover a point for its phase and image size.")
    else:
        st.info("No training history (history_<model>.csv) in the artifacts folder.")


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Performance page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
