"""The README's results block (tools/readme_results.py) is the committed artifacts' figures, and fails when they part."""

import json
import shutil
from pathlib import Path

import pytest

from boneage_core.artifacts import METRICS_FILE
from boneage_core.heads import AGE, CNN, UNCORRECTED, system_column
from tools.readme_results import BEGIN, END, main, readme_block, replace_block, results_block

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS, README = ROOT / "artifacts", ROOT / "README.md"


def test_the_readme_shows_the_committed_artifacts_figures():
    assert readme_block(README.read_text(encoding="utf-8")) == results_block(ARTIFACTS), (
        "README.md's results differ from artifacts/: run python -m tools.readme_results --write README.md")


def test_changed_metrics_change_the_block_and_write_replaces_only_the_block(tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS, folder, ignore=shutil.ignore_patterns("*.pt", "*.ubj", "gate.npz"))
    metrics = json.loads((folder / METRICS_FILE).read_text())
    served_mae = metrics[system_column(CNN, AGE)]["mae"]
    metrics[system_column(CNN, AGE)]["mae"] = 6.789
    (folder / METRICS_FILE).write_text(json.dumps(metrics))
    block = results_block(folder)
    row = next(line for line in block.splitlines() if f"`{system_column(CNN, AGE)}`" in line)
    assert "| 6.79 |" in row and f"| {served_mae:.2f} |" not in row
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold\n{END}\n\nafter\n", encoding="utf-8")
    assert main(["--artifacts", str(folder), "--write", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\n") and text.endswith("\n\nafter\n") and readme_block(text) == block


def test_a_readme_without_the_markers_is_refused():
    with pytest.raises(SystemExit, match="no results block"):
        replace_block("# no block here\n", "block")


def test_empty_groups_are_left_out_and_an_uncalibrated_ensemble_is_not_called_corrected(tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS, folder, ignore=shutil.ignore_patterns("*.pt", "*.ubj", "gate.npz"))
    metrics = json.loads((folder / METRICS_FILE).read_text())
    age = metrics[system_column(CNN, AGE)]
    youngest = next(iter(age["by_age_group"]))
    age["by_age_group"][youngest] = {"n": 0}  # what metrics.regression_breakdown writes for an empty group
    age["interval"]["by_age_group"][youngest] = {"n": 0}
    del metrics[system_column(UNCORRECTED, AGE)]
    (folder / METRICS_FILE).write_text(json.dumps(metrics))
    block = results_block(folder)
    assert "no bias correction" in block and "bias-corrected" not in block
    assert youngest.replace("-", "–") not in block
