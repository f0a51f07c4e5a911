"""views: the test-time view sets, parsed, validated, read from old and new records and described."""

from __future__ import annotations

import argparse

import pytest

from boneage_core.views import (NO_TTA, TTA_SCALES, add_views_arguments, as_views, describe_views, parse_views,
                                view_index, views_from_record)


def test_as_views_orders_like_tta_scales_and_needs_the_image_itself():
    assert as_views([0.94, 1.0]) == (1.0, 0.94)
    assert as_views(reversed(TTA_SCALES)) == TTA_SCALES
    assert as_views([1]) == NO_TTA
    with pytest.raises(ValueError, match="must include 1.0"):
        as_views([0.94, 1.06])
    with pytest.raises(ValueError, match="repeat"):
        as_views([1.0, 1.0])
    with pytest.raises(ValueError, match="choose zoom factors"):
        as_views([1.0, 0.9])
    with pytest.raises(ValueError, match="choose zoom factors"):
        as_views([])
    with pytest.raises(ValueError, match="numbers"):
        as_views(["a"])


def test_parse_views_words_and_lists():
    assert parse_views("all") == TTA_SCALES and parse_views("TTA") == TTA_SCALES
    assert parse_views("none") == NO_TTA
    assert parse_views("1, 0.94") == (1.0, 0.94) and parse_views("1.06,1") == (1.0, 1.06)
    with pytest.raises(ValueError):
        parse_views("0.94")
    with pytest.raises(ValueError, match=r"got \['a'\]"):  # the text given, not a generator's repr
        parse_views("a")


def test_views_from_record_reads_views_and_the_legacy_flag():
    assert views_from_record({"views": [1.0, 0.94]}) == (1.0, 0.94)
    assert views_from_record({"tta": True}) == TTA_SCALES
    assert views_from_record({"tta": False}) == NO_TTA
    assert views_from_record({}) == NO_TTA
    assert views_from_record({"views": [1.0], "tta": True}) == NO_TTA  # the new key wins
    with pytest.raises(ValueError, match="true or false"):
        views_from_record({"tta": "yes"}, "manifest.json")
    with pytest.raises(ValueError, match="must include 1.0"):
        views_from_record({"views": [0.94]})


def test_view_index_names_per_view_columns():
    assert [view_index(s) for s in TTA_SCALES] == [0, 1, 2]
    assert [view_index(s) for s in as_views([1.0, 1.06])] == [0, 2]
    with pytest.raises(ValueError, match="not a test-time view"):
        view_index(0.5)


def test_descriptions():
    assert describe_views(NO_TTA) == "no TTA (the image alone)"
    assert describe_views((1.0, 0.94)) == "2 test-time views (zoom 1, 0.94)"
    assert describe_views(TTA_SCALES) == "3 test-time views (zoom 1, 0.94, 1.06)"
    assert describe_views(NO_TTA, short=True) == "no TTA" and describe_views(TTA_SCALES, short=True) == "3-view TTA"
    assert describe_views((1.0, 0.94), short=True) == "2-view TTA (zoom 1, 0.94)"


@pytest.mark.parametrize("argv, expected", [([], None), (["--tta"], TTA_SCALES), (["--no-tta"], NO_TTA),
                                            (["--views", "0.94,1"], (1.0, 0.94)), (["--views", "all"], TTA_SCALES)])
def test_views_arguments(argv, expected):
    parser = argparse.ArgumentParser()
    add_views_arguments(parser, None, "here")
    assert parser.parse_args(argv).views == expected


@pytest.mark.parametrize("argv", [["--views", "0.94"], ["--views", "1,2"], ["--tta", "--views", "1"],
                                  ["--views", "all", "--no-tta"], ["--views", "none", "--no-tta"]])
def test_views_arguments_refuse_bad_sets(argv, capsys):
    parser = argparse.ArgumentParser()
    add_views_arguments(parser, NO_TTA, "here")
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert "--views" in capsys.readouterr().err
