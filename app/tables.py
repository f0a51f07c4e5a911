"""The Batch page's results as tables: rounded for people on screen, machine-readable in the CSV (no Streamlit)."""

from __future__ import annotations

import pandas as pd

from boneage_core.report import whole_months_range
from boneage_core.spreadsheet import spreadsheet_safe

#: Whole-number columns of the results (written 25, not 25.0, even beside rows without a number).
WHOLE_COLUMNS = ("bone_age_whole_months",)


def for_people(results: pd.DataFrame) -> pd.DataFrame:
    """The on-screen table: what a clinician scans first (file, bone age, interval, stage, category, z, warnings,
    error), rounded for reading; the CSV download keeps the machine-readable columns."""
    def column(name: str) -> pd.Series:
        return results[name] if name in results else pd.Series([None] * len(results), index=results.index)

    def interval(low, high) -> str:
        return "" if pd.isna(low) or pd.isna(high) else whole_months_range(low, high)

    def z_text(z, low, high) -> str:
        return "" if pd.isna(z) else f"{z:+.2f} ({low:+.2f} to {high:+.2f})"

    table = pd.DataFrame({
        "File": column("file"),
        "Bone age (months)": column("bone_age_whole_months").astype("Int64"),
        "90 % interval (months)": [interval(lo, hi) for lo, hi in zip(column("interval_low_months"),
                                                                      column("interval_high_months"))],
        "Stage": column("stage_name"),
        "Category": column("clinical_category"),
        "z (interval)": [z_text(*z) for z in zip(column("z_score"), column("z_low"), column("z_high"))],
        "Warnings": column("warnings"),
        "Error": column("error"),
        "Sex": column("sex"),
        "Sex from": column("sex_from"),
        "Chronological age (months)": column("chronological_age_months").astype(float).round(1),
    })
    text = [c for c in table if c not in ("Bone age (months)", "Chronological age (months)")]
    table[text] = table[text].fillna("")
    return table


def for_machines(results: pd.DataFrame) -> pd.DataFrame:
    """The CSV download: every column, whole numbers as integers, text cells safe from spreadsheet formulas."""
    out = results.map(spreadsheet_safe)
    for name in WHOLE_COLUMNS:
        if name in out:
            out[name] = out[name].astype("Int64")
    return out
