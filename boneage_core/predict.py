"""Command-line bone-age prediction for one or more radiographs; errors are reported per file.

python -m boneage_core.predict --artifacts DIR --sex M|F [--json] [--views 1,0.94 | --tta | --no-tta]
    [--chronological-age-months N | --birth-date YYYY-MM-DD --study-date YYYY-MM-DD] IMAGE...
(for folders or CSV lists of many images with a sex per row, use ``python -m boneage_core.batch``)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .assess import as_date, assess
from .errors import BoneAgeError, InputError
from .predictor import Predictor
from .report import AssessmentReport
from .views import add_views_arguments
from .vocab import SEX_HELP, SexError, parse_sex

logger = logging.getLogger(__name__)


def _line(report: AssessmentReport) -> str:
    parts = [report.name, f"sex={report.sex}", f"bone_age={report.bone_age_text}"]
    if report.interval_text:
        parts.append(report.interval_text)
    probs = dict(report.stage_probabilities or ())
    prob = f" p={probs[report.stage_name]:.2f}" if report.stage_name in probs else ""
    parts.append(f"stage={report.stage_name}{prob} ({report.stage_source})")
    if report.readout is not None:
        parts.append(f"z={report.readout.z_score:+.2f} ({report.readout.category})")
    elif report.readout_note:
        parts.append(f"no z-score: {report.readout_note}")
    parts += [f"WARNING: {w}" for w in report.warnings]
    return "  ".join(parts)


def sex_argument(value: str) -> bool:
    """argparse type for --sex: the shared vocabulary (M/F, male/female, ...)."""
    try:
        return parse_sex(value)
    except SexError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _date_argument(value: str):
    """argparse type for the dates (YYYY-MM-DD or YYYYMMDD)."""
    try:
        return as_date(value, "date")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boneage-predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--sex", required=True, type=sex_argument, help=f"{SEX_HELP}; applies to every image")
    parser.add_argument("--json", action="store_true", help="one JSON report per line")
    parser.add_argument("--chronological-age-months", type=float, help="age at the study, for the Greulich-Pyle "
                        "z-score (applies to every image; DICOM files otherwise give it from their dates)")
    parser.add_argument("--birth-date", type=_date_argument, help="YYYY-MM-DD, with --study-date, instead of the age")
    parser.add_argument("--study-date", type=_date_argument, help="YYYY-MM-DD, with --birth-date")
    add_views_arguments(parser, None, "(default: the manifest's, as the artifacts were evaluated; other views "
                        "give estimates without the bias correction and interval, which were fitted on those)")
    parser.add_argument("--device", default="cpu")
    return parser


def _report_error(path: Path, exc: Exception, as_json: bool) -> None:
    expected = isinstance(exc, (BoneAgeError, OSError))
    message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
    if not expected:
        logger.exception("unexpected failure on %s", path)
    print(json.dumps({"name": path.name, "error": message}) if as_json else f"{path.name}  error: {message}")


def main(argv: list[str] | None = None) -> int:
    """Print one line (or JSON report) per image; exit 1 if any image failed, 2 if the models can't load."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        predictor = Predictor.load(args.artifacts, args.device)
    except (BoneAgeError, FileNotFoundError, RuntimeError) as exc:  # RuntimeError: e.g. --device cuda without a GPU
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)
    failed = 0
    for path in args.images:
        try:
            report = assess(predictor, path, args.sex, chronological_age_months=args.chronological_age_months,
                            birth_date=args.birth_date, study_date=args.study_date, views=args.views)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others; reported, counted
            failed += 1
            _report_error(path, exc, args.json)
            continue
        print(json.dumps(report.to_dict()) if args.json else _line(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
