"""Subsets of an ensemble scored from saved predictions (tools/ensemble_subsets.py), against the served artifacts."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from boneage_core.calibration import CALIBRATION_FILE, PREDICTIONS_SHA_KEY
from boneage_core.checkpoint import file_sha256
from boneage_core.artifacts import CALIBRATION_PREDICTIONS_FILE, MANIFEST_FILE, METRICS_FILE, PREDICTIONS_FILE
from boneage_core.heads import AGE, CNN, STAGE, UNCORRECTED, get_head, system_column
from boneage_core.stages import DEFAULT_SCHEME
from boneage_core.evaluate import view_prefix
from tools.ensemble_subsets import member_stems, parse_args, prefixes, subset_scores, subset_table

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def served():
    return pd.read_csv(ARTIFACTS / PREDICTIONS_FILE), json.loads((ARTIFACTS / METRICS_FILE).read_text())


def test_all_members_reproduce_the_served_ensemble_before_correction(served):
    frame, metrics = served
    stems = tuple(member_stems(ARTIFACTS))
    assert len(stems) >= 2
    scores = subset_scores(frame, stems)
    assert scores["mae"] == pytest.approx(metrics[system_column(UNCORRECTED, AGE)]["mae"], abs=1e-9)
    assert scores["stage_acc"] == pytest.approx(metrics[system_column(CNN, STAGE)]["accuracy"], abs=1e-9)
    probs = get_head(STAGE).probabilities(frame, CNN, DEFAULT_SCHEME.n_classes)
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_one_member_reproduces_its_own_metrics(served):
    frame, metrics = served
    for stem in member_stems(ARTIFACTS):
        assert subset_scores(frame, (stem,))["mae"] == pytest.approx(metrics[system_column(stem, AGE)]["mae"], abs=1e-9)


def test_missing_member_columns_are_named(served):
    frame, _ = served
    with pytest.raises(SystemExit, match="no_such_member_age"):
        subset_scores(frame, ("no_such_member",))


def _copy_served(folder: Path) -> None:
    """The served manifest, test predictions and calibration (what ties both prediction tables to the members)."""
    for name in (MANIFEST_FILE, PREDICTIONS_FILE, CALIBRATION_FILE):
        shutil.copy(ARTIFACTS / name, folder / name)


def _write_validation(table: pd.DataFrame, folder: Path) -> None:
    """A made-up validation table, recorded in the copied calibration as the one it was fitted on."""
    table.to_csv(folder / CALIBRATION_PREDICTIONS_FILE, index=False)
    calibration = json.loads((folder / CALIBRATION_FILE).read_text())
    calibration["fitted_on"][PREDICTIONS_SHA_KEY] = file_sha256(folder / CALIBRATION_PREDICTIONS_FILE)
    (folder / CALIBRATION_FILE).write_text(json.dumps(calibration))


def test_the_table_has_every_subset_sorted_by_validation(tmp_path, served):
    frame, _ = served
    _copy_served(tmp_path)
    val = frame.copy()
    first = system_column(member_stems(ARTIFACTS)[0], AGE)
    val[first] = val["boneage"]  # a perfect first member on "validation"
    _write_validation(val, tmp_path)
    table = subset_table(tmp_path)
    n = len(member_stems(ARTIFACTS))
    assert len(table) == 2 ** n - 1 and table["val_mae"].is_monotonic_increasing
    assert table.loc[0, "members"] == member_stems(ARTIFACTS)[0] and table.loc[0, "val_mae"] == 0.0
    assert len(subset_table(tmp_path, max_size=1)) == n


def _with_views(frame: pd.DataFrame, stems: list[str], shift: float) -> pd.DataFrame:
    """Two made-up views per member: its own columns moved by +shift and -shift months (their mean is the member)."""
    out = frame.copy()
    for stem in stems:
        for v, sign in zip((1.0, 0.94), (1.0, -1.0)):
            out[system_column(view_prefix(stem, v), AGE)] = frame[system_column(stem, AGE)] + sign * shift
            probs = get_head(STAGE).probabilities(frame, stem, DEFAULT_SCHEME.n_classes)
            out = out.assign(**get_head(STAGE).columns(view_prefix(stem, v), probs))
    return out


def test_view_sets_score_the_members_own_views(tmp_path, served):
    frame, _ = served
    stems = member_stems(ARTIFACTS)
    _copy_served(tmp_path)
    with_views = _with_views(frame, stems, shift=30.0)  # made-up validation views
    real_view2 = [c for c in with_views if any(c.startswith(view_prefix(s, 1.06) + "_") for s in stems)]
    _write_validation(with_views.drop(columns=real_view2), tmp_path)
    table = subset_table(tmp_path, max_size=1, view_sets=[(1.0, 0.94), (1.0,)])
    both_text, one_text = "2-view TTA (zoom 1, 0.94)", "no TTA"
    assert len(table) == 2 * len(stems) and set(table["views"]) == {both_text, one_text}
    for stem in stems:
        both = table[(table["members"] == stem) & (table["views"] == both_text)]["val_mae"].item()
        one = table[(table["members"] == stem) & (table["views"] == one_text)]["val_mae"].item()
        assert both == pytest.approx(subset_scores(frame, (stem,))["mae"], abs=1e-6)  # the views' mean is the member
        assert one > both + 10  # a view 30 months off is worse
    assert prefixes(("a", "b"), (1.0, 1.06)) == ("a.view0", "a.view2", "b.view0", "b.view2")
    with pytest.raises(SystemExit, match=system_column(view_prefix(stems[0], 1.06), AGE)):
        subset_table(tmp_path, max_size=1, view_sets=[(1.0, 1.06)])


def test_tables_of_other_weights_are_refused(tmp_path, served):
    frame, _ = served
    _copy_served(tmp_path)
    _write_validation(frame, tmp_path)
    assert len(subset_table(tmp_path, max_size=1)) == len(member_stems(ARTIFACTS))
    changed = frame.copy()
    changed[system_column(CNN, AGE)] += 1.0  # predictions.csv no longer the one the evaluation recorded
    changed.to_csv(tmp_path / PREDICTIONS_FILE, index=False)
    with pytest.raises(SystemExit, match=f"{PREDICTIONS_FILE} refused"):
        subset_table(tmp_path, max_size=1)
    shutil.copy(ARTIFACTS / PREDICTIONS_FILE, tmp_path / PREDICTIONS_FILE)
    calibration = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    calibration["members"] = {name: "0" * 64 for name in calibration["members"]}  # fitted for other weights
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(calibration))
    with pytest.raises(SystemExit, match=f"{CALIBRATION_PREDICTIONS_FILE} refused"):
        subset_table(tmp_path, max_size=1)
    shutil.copy(ARTIFACTS / CALIBRATION_FILE, tmp_path / CALIBRATION_FILE)
    _write_validation(frame, tmp_path)  # the served calibration again, tied to this table
    frame.assign(boneage=frame["boneage"] + 1).to_csv(tmp_path / CALIBRATION_PREDICTIONS_FILE, index=False)
    with pytest.raises(SystemExit, match="is not the table calibration.json was fitted on"):
        subset_table(tmp_path, max_size=1)  # a validation table edited after the calibration was fitted
    (tmp_path / CALIBRATION_PREDICTIONS_FILE).unlink()
    with pytest.raises(SystemExit, match=f"no {CALIBRATION_PREDICTIONS_FILE}"):
        subset_table(tmp_path, max_size=1)


def test_views_option_takes_zoom_sets_like_train(capsys):
    """--views reads zoom sets as train.py --views does (views.views_argument), several at once; bad text is an
    argparse error (exit 2) with the choices, never a traceback."""
    args = parse_args(["--artifacts", "x", "--views", "all", "1,0.94", "none"])
    assert args.views == [(1.0, 0.94, 1.06), (1.0, 0.94), (1.0,)]
    assert parse_args(["--artifacts", "x"]).views is None  # the served views
    for bad in ("0,2", "0.94", "1,1", "a"):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--artifacts", "x", "--views", bad])
        assert exit_info.value.code == 2
        assert "test-time views" in capsys.readouterr().err
