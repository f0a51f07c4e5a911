"""CSV cells a spreadsheet would run as a formula (CSV injection) neutralised with a leading apostrophe."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

#: A text cell starting with one of these is read as a formula (or as its start) by spreadsheet programs.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _is_number_text(text: str) -> bool:
    """True for text that is a plain number ('-1.5', '+3e2'): a spreadsheet reads it as a number, not a formula."""
    if text != text.strip():
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def spreadsheet_safe(value: Any) -> Any:
    """A text cell starting like a formula gets a leading "'"; numbers (also as text) and other values pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _is_number_text(value):
        return "'" + value
    return value


def spreadsheet_safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row (e.g. AssessmentReport.csv_row()) with every cell passed through spreadsheet_safe."""
    return {key: spreadsheet_safe(value) for key, value in row.items()}
