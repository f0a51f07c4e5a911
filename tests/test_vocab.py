"""vocab: the one sex vocabulary, sex codes and the bone-age range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boneage_core.vocab import (AGE_MAX_MONTHS, AGE_MIN_MONTHS, FEMALE, MALE, SEX_HELP, SexError, clip_age,
                                parse_sex, sex_code)

MALE_SPELLINGS = [True, np.bool_(True), 1, np.int64(1), 1.0, "1", "M", "m", "male", "Male", "MALE", " male ",
                  "boy", "Boy", "true", "True", "TRUE", "t", "yes", "\tM\n"]
FEMALE_SPELLINGS = [False, np.bool_(False), 0, np.int64(0), 0.0, "0", "F", "f", "female", "Female", "FEMALE",
                    " female ", "girl", "GIRL", "false", "False", "no", " F "]


@pytest.mark.parametrize("value", MALE_SPELLINGS, ids=repr)
def test_male_spellings(value):
    assert parse_sex(value) is True


@pytest.mark.parametrize("value", FEMALE_SPELLINGS, ids=repr)
def test_female_spellings(value):
    assert parse_sex(value) is False


def test_f_is_female_not_a_truthy_string():
    """A past bug read any non-empty string as male; 'F' and 'female' are truthy strings but female."""
    assert bool("F") and parse_sex("F") is False
    assert parse_sex("female") is False and parse_sex("FEMALE") is False


@pytest.mark.parametrize("value", [None, float("nan"), np.float64("nan"), "", "   "], ids=repr)
def test_missing_sex_is_refused(value):
    with pytest.raises(SexError, match="missing") as info:
        parse_sex(value)
    assert SEX_HELP in str(info.value)


@pytest.mark.parametrize("value", ["x", "unknown", "mf", 2, -1, 0.5, "2"], ids=repr)
def test_unknown_sex_is_refused_naming_the_value(value):
    with pytest.raises(SexError) as info:
        parse_sex(value)
    assert repr(value) in str(info.value)
    assert "not understood" in str(info.value)


def test_sex_error_is_a_value_error():
    assert issubclass(SexError, ValueError)
    with pytest.raises(ValueError):
        parse_sex("x")


def test_sex_code_round_trips_through_parse_sex():
    assert (MALE, FEMALE) == ("M", "F")
    assert sex_code(True) == MALE and sex_code(False) == FEMALE
    for male in (True, False):
        assert parse_sex(sex_code(male)) is male


def test_clip_age_bounds():
    assert (AGE_MIN_MONTHS, AGE_MAX_MONTHS) == (0.0, 240.0)
    out = clip_age([-5.0, 0.0, 1.5, 239.9, 240.0, 300.0])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.5, 239.9, 240.0, 240.0])
    assert float(clip_age(-1e9)) == AGE_MIN_MONTHS and float(clip_age(1e9)) == AGE_MAX_MONTHS
    assert float(clip_age(120)) == 120.0
    assert math.isnan(float(clip_age(float("nan"))))  # a missing age stays missing, it is not clipped to a bound
