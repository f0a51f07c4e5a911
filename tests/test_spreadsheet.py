"""Spreadsheet formula neutralisation of CSV cells: text that starts like a formula, never numbers."""

from __future__ import annotations

import pytest

from boneage_core.spreadsheet import spreadsheet_safe, spreadsheet_safe_row


@pytest.mark.parametrize("text", ['=HYPERLINK("x")', "+1+cmd", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "-", "=", "\t-1"])
def test_formula_like_text_gets_an_apostrophe(text):
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("value", [-1.5, 0, -3, "-1.5", "+2", "1e-3", "plain", "a=b", "", None, True, "'=x"])
def test_numbers_and_plain_text_pass_unchanged(value):
    assert spreadsheet_safe(value) is value or spreadsheet_safe(value) == value


def test_a_row_is_neutralised_cell_by_cell():
    row = {"name": "=cmd|' /C calc'!A0", "z_score": -1.5, "warnings": "-low contrast", "sex": "F"}
    assert spreadsheet_safe_row(row) == {"name": "'=cmd|' /C calc'!A0", "z_score": -1.5,
                                         "warnings": "'-low contrast", "sex": "F"}
