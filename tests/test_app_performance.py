"""The Model performance page, on the committed artifacts and on an empty folder."""

from __future__ import annotations

import json

import pytest

from app import state
from boneage_core import plots
from boneage_core.heads import AGE, STAGE


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((state.artifacts_dir() / "metrics.json").read_text())


def test_performance_page_shows_every_prediction_column(metrics, open_page):
    at = open_page("performance")
    assert not at.error and not at.warning, [e.value for e in list(at.error) + list(at.warning)]
    age_columns, stage_columns = plots.columns_for(metrics, AGE), plots.columns_for(metrics, STAGE)
    assert age_columns and stage_columns
    age_table, stage_table = (d.value for d in at.dataframe[:2])
    assert list(age_table.columns) == [plots.column_label(c, AGE) for c in age_columns]
    assert list(stage_table.columns) == [plots.column_label(c, STAGE) for c in stage_columns]
    for column in age_columns:
        assert age_table.loc["MAE (months)", plots.column_label(column, AGE)] == pytest.approx(metrics[column]["mae"])
    for column in stage_columns:  # both the stage head and the stage derived from the predicted age
        assert stage_table.loc["Quadratic weighted kappa", plots.column_label(column, STAGE)] == pytest.approx(
            metrics[column]["qwk"])
    charts = at.get("plotly_chart")
    # scatter, residuals, Bland-Altman, one confusion matrix per stage column, per-stage bars, training curves
    assert len(charts) == 3 + len(stage_columns) + 2
    at.toggle(key="perf_cm_normalise").set_value(True).run()
    assert not at.exception


def _series(at, key: str) -> list[str]:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id)
    return [t.get("name") for t in json.loads(chart.proto.spec)["data"]]


def test_the_served_ensemble_first_members_and_unserved_models_on_request(metrics, open_page):
    """The scatter shows the served ensemble alone until the members are asked for; the training curves show the
    served members until every model is asked for."""
    from boneage_core.manifest import read_manifest

    at = open_page("performance")
    ensemble = plots.column_label("cnn_age", AGE)
    assert [n for n in _series(at, "perf_scatter") if n != "identity"] == [ensemble]
    at.toggle(key="perf_show_members").set_value(True).run()
    assert len([n for n in _series(at, "perf_scatter") if n != "identity"]) == len(
        [c for c in plots.columns_for(metrics, AGE)])
    served = {m.rsplit(".", 1)[0] for m in read_manifest(state.artifacts_dir()).members}
    shown = {n for n in _series(at, "perf_curves") if n}
    assert shown == served, (shown, served)
    at.toggle(key="perf_all_curves").set_value(True).run()
    assert {n for n in _series(at, "perf_curves") if n} > served


def test_pages_degrade_without_artifacts(tmp_path, monkeypatch, open_page):
    monkeypatch.setenv(state.ARTIFACTS_ENV, str(tmp_path))
    for name in ("performance", "bias", "about", "assess", "batch"):
        at = open_page(name)
        assert not at.error, (name, [e.value for e in at.error])
    at = open_page("performance")
    assert any("metrics.json" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_metrics_of_other_weights_are_not_shown(tmp_path, monkeypatch, open_page):
    """metrics.json / predictions.csv that the manifest's evaluation did not write (an edited or swapped-in file)
    are refused with the reason, not shown as if these weights had made them."""
    import shutil

    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in ("manifest.json", "metrics.json", "predictions.csv"):
        shutil.copy(state.artifacts_dir() / name, folder / name)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["cnn_age"]["mae"] = 1.0  # a figure these weights never produced
    (folder / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv(state.ARTIFACTS_ENV, str(folder))
    at = open_page("performance")
    assert any("metrics.json` is not shown" in w.value and "changed after the evaluation" in w.value
               for w in at.warning)
    assert not any("1.000" in str(d.value) for d in at.dataframe)


def test_metrics_without_a_manifest_are_shown_with_a_warning(tmp_path, monkeypatch, open_page, metrics):
    """A folder with metrics.json but no manifest.json: the figures are shown, and said to be unchecked."""
    import shutil

    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in ("metrics.json", "predictions.csv"):
        shutil.copy(state.artifacts_dir() / name, folder / name)
    monkeypatch.setenv(state.ARTIFACTS_ENV, str(folder))
    at = open_page("performance")
    assert any("metrics.json` is shown unchecked" in w.value and "manifest.json" in w.value for w in at.warning)
    age_table = at.dataframe[0].value
    assert age_table.loc["MAE (months)", plots.column_label("cnn_age", AGE)] == pytest.approx(metrics["cnn_age"]["mae"])
