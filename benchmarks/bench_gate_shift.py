"""The input gate's decisions on one split's films under every acquisition shift, and on the generated non-radiographs.

python -m benchmarks.bench_gate_shift --split test --n 150 --samples ../shared/data/samples-fullres --out gate_shift.md

Only the gate member runs (``Ensemble.decide``: ``Ensemble.decisions``, the rule ``Predictor.predict``
applies), so all shifts of a few hundred films take minutes: per transform the share of films refused, scored
with the "unusual image" warning, turned back, flagged as maybe rotated, mirrored back and inverted back. The
estimates (MAE) under each shift are ``benchmarks/bench_shift.py``'s.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from boneage_core.acquisition import CLEAN, SHIFTS, as_upload
from boneage_core.errors import InputError
from boneage_core.gate import GateDecision
from boneage_core.imaging import load_gray
from boneage_core.predictor import Predictor
from benchmarks.bench_shift import _transforms, split_films
from tests.negatives import negative_set

#: Table columns: what the rule did, as the share of the films of a row.
OUTCOMES = ("refused", "unusual", "turned back", "flagged turned", "mirrored back", "inverted back")


def outcome(decision: GateDecision) -> dict[str, bool]:
    """What the gate did with one film (the OUTCOMES)."""
    return {"refused": decision.refused, "unusual": decision.verdict.unusual and not decision.refused,
            "turned back": bool(decision.turn), "flagged turned": decision.turn_flagged and not decision.refused,
            "mirrored back": decision.correction.mirror, "inverted back": decision.correction.invert}


def measure(predictor: Predictor, films: pd.DataFrame, shifts: dict) -> pd.DataFrame:
    """One row per (film, transform) with the OUTCOMES."""
    rows = []
    for film in tqdm(films.itertuples(index=False), total=len(films), unit="film"):
        gray = load_gray(film.path)
        for name, shift in shifts.items():
            image = gray if name == CLEAN else as_upload(shift(gray))
            rows.append({"id": film.id, "transform": name, **outcome(predictor.decide(image))})
    return pd.DataFrame(rows)


def table(readings: pd.DataFrame) -> str:
    """Markdown: per transform, n and the count (share) of each outcome."""
    lines = ["| transform | n | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for name, group in readings.groupby("transform", sort=False):
        cells = [f"{int(group[o].sum())} ({group[o].mean():.1%})" for o in OUTCOMES]
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def negatives(predictor: Predictor, samples: Path | None) -> list[str]:
    """One line per generated non-radiograph: refused (by the gate or the loader) or scored, with its score."""
    lines, refused = [], 0
    images = negative_set(samples)
    for name, image in images.items():
        try:
            decision = predictor.decide(image)
        except InputError as exc:
            refused += 1
            lines.append(f"| {name} | refused before the gate | {str(exc)[:60]} |")
            continue
        refused += decision.refused
        status = "refused" if decision.refused else "unusual" if decision.verdict.unusual else "ACCEPTED"
        lines.append(f"| {name} | {status} | score {decision.verdict.score:.2f} (as given {decision.as_given.score:.2f}) |")
    return [f"generated non-radiographs: {refused} of {len(images)} refused", "", "| image | outcome | |",
            "|---|---|---|"] + lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/rsna-bone-age-299"))
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--n", type=int, default=150, help="films of the split (a seeded random subset)")
    parser.add_argument("--samples", type=Path, default=None, help="full-size samples folder (cropped-finger and "
                        "photo-of-a-screen negatives)")
    parser.add_argument("--transforms", type=_transforms, default=SHIFTS, help="comma list (default: every row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.artifacts)
    if predictor.gate is None:
        raise SystemExit("no input gate: " + "; ".join(predictor.notes))
    started = datetime.now(timezone.utc)
    films = split_films(args.artifacts, args.data_dir, args.n, args.seed, args.split)
    parts = [f"### {args.split} split, n = {len(films)}\n\n{table(measure(predictor, films, args.transforms))}\n",
             "\n".join(negatives(predictor, args.samples)) + "\n"]
    minutes = (datetime.now(timezone.utc) - started).total_seconds() / 60
    parts.append(f"{started:%Y-%m-%d %H:%M} UTC, model version {predictor.version}, gate member {predictor.gate_name}, "
                 f"{args.threads} thread(s), {minutes:.1f} min.\n")
    print("\n".join(parts))
    if args.out is not None:
        args.out.write_text("\n".join(parts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
