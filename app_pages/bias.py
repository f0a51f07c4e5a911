"""Subgroup performance: metrics by sex and by age group with 95% CIs, error vs age by sex, worst cases."""

from __future__ import annotations

import logging

import streamlit as st

import dashboard
from boneage_core import plots

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
    reg = metrics.get("regressor") or {}
    sexes = reg.get("by_sex") or {}
    ages = reg.get("by_age_group") or {}
    lines = []
    if {"female", "male"} <= set(sexes):
        f, m = sexes["female"], sexes["male"]
        overlap = (f.get("mae_ci95") and m.get("mae_ci95")
                   and f["mae_ci95"][0] <= m["mae_ci95"][1] and m["mae_ci95"][0] <= f["mae_ci95"][1])
        lines.append(f"- **Sex:** the CNN's MAE is {f['mae']:.1f} months for girls (n={f['n']}) and "
                     f"{m['mae']:.1f} months for boys (n={m['n']}). "
                     + ("The 95% intervals overlap, so this holdout does not show a clear difference."
                        if overlap else "The 95% intervals do not overlap: the gap is unlikely to be chance alone."))
    if ages:
        smallest = min(ages, key=lambda k: ages[k].get("n", 0))
        s = ages[smallest]
        ci = s.get("mae_ci95") or [float("nan"), float("nan")]
        lines.append(f"- **Small groups are uncertain:** only {s['n']} holdout images fall in {smallest}; its MAE "
                     f"of {s['mae']:.1f} months has a 95% interval of {ci[0]:.1f}–{ci[1]:.1f} months. Wide error "
                     "bars mean the group is too small to rank it against the others.")
        worst = max(ages, key=lambda k: ages[k].get("mae", 0))
        lines.append(f"- **Largest error:** {worst} (MAE {ages[worst]['mae']:.1f} months, bias "
                     f"{ages[worst].get('bias', float('nan')):+.1f} months); look at the bias as well as the MAE.")
        first, last = ages[next(iter(ages))], ages[list(ages)[-1]]
        if first.get("bias", 0) > 0 > last.get("bias", 0):
            lines.append(f"- **Regression to the middle:** the youngest group is over-estimated (bias "
                         f"{first['bias']:+.1f} months) and the oldest under-estimated ({last['bias']:+.1f} "
                         "months), typical of a model trained mostly on mid-range ages.")
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
