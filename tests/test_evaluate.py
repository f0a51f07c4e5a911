"""evaluate: scores saved models on a folder + official-ground-truth CSV (BOM, CR-only lines, Sex M/F)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from boneage_core import evaluate
from boneage_core.metrics import regression_metrics


def _official_folder(data_299, tmp_path, n=24):
    labels = pd.read_csv(data_299 / "boneage-training-dataset.csv").sample(n=n, random_state=1)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in labels["id"]:
        shutil.copy(data_299 / "boneage-training-dataset" / f"{i}.webp", img_dir / f"{i}.webp")
    rows = ["Case ID,Sex,Ground truth bone age (months)"]
    rows += [f"{i},{'M' if m else 'F'},{a}" for i, m, a in zip(labels["id"], labels["male"], labels["boneage"])]
    csv = tmp_path / "official.csv"
    csv.write_bytes(("\ufeff" + "\r".join(rows) + "\r").encode("utf-8"))
    return img_dir, csv, labels


def test_cli_on_official_format(quick_run, data_299, tmp_path, capsys):
    img_dir, csv, labels = _official_folder(data_299, tmp_path)
    out_json, out_csv = tmp_path / "m.json", tmp_path / "p.csv"
    code = evaluate.main(["--artifacts", str(quick_run), "--images", str(img_dir), "--labels", str(csv),
                          "--out", str(out_json), "--predictions", str(out_csv), "--bootstrap", "20"])
    assert code == 0
    table = capsys.readouterr().out
    assert "baseline_regressor" in table and "QWK" in table
    metrics = json.loads(out_json.read_text())
    assert set(metrics) == {"regressor", "classifier", "baseline_regressor", "baseline_classifier"}
    assert metrics["regressor"]["n"] == len(labels)
    preds = pd.read_csv(out_csv, dtype={"id": str})
    truth = labels.set_index(labels["id"].astype(str))["boneage"]
    recomputed = regression_metrics(truth[preds["id"]].to_numpy(), preds["regressor"].to_numpy())
    assert np.isclose(recomputed["mae"], metrics["regressor"]["mae"])


def test_cli_missing_ids_is_a_clear_error(quick_run, data_299, tmp_path, caplog):
    img_dir, csv, labels = _official_folder(data_299, tmp_path, n=6)
    (img_dir / f"{labels['id'].iloc[0]}.webp").unlink()
    code = evaluate.main(["--artifacts", str(quick_run), "--images", str(img_dir), "--labels", str(csv)])
    assert code == 2
    assert "1 of 6 id(s) have no image" in caplog.text


def test_score_predictions_skips_absent_models():
    frame = pd.DataFrame({"boneage": [10.0, 100.0, 200.0, 150.0], "male": [True, False, True, False],
                          "regressor": [12.0, 90.0, 210.0, 150.0]})
    metrics = evaluate.score_predictions(frame, n_boot=10)
    assert list(metrics) == ["regressor"]
    assert np.isclose(metrics["regressor"]["mae"], (2 + 10 + 10 + 0) / 4)
