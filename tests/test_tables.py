"""app.tables: the Batch page's results rounded for people and machine-readable for the CSV."""

from __future__ import annotations

import pandas as pd

from app.tables import for_machines, for_people


def test_the_csv_keeps_machine_precision_and_whole_months_as_integers():
    """bone_age_whole_months is written 25 (not 25.0) beside a row without a number; intervals to 0.1 month."""
    results = pd.DataFrame({"file": ["a.png", "b.png"], "bone_age_whole_months": [25.0, None],
                            "interval_low_months": [10.04, None], "interval_high_months": [40.96, None],
                            "error": ["", "sex missing"]})
    csv = for_machines(results).to_csv(index=False)
    assert "a.png,25," in csv and "25.0" not in csv
    people = for_people(results)
    assert people.loc[0, "90 % interval (months)"] == "10–41" and people.loc[1, "90 % interval (months)"] == ""


def test_the_csv_download_runs_no_formula():
    """A file named like a formula lands as text; a negative z stays a number."""
    results = pd.DataFrame({"file": ['=HYPERLINK("http://x")', "b.png"], "z_score": [-1.5, 0.2], "error": ["", ""]})
    csv = for_machines(results).to_csv(index=False)
    assert "'=HYPERLINK" in csv and "\n=HYPERLINK" not in csv and ",-1.5," in csv
