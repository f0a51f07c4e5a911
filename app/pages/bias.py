"""Subgroup performance: metrics by sex and by age group with 95% CIs, error vs age by sex, worst cases."""

from __future__ import annotations

import logging

import streamlit as st

import dashboard
from boneage_core import plots
from boneage_core.metrics import subgroup_findings

logger = logging.getLogger(__name__)


def _groups(metrics: dict, group: str, title: str) -> None:
    regressors = [m for m in plots.REGRESSORS if (metrics.get(m) or {}).get(group)]
    classifiers = [m for m in plots.CLASSIFIERS if (metrics.get(m) or {}).get(group)]
    if not regressors and not classifiers:
        st.info(f"metrics.json has no {group} breakdown.")
        return
    c1, c2 = st.columns(2)
    if regressors:
        c1.plotly_chart(plots.group_metric_figure(metrics, regressors, group, "mae", f"MAE (months) {title}"),
                        key=f"bias_{group}_mae")
    if classifiers:
        c2.plotly_chart(plots.group_metric_figure(metrics, classifiers, group, "accuracy",
                                                  f"Stage accuracy {title}"), key=f"bias_{group}_acc")
    with st.expander(f"Numbers {title}"):
        for model, metric in [(m, "mae") for m in regressors] + [(m, "accuracy") for m in classifiers]:
            st.markdown(f"**{plots.model_label(model)}**")
            st.dataframe(plots.group_table(metrics, model, group, metric), hide_index=True,
                         key=f"bias_{group}_{model}_table")


def _explain(metrics: dict) -> None:
    lines = [f"- {finding}" for finding in subgroup_findings(metrics.get("regressor") or {})]
    lines.append("- Confidence intervals are 95% bootstrap intervals over holdout images. They describe this "
                 "sample of the RSNA data only; other hospitals, scanners and populations can differ more.")
    st.markdown("\n".join(lines))


def _error_by_age(predictions) -> None:
    columns = [c for c in plots.REGRESSORS if c in predictions]
    if not columns or "male" not in predictions:
        st.info("predictions.csv lacks the columns needed here (male and a regressor).")
        return
    model = st.radio("Model", columns, format_func=plots.model_label, key="bias_model", horizontal=True)
    st.plotly_chart(plots.error_vs_age_by_sex(predictions, model), key="bias_error_vs_age")
    n = st.slider("Worst cases to list", 5, 50, 15, 5, key="bias_worst_n")
    st.markdown(f"**Largest absolute errors ({plots.model_label(model)})**")
    st.dataframe(plots.worst_cases(predictions, model, n).style.format(precision=1), hide_index=True,
                 key="bias_worst_table")
    st.caption("`error` = predicted − true bone age in months. Large errors often come from unusual images "
               "(rotated or cropped hands, very young children, strong contrast differences).")


def main() -> None:
    st.title("Subgroups and bias")
    st.caption("Does the model work equally well for girls and boys and across ages? Holdout test split, "
               "with 95% bootstrap confidence intervals.")
    metrics = dashboard.load_metrics()
    if metrics is not None:
        st.subheader("By sex")
        _groups(metrics, "by_sex", "by sex")
        st.subheader("By age group (true bone age)")
        _groups(metrics, "by_age_group", "by age group")
        st.subheader("What these numbers mean")
        _explain(metrics)
    st.subheader("Error vs age, by sex")
    predictions = dashboard.load_predictions()
    if predictions is not None:
        _error_by_age(predictions)


try:
    main()
except Exception:  # last resort: never show a traceback to the user
    logger.exception("Bias page failed")
    st.error("Something went wrong while drawing this page. The details are in the server log.")
