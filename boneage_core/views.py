"""Test-time views: the zoom factors an estimate averages over, defined once, parsed and described here.

A view set is a tuple of zoom factors taken from :data:`TTA_SCALES`, in that order, always holding 1.0
(the image itself, whose backbone pass also feeds the input gate). The manifest and the calibration record
the set the holdout metrics and intervals were made with; ``Predictor`` serves it. Older files that say
``"tta": true / false`` read as all three views / the image alone (:func:`views_from_record`).
"""

from __future__ import annotations

import argparse
import logging
from typing import Iterable, Mapping

logger = logging.getLogger(__name__)

#: Zoom factors of the deterministic test-time views (1.0 = the image itself; < 1 zooms in).
TTA_SCALES: tuple[float, ...] = (1.0, 0.94, 1.06)
#: The image alone (no test-time augmentation).
NO_TTA: tuple[float, ...] = (1.0,)
#: Key of the view set in manifest.json, calibration.json and the run's config; the legacy boolean key.
VIEWS_KEY, LEGACY_TTA_KEY = "views", "tta"

Views = tuple[float, ...]


def as_views(scales: Iterable[float]) -> Views:
    """Validate zoom factors as a view set: distinct members of TTA_SCALES, 1.0 among them; in TTA_SCALES order."""
    try:
        wanted = [float(s) for s in scales]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"test-time views must be numbers among {_choices()}, got {scales!r}") from exc
    unknown = [s for s in wanted if s not in TTA_SCALES]
    if unknown or not wanted:
        raise ValueError(f"test-time views {wanted} : choose zoom factors among {_choices()}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"test-time views {wanted} repeat a zoom factor")
    if 1.0 not in wanted:
        raise ValueError(f"test-time views {wanted} must include 1.0 (the image itself; the input gate reads it)")
    return tuple(s for s in TTA_SCALES if s in wanted)


def parse_views(text: str) -> Views:
    """'1,0.94' -> (1.0, 0.94); 'all' -> TTA_SCALES; 'none' -> NO_TTA (ValueError on anything else)."""
    word = text.strip().lower()
    if word in ("all", "tta"):  # a new tuple each time: argparse tells a given value from its default by identity
        return as_views(TTA_SCALES)
    if word == "none":
        return as_views(NO_TTA)
    return as_views([part for part in word.split(",") if part.strip()])


def views_from_record(record: Mapping, source: str = "record") -> Views:
    """The view set a manifest / calibration / config dict records: its "views", else its legacy "tta" flag."""
    if VIEWS_KEY in record and record[VIEWS_KEY] is not None:
        return as_views(record[VIEWS_KEY])
    tta = record.get(LEGACY_TTA_KEY, False)
    if not isinstance(tta, bool):
        raise ValueError(f"{source}: 'tta' must be true or false, got {tta!r}")
    return TTA_SCALES if tta else NO_TTA


def view_index(scale: float) -> int:
    """Position of a zoom factor in TTA_SCALES (the number in per-view columns: view1 = zoom 0.94); else ValueError."""
    if scale not in TTA_SCALES:
        raise ValueError(f"zoom {scale!r} is not a test-time view; choose among {_choices()}")
    return TTA_SCALES.index(scale)


def describe_views(views: Views, short: bool = False) -> str:
    """Human text of a view set, for prose or (`short`) for a table cell.

    Prose: 'no TTA (the image alone)', '2 test-time views (zoom 1, 0.94)'. Short: 'no TTA', '3-view TTA'
    (every view), '2-view TTA (zoom 1, 0.94)'.
    """
    views = tuple(views)
    if views == NO_TTA:
        return "no TTA" if short else "no TTA (the image alone)"
    if not short:
        return f"{len(views)} test-time views (zoom {_zooms(views)})"
    text = f"{len(views)}-view TTA"
    return text if views == TTA_SCALES else f"{text} (zoom {_zooms(views)})"


def views_argument(text: str) -> Views:
    """argparse type of --views (ArgumentTypeError with the choices on bad text)."""
    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_views_arguments(parser: argparse.ArgumentParser, default: Views | None, what: str) -> None:
    """--views 1,0.94 | all | none, with --tta (all views) and --no-tta (the image alone) as shorthands."""
    group = parser.add_mutually_exclusive_group()  # values are fresh tuples, so argparse sees any given one as given
    group.add_argument("--views", type=views_argument, default=default, metavar="SCALES",
                       help=f"test-time zoom factors {what}: a comma list among {_choices()} holding 1, "
                            "or 'all' / 'none'")
    group.add_argument("--tta", dest="views", action="store_const", const=as_views(TTA_SCALES), default=argparse.SUPPRESS,
                       help="all test-time views (--views all)")
    group.add_argument("--no-tta", dest="views", action="store_const", const=as_views(NO_TTA), default=argparse.SUPPRESS,
                       help="the image alone (--views none)")


def _zooms(views: Iterable[float]) -> str:
    return ", ".join(f"{s:g}" for s in views)


def _choices() -> str:
    return _zooms(TTA_SCALES)
