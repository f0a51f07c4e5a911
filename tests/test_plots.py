"""Pure Plotly/table builders of the app (boneage_core.plots), on the metrics.json / predictions.csv format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage_core import plots
from boneage_core.heads import AGE, BASELINE, CNN, STAGE, age_stage_column, system_column

CNN_AGE, CNN_STAGE, CNN_AGE_STAGE = system_column(CNN, AGE), system_column(CNN, STAGE), age_stage_column(CNN)


def test_bland_altman_stats_match_numpy():
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 200, 300)
    pred = true + rng.normal(2.0, 5.0, 300)
    stats = plots.bland_altman_stats(true, pred)
    diff = pred - true
    assert stats["bias"] == pytest.approx(diff.mean())
    assert stats["upper"] - stats["lower"] == pytest.approx(2 * 1.96 * diff.std(ddof=1))
    with pytest.raises(ValueError):
        plots.bland_altman_stats([1.0], [2.0])


def test_confusion_figure_normalises_rows_and_checks_shape():
    fig = plots.confusion_figure([[3, 1], [0, 0]], ["a", "b"], normalise=True)
    z = np.asarray(fig.data[0].z)
    assert z[0].tolist() == [0.75, 0.25] and z[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        plots.confusion_figure([[1, 2, 3]], ["a", "b"])


def test_labels_name_the_system_and_what_the_column_holds():
    labels = {c: plots.column_label(c) for c in (CNN_AGE, CNN_STAGE, CNN_AGE_STAGE, system_column(BASELINE, AGE),
                                                  system_column("regressor", AGE))}
    assert len(set(labels.values())) == len(labels), labels
    assert labels[CNN_AGE].startswith(plots.SYSTEM_LABELS[CNN])
    assert plots.AGE_STAGE_TITLE in labels[CNN_AGE_STAGE] and plots.HEAD_TITLES[STAGE] in labels[CNN_STAGE]
    assert "regressor" in labels[system_column("regressor", AGE)]  # an ensemble member keeps its name


def test_tables_split_by_head_and_skip_empty_columns():
    metrics = {CNN_AGE: {"head": AGE, "n": 10, "mae": 5.0}, CNN_STAGE: {"head": STAGE, "n": 10, "qwk": 0.8},
               CNN_AGE_STAGE: {"head": STAGE, "n": 10, "qwk": 0.7}, system_column(BASELINE, STAGE): {"head": STAGE, "n": 0}}
    assert list(plots.regression_table(metrics).columns) == [plots.column_label(CNN_AGE)]
    stages = plots.classification_table(metrics)
    assert list(stages.columns) == [plots.column_label(CNN_STAGE), plots.column_label(CNN_AGE_STAGE)]
    assert stages.loc["Quadratic weighted kappa"].tolist() == [0.8, 0.7]
    frame = pd.DataFrame({"boneage": [10.0, 20.0], CNN_AGE: [12.0, 18.0]})
    assert len(plots.scatter_predicted_vs_true(frame, [CNN_AGE]).data) == 2  # one column + identity line


def _with_groups(ns: dict[str, int]) -> dict:
    groups = {g: {"n": n, "mae": 5.0 + i, "mae_ci95": [4.0 + i, 6.5 + i]} for i, (g, n) in enumerate(ns.items())}
    return {CNN_AGE: {"head": AGE, "n": sum(ns.values()), "by_age_group": groups}}


def test_age_group_lines_carry_counts_cis_and_mark_few_cases():
    metrics = _with_groups({"0-2 y": 3, "2-5 y": 120})
    fig = plots.age_group_figure(metrics, [CNN_AGE], "mae")
    line = fig.data[0]
    assert list(line.x) == ["0-2 y (n=3, few cases)", "2-5 y (n=120)"]
    assert list(line.marker.symbol) == ["circle-open", "circle"]
    assert list(line.error_y.array) == pytest.approx([1.5, 1.5]) and list(line.error_y.arrayminus) == pytest.approx([1, 1])
    table = plots.group_table(metrics, CNN_AGE, "by_age_group", "mae")
    assert table["few_cases"].tolist() == [True, False]


def test_group_table_carries_confidence_intervals(committed_artifacts):
    metrics = json.loads((committed_artifacts / "metrics.json").read_text())
    column = plots.columns_for(metrics, AGE)[0]
    table = plots.group_table(metrics, column, "by_age_group", "mae")
    assert list(table["group"]) == list(metrics[column]["by_age_group"])
    assert (table["ci_low"] <= table["mae"]).all() and (table["mae"] <= table["ci_high"]).all()
    assert table["n"].sum() == metrics[column]["n"]


def test_worst_cases_and_sex_labels():
    frame = pd.DataFrame({"id": [1, 2, 3], "boneage": [10.0, 20.0, 30.0], "male": [True, False, True],
                          CNN_AGE: [11.0, 40.0, 25.0]})
    worst = plots.worst_cases(frame, CNN_AGE, n=2)
    assert worst["id"].tolist() == [2, 3]
    assert worst["sex"].tolist() == ["female", "male"]
    fig = plots.error_vs_age_by_sex(frame, CNN_AGE, bin_months=12)
    lines = {t.name: t for t in fig.data if t.mode and "lines" in t.mode}
    assert set(lines) == {"female: mean |error|", "male: mean |error|"}
    assert all(text.startswith("n=") for text in lines["male: mean |error|"].text)  # few cases labelled with n


def test_error_bins_include_the_oldest_case():
    frame = pd.DataFrame({"id": [1, 2], "boneage": [100.0, 216.0], "male": [True, True], CNN_AGE: [110.0, 200.0]})
    fig = plots.error_vs_age_by_sex(frame, CNN_AGE, bin_months=24)
    line = [t for t in fig.data if t.name == "male: mean |error|"][0]
    assert len(line.x) == 2  # 216 (a multiple of 24) has its own bin


OLD_HISTORY = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.4, 0.3], "val_loss": [0.3, 0.25],
                            "val_score": [11.0, 10.0], "lr": [1e-3, 5e-4]})
NEW_HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "phase": [1, 1, 2], "image_size": [224, 224, 299],
                            "train_loss": [1.0, 0.8, 0.7], "val_score": [9.0, 8.0, 7.5], "val_age": [9.0, 8.0, 7.5],
                            "val_stage": [0.6, 0.5, 0.45], "lr": [1e-3, 1e-3, 3e-4]})


def test_training_curves_one_axis_per_quantity_and_a_legend_group_per_model():
    fig = plots.training_curves({"old": OLD_HISTORY, "new": NEW_HISTORY})
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 6  # train loss, val loss, val age, val stage, val score (old only), lr
    by_axis: dict[str, set] = {}
    for trace in fig.data:
        by_axis.setdefault(trace.yaxis, set()).add(trace.legendgroup)
    assert len(by_axis) == len(titles), "one y axis per quantity"
    assert {t.legendgroup for t in fig.data} == {"old", "new"}
    assert sum(bool(t.showlegend) for t in fig.data) == 2, "one legend entry per model"
    new_score = [t for t in fig.data if t.legendgroup == "new" and list(t.y) == NEW_HISTORY["val_score"].tolist()]
    assert len(new_score) == 1, "val_score that repeats val_age is drawn once"
    assert "phase 2, 299 px" in [t for t in fig.data if t.legendgroup == "new"][0].customdata


def test_one_colour_per_model_on_every_page(committed_artifacts):
    """The ensemble, its variants, the baseline and each member differ; a member has one colour for its age and
    stage columns and its training curve; the served ensemble is drawn emphasised."""
    import json

    metrics = json.loads((committed_artifacts / "metrics.json").read_text())
    systems = {plots._system_of(k) for k in metrics}
    members = sorted(systems - set(plots.SYSTEM_COLOURS))
    assert len(members) >= 2
    colours = {s: plots.column_colour(f"{s}_age", metrics) for s in systems}
    colours["cnn_age_stage"] = plots.column_colour("cnn_age_stage", metrics)
    assert len(set(colours.values())) == len(colours), colours  # no two models share a colour
    for member in members:
        assert plots.column_colour(f"{member}_stage", metrics) == colours[member]
    assert plots.column_colour("cnn_stage", metrics) == colours["cnn"] != colours[members[0]]
    assert plots.column_colour("someone_else_age", metrics) == plots.OTHER_COLOUR
    fig = plots.training_curves({members[0]: NEW_HISTORY}, metrics)
    assert {t.line.color for t in fig.data} == {colours[members[0]]}
    scatter = plots.scatter_predicted_vs_true(pd.DataFrame({"boneage": [1.0, 2.0], "cnn_age": [1.0, 2.0],
                                                            f"{members[0]}_age": [1.0, 2.0]}),
                                              ["cnn_age", f"{members[0]}_age"], metrics)
    sizes = {t.name: t.marker.size for t in scatter.data if t.mode == "markers"}
    assert sizes[plots.column_label("cnn_age", "age")] > sizes[plots.column_label(f"{members[0]}_age", "age")]
