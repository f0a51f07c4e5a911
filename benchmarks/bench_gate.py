"""Input gate: refusals of real radiographs (holdout, full-size samples) and of generated non-radiographs; orientation fixes.

python -m benchmarks.bench_gate --artifacts artifacts --samples ../shared/data/samples-fullres
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from boneage_core.errors import InputError
from boneage_core.imaging import load_gray
from boneage_core.manifest import PREDICTIONS_FILE
from boneage_core.predictor import Prediction, Predictor
from benchmarks.samples import load_from_args
from tests.negatives import negative_set

#: Transformed copies of each full-size sample, with the correction that undoes each (quarter turns, mirrored).
VARIANTS = {"turned 90": (lambda g: np.rot90(g, 1), (3, False)), "turned 180": (lambda g: np.rot90(g, 2), (2, False)),
            "turned 270": (lambda g: np.rot90(g, 3), (1, False)),
            "mirrored (right hand)": (lambda g: g[:, ::-1], (0, True))}


def _outcome(predictor: Predictor, image: np.ndarray, male: bool) -> tuple[str, float | None, list[str]]:
    pred = _predict(predictor, image, male)
    return ("refused", None, [pred]) if isinstance(pred, str) else ("scored", pred.bone_age_months, pred.warnings)


def _predict(predictor: Predictor, image: np.ndarray, male: bool) -> Prediction | str:
    """The prediction, or the refusal's message."""
    try:
        return predictor.predict(np.ascontiguousarray(image), male=male)
    except InputError as exc:
        return str(exc)


def holdout_refusals(artifacts: Path) -> str:
    frame = pd.read_csv(artifacts / PREDICTIONS_FILE)
    if "gate_refused" not in frame:
        return "holdout          no gate columns in predictions.csv (evaluate without a gate)"
    refused = frame["gate_refused"].astype(str).str.lower().eq("true")
    return (f"holdout          {int(refused.sum())} of {len(frame)} test-split radiographs refused "
            f"({refused.mean():.2%}); turned {int((frame['gate_turn'] > 0).sum())}, flagged as maybe rotated "
            f"{int(frame['gate_turn_flagged'].astype(str).str.lower().eq('true').sum())}, as maybe mirrored "
            f"{int(frame['gate_mirrored'].astype(str).str.lower().eq('true').sum())}")


def what_was_done(pred: Prediction | str, undo: tuple[int, bool]) -> str:
    """One copy's outcome: refused, undone (the correction that undoes the transform, and no other), flagged as maybe
    rotated, corrected otherwise, or read as given with no orientation flag."""
    if isinstance(pred, str):
        return "refused"
    if (pred.turn, pred.mirrored) == undo and undo != (0, False):
        return "undone"
    if pred.gate is not None and pred.gate.turn_flagged:
        return "flagged"
    return "corrected otherwise" if pred.turn or pred.mirrored else "read as given"


def samples_and_variants(predictor: Predictor, samples: Path) -> list[str]:
    """Per transform of the full-size samples: how many copies were refused, undone, flagged, corrected otherwise or
    read as given, the largest change of the estimate against the sample as filmed, and the ids of the copies read as
    given or corrected otherwise (a film filmed tilted may be read nearer upright turned: look at it)."""
    labels = pd.read_csv(samples / "boneage-samples.csv")
    rows = []
    for _, row in labels.iterrows():
        gray = load_gray(samples / f"{row['id']}.png")
        filmed = _predict(predictor, gray, bool(row["male"]))
        upright = None if isinstance(filmed, str) else filmed.bone_age_months
        rows.append({"variant": "as filmed", "id": row["id"], "outcome": what_was_done(filmed, (0, False)),
                     "delta": 0.0})
        for name, (make, undo) in VARIANTS.items():
            pred = _predict(predictor, make(gray), bool(row["male"]))
            age = None if isinstance(pred, str) else pred.bone_age_months
            delta = abs(age - upright) if age is not None and upright is not None else np.nan
            rows.append({"variant": name, "id": row["id"], "outcome": what_was_done(pred, undo), "delta": delta})
    frame = pd.DataFrame(rows)
    table = pd.crosstab(frame["variant"], frame["outcome"]).reindex(frame["variant"].unique())
    table["max_abs_change"] = frame.groupby("variant", sort=False)["delta"].max()  # an undone copy reads as filmed
    missed = frame[frame["outcome"].isin(["read as given", "corrected otherwise"]) & (frame["variant"] != "as filmed")]
    lines = [f"full-size samples (n={len(labels)}) and transformed copies (change: months against as filmed):",
             table.to_string()]
    lines += [f"  {r.variant}: sample {r.id} {r.outcome}, change {r.delta:.1f}" for r in missed.itertuples()]
    return lines


#: The generated negatives are also tried in these forms: the gate corrects inverted and turned films, and must not
#: "correct" a non-radiograph into one.
NEGATIVE_FORMS = {"inverted": lambda g: 1.0 - g, "turned 90": lambda g: np.rot90(g, 1)}


def negatives(predictor: Predictor, samples: Path) -> list[str]:
    lines, refused, forms = [], 0, {name: 0 for name in NEGATIVE_FORMS}
    images = negative_set(samples)
    for name, image in images.items():
        status, age, warnings = _outcome(predictor, image, True)
        refused += status == "refused"
        lines.append(f"  {name:<22} {status:<8} {'' if age is None else f'{age:.0f} months'}  {warnings[0][:90] if warnings else ''}")
        for form, make in NEGATIVE_FORMS.items():
            status, age, _ = _outcome(predictor, make(image), True)
            forms[form] += status == "refused"
            if status != "refused":
                lines.append(f"  {name + ' ' + form:<22} {status:<8} {'' if age is None else f'{age:.0f} months'}")
    counts = ", ".join(f"{forms[f]} of {len(images)} {f}" for f in NEGATIVE_FORMS)
    return [f"generated negatives: {refused} of {len(images)} refused as given ({counts})"] + lines


def main(argv: list[str] | None = None) -> int:
    predictor, samples, artifacts = load_from_args(__doc__, argv)
    if predictor.gate is None:
        print("no input gate:", "; ".join(predictor.notes))
        return 1
    print("OOD limits (cosine distance to the k-th nearest training image, per level): "
          + ", ".join(f"{level} {limit:.3f}" for level, limit in predictor.gate.limits.items())
          + f"; scores are relative to them, refused above {predictor.gate.limit:.2f}")
    print(holdout_refusals(artifacts))
    print("\n".join(samples_and_variants(predictor, samples)))
    print("\n".join(negatives(predictor, samples)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
