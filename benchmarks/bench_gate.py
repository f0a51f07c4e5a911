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
from boneage_core.predictor import Predictor
from benchmarks.samples import load_from_args
from tests.negatives import negative_set

VARIANTS = {"turned 90": lambda g: np.rot90(g, 1), "turned 180": lambda g: np.rot90(g, 2),
            "turned 270": lambda g: np.rot90(g, 3), "mirrored (right hand)": lambda g: g[:, ::-1]}


def _outcome(predictor: Predictor, image: np.ndarray, male: bool) -> tuple[str, float | None, list[str]]:
    try:
        pred = predictor.predict(np.ascontiguousarray(image), male=male)
    except InputError as exc:
        return "refused", None, [str(exc)]
    return "scored", pred.bone_age_months, pred.warnings


def holdout_refusals(artifacts: Path) -> str:
    frame = pd.read_csv(artifacts / PREDICTIONS_FILE)
    if "gate_refused" not in frame:
        return "holdout          no gate columns in predictions.csv (evaluate without a gate)"
    refused = frame["gate_refused"].astype(str).str.lower().eq("true")
    return (f"holdout          {int(refused.sum())} of {len(frame)} test-split radiographs refused "
            f"({refused.mean():.2%}); turned {int((frame['gate_turn'] > 0).sum())}, flagged as maybe rotated "
            f"{int(frame['gate_turn_flagged'].astype(str).str.lower().eq('true').sum())}, as maybe mirrored "
            f"{int(frame['gate_mirrored'].astype(str).str.lower().eq('true').sum())}")


def samples_and_variants(predictor: Predictor, samples: Path) -> list[str]:
    labels = pd.read_csv(samples / "boneage-samples.csv")
    rows = []
    for _, row in labels.iterrows():
        gray = load_gray(samples / f"{row['id']}.png")
        status, upright, _ = _outcome(predictor, gray, bool(row["male"]))
        rows.append({"variant": "as filmed", "status": status, "warned": False, "delta": 0.0})
        for name, make in VARIANTS.items():
            status, age, warnings = _outcome(predictor, make(gray), bool(row["male"]))
            delta = abs(age - upright) if age is not None and upright is not None else np.nan
            rows.append({"variant": name, "status": status, "warned": bool(warnings), "delta": delta})
    table = pd.DataFrame(rows).groupby("variant", sort=False).agg(
        refused=("status", lambda s: int((s == "refused").sum())), corrected_or_flagged=("warned", "sum"),
        median_abs_change=("delta", "median"), n=("status", "size"))
    return [f"full-size samples (n={len(labels)}) and transformed copies:", table.to_string()]


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
