"""Score every subset of an evaluated folder's members from its saved predictions, validation and test.

The members' own columns of `calibration_predictions.csv` (validation, written by the calibrate stage) and
`predictions.csv` (test, the evaluate stage) are combined with the tool's one combination rule
(`heads.combine`: the mean of decoded outputs), so a subset's figures are those its own
`calibrate,evaluate` run would give before the bias correction (which is close to the identity,
docs/ablations.md section 3). Choose members on validation; the test columns are for the report.
With ``--views``, each subset is also scored on a subset of the test-time views (the members' per-view
columns, e.g. ``multihead.view1_age``, which the calibrate and evaluate stages write when the run used
several test-time views). ``--views`` takes zoom sets as ``train.py --views`` does (``1,0.94``, ``all``,
``none``), several at once.
Run: ``python -m tools.ensemble_subsets --artifacts runs/ens4 [--views all 1,0.94 none]``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from boneage_core.artifacts import CALIBRATION_PREDICTIONS_FILE, PREDICTIONS_FILE
from boneage_core.evaluate import member_prefix, view_prefix
from boneage_core.heads import AGE, STAGE, combine, get_head, system_column
from boneage_core.errors import ArtifactError
from boneage_core.manifest import evaluated_path, fitted_table_path, read_manifest
from boneage_core.metrics import classification_metrics, regression_metrics
from boneage_core.stages import DEFAULT_SCHEME, StageScheme
from boneage_core.views import Views, describe_views, views_argument

SPLITS = {"val": CALIBRATION_PREDICTIONS_FILE, "test": PREDICTIONS_FILE}


def member_stems(folder: Path) -> list[str]:
    """Column prefixes of the folder's manifest members (file stems)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise SystemExit(f"{folder}: no manifest; run the evaluate stage there first")
    return [member_prefix(name) for name in manifest.members]


def prediction_path(folder: Path, name: str) -> Path:
    """A prediction table of the current members: predictions.csv by the manifest's evaluation record,
    calibration_predictions.csv when it is the table the members' calibration was fitted on (SystemExit otherwise)."""
    manifest = read_manifest(folder)
    try:
        if name == PREDICTIONS_FILE:
            return evaluated_path(folder, manifest, name)
        return fitted_table_path(folder, manifest)
    except ArtifactError as exc:
        raise SystemExit(str(exc)) from None


def prefixes(stems: tuple[str, ...], views: Views | None = None) -> tuple[str, ...]:
    """Column prefixes of members (`stems`), or of each member on each of `views` (zoom factors)."""
    return stems if views is None else tuple(view_prefix(s, v) for s in stems for v in views)


def subset_scores(frame: pd.DataFrame, stems: tuple[str, ...], scheme: StageScheme = DEFAULT_SCHEME) -> dict:
    """Age MAE / R² / within 12 months and stage accuracy / QWK of the mean of the columns of `stems` (prefixes)."""
    missing = [system_column(s, AGE) for s in stems if system_column(s, AGE) not in frame]
    if missing:
        raise SystemExit(f"columns {missing} are missing: per-member columns are written only for 2+ members, "
                         "per-view columns only for the views the run used (several)")
    rows = frame.dropna(subset=[system_column(s, AGE) for s in stems])
    age = combine([get_head(AGE).from_columns(rows, s).to_numpy() for s in stems])
    reg = regression_metrics(rows["boneage"], age)
    true = scheme.stage_of(rows["boneage"], rows["male"])
    probs = combine([get_head(STAGE).probabilities(rows, s, scheme.n_classes) for s in stems])
    cls = classification_metrics(true, get_head(STAGE).point(probs), scheme.n_classes)
    return {"n": reg["n"], "mae": reg["mae"], "r2": reg["r2"], "within_12m": reg["within_12m"],
            "stage_acc": cls["accuracy"], "stage_qwk": cls["qwk"]}


def subset_table(folder: Path, max_size: int | None = None,
                 view_sets: list[Views] | None = None) -> pd.DataFrame:
    """One row per subset of members (sizes 1..max_size) and view set (the served views when None), by validation MAE."""
    stems = member_stems(folder)
    frames = {split: pd.read_csv(prediction_path(folder, name)) for split, name in SPLITS.items()}
    rows = []
    for size in range(1, min(max_size or len(stems), len(stems)) + 1):
        for subset, views in itertools.product(itertools.combinations(stems, size), view_sets or [None]):
            row = {"members": " + ".join(subset), "size": size,
                   "views": "served" if views is None else describe_views(views, short=True)}
            for split, frame in frames.items():
                row.update({f"{split}_{k}": v for k, v in subset_scores(frame, prefixes(subset, views)).items()})
            rows.append(row)
    return pd.DataFrame(rows).sort_values("val_mae").reset_index(drop=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The tool's options (argparse exits with status 2 and a message on bad ones)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a folder evaluated with calibrate,evaluate")
    p.add_argument("--max-size", type=int, default=None, help="largest subset (default: all members)")
    p.add_argument("--views", type=views_argument, nargs="+", default=None, metavar="SCALES",
                   help="score each subset on each of these test-time view sets, e.g. all 1,0.94 none "
                        "(default: the views the folder was evaluated with)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the subset table of one evaluated folder."""
    args = parse_args(argv)
    table = subset_table(args.artifacts, args.max_size, args.views)
    shown = ["members", "views", "val_mae", "val_stage_qwk", "test_mae", "test_r2", "test_within_12m", "test_stage_acc",
             "test_stage_qwk"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table[shown].round(4).to_string(index=False))


if __name__ == "__main__":
    main()
