"""Command-line bone-age prediction for one or more radiographs; errors are reported per file.

python -m boneage_core.predict --artifacts DIR --sex M|F [--json] [--tta] IMAGE...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .imaging import ImageLoadError
from .predictor import Prediction, Predictor

logger = logging.getLogger(__name__)


def _line(pred: Prediction) -> str:
    parts = [pred.name, f"sex={'M' if pred.male else 'F'}"]
    if pred.bone_age_months is not None:
        parts.append(f"bone_age={pred.bone_age_months:.1f} months ({pred.years_months})")
    if pred.interval is not None:
        parts.append(f"90%=[{pred.interval.low:.0f}, {pred.interval.high:.0f}]")
    prob = "" if pred.stage_probabilities is None else f" p={pred.stage_probabilities[pred.stage_name]:.2f}"
    parts.append(f"stage={pred.stage} {pred.stage_name}{prob}")
    parts += [f"WARNING: {w}" for w in pred.warnings]
    return "  ".join(parts)


def parse_sex(value: str) -> bool:
    """'M'/'male' -> True, 'F'/'female' -> False."""
    v = value.strip().lower()
    if v in ("m", "male"):
        return True
    if v in ("f", "female"):
        return False
    raise argparse.ArgumentTypeError(f"sex must be M or F, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    """Print one line (or JSON object) per image; exit 1 if any image failed, 2 if the models can't load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--sex", required=True, type=parse_sex, help="M or F (applies to every image)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation (default: as the artifacts were evaluated)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        predictor = Predictor.load(args.artifacts, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: e.g. --device cuda without a GPU
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            pred = predictor.predict(path, args.sex, tta=args.tta)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others; reported, counted
            failed += 1
            message = str(exc) if isinstance(exc, (ImageLoadError, OSError)) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (ImageLoadError, OSError)):
                logger.exception("unexpected failure on %s", path)
            if args.json:
                print(json.dumps({"name": path.name, "error": message}))
            else:
                print(f"{path.name}  error: {message}")
            continue
        print(json.dumps(pred.to_dict()) if args.json else _line(pred))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
