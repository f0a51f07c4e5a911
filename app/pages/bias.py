"""Subgroup performance: metrics by sex and by age group with 95% CIs and counts, error vs age by sex, worst cases."""

from __future__ import annotations

import logging

import streamlit as st

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, CNN, STAGE, system_column
from boneage_core.metrics import subgroup_findings

logger = logging.getLogger(__name__)

#: The metric shown per head.
METRIC = {AGE: ("mae", "MAE (months)"), STAGE: ("accuracy", "Stage accuracy")}


def _with_group(metrics: dict, head: str, group: str) -> list[str]:
    return [c for c in plots.columns_for(metrics, head) if metrics[c].get(group)]


def _groups(metrics: dict, group: str, title: str) -> None:
    heads = {h: _with_group(metrics, h, group) for h in METRIC}
    if not any(heads.values()):
        st.info(f"metrics.json has no {group} breakdown.")
        return
    for head, columns in heads.items():
        if not columns:
            continue
        metric, metric_title = METRIC[head]
        if group == "by_age_group":
            fig = plots.age_group_figure(metrics, columns, metric, f"{metric_title} {title}")
        else:
            fig = plots.group_metric_figure(metrics, columns, group, metric, f"{metric_title} {title}")
        st.plotly_chart(fig, key=f"bias_{group}_{head}")
    if group == "by_age_group":
        st.caption(f"Error bars: 95% bootstrap CIs. Groups with fewer than {plots.FEW_CASES} test cases are marked "
                   "'few cases' (hollow markers): their values jump with a handful of images.")
    with st.expander(f"Numbers {title}"):
        for head, columns in heads.items():
            for column in columns:
                st.markdown(f"**{plots.column_label(column, head)}**")
                st.dataframe(plots.group_table(metrics, column, group, METRIC[head][0]), hide_index=True,
                             key=f"bias_{group}_{column}_table")


def _explain(metrics: dict) -> None:
    lines = [f"- {finding}" for finding in subgroup_findings(metrics.get(system_column(CNN, AGE)) or {})]
    lines.append("- Confidence intervals are 95% bootstrap intervals over holdout images. They describe this "
                 "sample of the RSNA data only; other hospitals, scanners and populations can differ more.")
    st.markdown("\n".join(lines))


def _error_by_age(metrics: dict | None, predictions) -> None:
    columns = [c for c in (plots.columns_for(metrics, AGE) if metrics else []) if c in predictions]
    if not columns or "male" not in predictions:
        st.info("predictions.csv lacks the columns needed here (male and a bone-age prediction).")
        return
    column = st.radio("Predictions of", columns, format_func=lambda c: plots.column_label(c, AGE),
                      key="bias_column", horizontal=True)
    st.plotly_chart(plots.error_vs_age_by_sex(predictions, column), key="bias_error_vs_age")
    n = st.slider("Worst cases to list", 5, 50, 15, 5, key="bias_worst_n")
    st.markdown(f"**Largest absolute errors ({plots.column_label(column, AGE)})**")
    st.dataframe(plots.worst_cases(predictions, column, n).style.format(precision=1), hide_index=True,
                 key="bias_worst_table")
    st.caption("`error` = predicted − true bone age in months. Large errors often come from unusual images "
               "(rotated or cropped hands, very young children, strong contrast differences).")


def main() -> None:
    st.title("Subgroups and bias")
    st.caption("Does the model work equally well for girls and boys and across ages? Holdout test split, "
               "with 95% bootstrap confidence intervals and the number of cases per group.")
    metrics = state.load_metrics()
    if metrics is not None:
        st.subheader("By sex")
        _groups(metrics, "by_sex", "by sex")
        st.subheader("By age group (true bone age)")
        _groups(metrics, "by_age_group", "by age group")
        st.subheader("What these numbers mean")
        _explain(metrics)
    st.subheader("Error vs age, by sex")
    predictions = state.load_predictions()
    if predictions is not None:
        _error_by_age(metrics, predictions)


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Bias page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
