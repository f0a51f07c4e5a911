"""Names defined once: the sex vocabulary, the bone-age range and the model output heads' names."""

from __future__ import annotations

import logging

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

#: Bone ages are in months, within this range (the RSNA labels run 1-228; the models clip to it).
AGE_MIN_MONTHS = 0.0
AGE_MAX_MONTHS = 240.0

#: Where the one stage shown for an image comes from: the network's stage head, or the predicted age.
STAGE_FROM_HEAD, STAGE_FROM_AGE = "stage head", "derived from the predicted bone age"

#: Codes written to files and shown to users.
MALE, FEMALE = "M", "F"
_SEX_WORDS = {
    "m": True, "male": True, "boy": True, "1": True, "true": True, "t": True, "yes": True,
    "f": False, "female": False, "girl": False, "0": False, "false": False, "no": False,
}
#: The words accepted for a sex, for messages.
SEX_HELP = "M or F (also male/female, boy/girl, 1/0, true/false)"


class SexError(InputError):
    """A sex value that is missing or not understood."""


def parse_sex(value: object) -> bool:
    """One sex value -> True for male, False for female; SexError when missing or not understood.

    Booleans pass through; numbers 1/0 and the words in SEX_HELP are read case-insensitively. None,
    NaN and empty strings are missing: a bone age is never scored with a guessed sex.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if sex_missing(value):
        raise SexError(f"sex missing: give {SEX_HELP}")
    if isinstance(value, (int, np.integer, float)) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word not in _SEX_WORDS:
        raise SexError(f"sex not understood: {value!r}; give {SEX_HELP}")
    return _SEX_WORDS[word]


def sex_missing(value: object) -> bool:
    """True for None, NaN and blank text: no sex was given at all (as opposed to an unreadable one)."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip())


def sex_code(male: bool) -> str:
    """True -> 'M', False -> 'F'."""
    return MALE if male else FEMALE


def clip_age(months: np.ndarray | float) -> np.ndarray:
    """Ages in months clipped to the label range."""
    return np.clip(np.asarray(months, dtype=np.float64), AGE_MIN_MONTHS, AGE_MAX_MONTHS)
