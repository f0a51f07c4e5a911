"""Holdout performance of every model: metric tables, scatter, residuals, Bland-Altman, confusion, training curves."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

import dashboard
from boneage_core import plots

logger = logging.getLogger(__name__)


def _styled(table: pd.DataFrame):
    """Three decimals, whole numbers for the image count."""
    style = table.style.format("{:.3f}", na_rep="–")
    if "Images" in table.index:
        style = style.format("{:.0f}", subset=pd.IndexSlice[["Images"], :])
    return style


def _tables(metrics: dict) -> None:
    st.subheader("Holdout metrics")
    sections = (("Bone age (regression)", plots.regression_table(metrics), "regression", "perf_reg_table"),
                ("Developmental stage (classification)", plots.classification_table(metrics), "classification",
                 "perf_cls_table"))
    for column, (title, table, kind, key) in zip(st.columns(2), sections):
        with column:
            st.markdown(f"**{title}**")
            if table.empty:
                st.info(f"No {kind} metrics in metrics.json.")
            else:
                st.dataframe(_styled(table), key=key)
    st.caption("MAE/RMSE/bias in months; bias = mean(predicted − true). Within N months = share of images whose "
               "prediction is at most N months off. QWK = quadratic weighted kappa (1 = perfect, 0 = chance).")


def _regression_plots(predictions) -> None:
    columns = [c for c in plots.REGRESSORS if c in predictions]
    if not columns:
        st.info("predictions.csv has no regression columns.")
        return
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.scatter_predicted_vs_true(predictions, columns), key="perf_scatter")
    c2.plotly_chart(plots.residuals_vs_true(predictions, columns), key="perf_residuals")
    model = st.radio("Bland-Altman for", columns, format_func=plots.model_label, key="perf_ba_model",
                     horizontal=True)
    stats = plots.bland_altman_stats(predictions["boneage"], predictions[model])
    st.plotly_chart(plots.bland_altman(predictions, model), key="perf_bland_altman")
    st.caption(f"Bias {stats['bias']:+.1f} months; 95% limits of agreement {stats['lower']:+.1f} to "
               f"{stats['upper']:+.1f} months (bias ± 1.96 SD of the differences, n = {stats['n']}).")


def _classification_plots(metrics: dict) -> None:
    models = [m for m in plots.CLASSIFIERS if isinstance(metrics.get(m), dict) and metrics[m].get("confusion_matrix")]
    if not models:
        st.info("No confusion matrices in metrics.json.")
        return
    normalise = st.toggle("Row-normalise (share of each true stage)", key="perf_cm_normalise")
    columns = st.columns(len(models))
    for col, model in zip(columns, models):
        entry = metrics[model]
        names = entry.get("class_names") or list(entry.get("per_class") or {})
        try:
            fig = plots.confusion_figure(entry["confusion_matrix"], names, normalise, plots.model_label(model))
        except ValueError as exc:
            col.warning(f"Confusion matrix of {model} not shown: {exc}")
            continue
        col.plotly_chart(fig, key=f"perf_cm_{model}")
    st.plotly_chart(plots.per_class_figure(metrics, models), key="perf_per_class")


def main() -> None:
    st.title("Model performance")
    st.caption("Every number here is on the held-out test split (never used for training or model selection), "
               "CNNs next to the HOG + XGBoost baseline.")
    metrics = dashboard.load_metrics()
    predictions = dashboard.load_predictions()
    if metrics is not None:
        _tables(metrics)
    st.subheader("Bone age: predicted vs true")
    if predictions is not None:
        _regression_plots(predictions)
    st.subheader("Stage: confusion matrices")
    if metrics is not None:
        _classification_plots(metrics)
    st.subheader("Training curves")
    histories = dashboard.load_histories()
    if histories:
        st.plotly_chart(plots.training_curves(histories), key="perf_curves")
        st.caption("Losses are on the training target scale (regressor: standardised age; classifier: "
                   "cross-entropy). Training was CPU-only with a time limit per model; see About.")


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Performance page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
