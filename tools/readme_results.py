"""The README's results block, written from an evaluated folder's metrics.json, calibration.json and manifest.

Every figure in the block comes from the served artifacts; `tests/test_readme_results.py` fails when the
README's block and the committed artifacts disagree. After swapping in new artifacts:
``python -m tools.readme_results --artifacts artifacts --write README.md`` (without ``--write``: print it).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from boneage_core.artifacts import METRICS_FILE, read_json
from boneage_core.calibration import CALIBRATION_FILE
from boneage_core.evaluate import member_prefix
from boneage_core.heads import AGE, BASELINE, CNN, STAGE, UNCORRECTED, age_stage_column, system_column
from boneage_core.manifest import read_manifest
from boneage_core.plots import FEW_CASES
from boneage_core.views import Views, describe_views
from boneage_core.vocab import parse_sex

BEGIN, END = "<!-- results: written by tools/readme_results.py -->", "<!-- end of results -->"


def _num(value, digits: int) -> str:
    """A figure with `digits` decimals, a minus sign for negatives, '–' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}".replace("-", "−")


def _group(label: str) -> str:
    """An age group's label as prose writes it: '0-2 y' -> '0–2 y'."""
    return label.replace("-", "–")


def _signed(value) -> str:
    return ("+" if value > 0 else "") + _num(value, 1)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _few(v: dict) -> str:
    """' (n = 14)' after a subgroup's figure when it has few cases (plots.FEW_CASES), else ''."""
    return f" (n = {v['n']})" if v["n"] < FEW_CASES else ""


def _age_row(label: str, m: dict) -> str:
    return f"| {label} | {_num(m['mae'], 2)} | {_num(m['rmse'], 2)} | {_num(m['r2'], 3)} | {_pct(m['within_12m'])} | | | |"


def _stage_row(label: str, m: dict) -> str:
    return f"| {label} | | | | | {_num(m['accuracy'], 3)} | {_num(m['f1_macro'], 3)} | {_num(m['qwk'], 3)} |"


def results_table(metrics: dict, members: list[str], views: Views) -> list[str]:
    """The markdown table: the ensemble (age, before correction, each member, stage), then the baseline."""
    cnn_age, cnn_stage, uncorrected = system_column(CNN, AGE), system_column(CNN, STAGE), system_column(UNCORRECTED, AGE)
    corrected = "bias-corrected" if uncorrected in metrics else "no bias correction"
    lines = ["| prediction (metrics.json key) | MAE (months) | RMSE | R² | within 12 m | stage accuracy | macro F1 | QWK |",
             "|---|---|---|---|---|---|---|---|"]
    ensemble = f"CNN ensemble, bone age (`{cnn_age}`, {describe_views(views, short=True)}, {corrected})"
    lines.append(_age_row(ensemble, metrics[cnn_age]))
    if uncorrected in metrics:
        lines.append(_age_row(f"the same before the bias correction (`{uncorrected}`)", metrics[uncorrected]))
    for name in members:
        key = system_column(member_prefix(name), AGE)
        if key in metrics:
            lines.append(_age_row(f"member `{name}` alone (`{key}`, uncorrected)", metrics[key]))
    if cnn_stage in metrics:
        lines.append(_stage_row(f"CNN ensemble, stage head (`{cnn_stage}`)", metrics[cnn_stage]))
    derived = age_stage_column(CNN)
    if derived in metrics:
        lines.append(_stage_row(f"stage derived from the predicted age (`{derived}`)", metrics[derived]))
    base_age, base_stage = system_column(BASELINE, AGE), system_column(BASELINE, STAGE)
    if base_age in metrics and base_stage in metrics:
        a, s = metrics[base_age], metrics[base_stage]
        lines.append(f"| HOG + XGBoost baseline (`{base_age}`, `{base_stage}`) | {_num(a['mae'], 2)} | "
                     f"{_num(a['rmse'], 2)} | {_num(a['r2'], 3)} | {_pct(a['within_12m'])} | {_num(s['accuracy'], 3)} | "
                     f"{_num(s['f1_macro'], 3)} | {_num(s['qwk'], 3)} |")
    return lines


def interval_paragraph(metrics: dict, calibration: dict | None) -> list[str]:
    """Coverage and width of the prediction intervals, by age group; the fitted bias correction."""
    age = metrics[system_column(CNN, AGE)]
    interval = age.get("interval")
    if not interval:
        return [f"No prediction intervals and no bias correction: no `{CALIBRATION_FILE}` matched these members."]
    scored = {g: v for g, v in interval["by_age_group"].items() if v["n"]}
    groups = ", ".join(f"{_group(g)} {_num(v['coverage'], 2)}{_few(v)}" for g, v in scored.items())
    below = [_group(g) for g, v in scored.items() if v["coverage"] < interval["level"]]
    level = f"{100 * interval['level']:.0f} %"
    text = (f"**Prediction intervals** ({level}, split-conformal, fitted on the validation split; "
            f"`{CALIBRATION_FILE}`): coverage on the test split {_num(interval['coverage'], 3)}, mean width "
            f"{_num(interval['mean_width'], 1)} months; by true-age group {groups}"
            + (f" (below {level} in {', '.join(below)}: the level holds over all cases, not within every group)."
               if below else "."))
    uncorrected = metrics.get(system_column(UNCORRECTED, AGE))
    if calibration and uncorrected:
        fitted = calibration.get("fitted_on", {})
        text += (f" The linear bias correction fitted on validation is `true = {_num(calibration['intercept'], 2)} + "
                 f"{_num(calibration['slope'], 3)} × predicted` (validation MAE {_num(fitted.get('mae_uncorrected'), 2)} → "
                 f"{_num(fitted.get('mae_corrected'), 2)}, half of them the fit's own cases; test {_num(uncorrected['mae'], 2)} → {_num(age['mae'], 2)}).")
    return [text]


def breakdown_paragraph(metrics: dict) -> list[str]:
    """Per-stage recall of the stage head and of the age-derived stage; age MAE by sex and by age group."""
    parts = []
    head, derived = metrics.get(system_column(CNN, STAGE)), metrics.get(age_stage_column(CNN))
    if head and derived:
        recall = ", ".join(f"{name.lower()} {_num(head['per_class'][name]['recall'], 2)} / "
                           f"{_num(derived['per_class'][name]['recall'], 2)}" for name in head["per_class"])
        parts.append(f"Per-stage recall, stage head / stage from the predicted age: {recall}.")
    age = metrics[system_column(CNN, AGE)]
    sexes = ", ".join(f"{'boys' if parse_sex(sex) else 'girls'} {_num(v['mae'], 2)} (95 % CI "
                      f"{_num(v['mae_ci95'][0], 1)}–{_num(v['mae_ci95'][1], 1)})"
                      for sex, v in age["by_sex"].items() if v["n"])
    scored = [(g, v) for g, v in age["by_age_group"].items() if v["n"]]
    groups = ", ".join(f"{_group(g)} {_num(v['mae'], 1)}{_few(v)}" for g, v in scored)
    (first, low), (last, high) = scored[0], scored[-1]
    parts.append(f"MAE by sex: {sexes}; by age group: {groups}; bias (predicted − true) "
                 f"{_signed(low['bias'])} months at {_group(first)}{_few(low)} and {_signed(high['bias'])} at "
                 f"{_group(last)}{_few(high)}.")
    return [" ".join(parts)]


def results_block(folder: Path) -> str:
    """The whole block, between its BEGIN and END markers."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise SystemExit(f"{folder}: no manifest; run the evaluate stage there first")
    metrics = read_json(folder / METRICS_FILE, "metrics")
    if metrics is None:
        raise SystemExit(f"{folder}: no {METRICS_FILE}; run the evaluate stage there first")
    calibration = read_json(folder / CALIBRATION_FILE, "calibration")
    n = metrics[system_column(CNN, AGE)]["n"]
    lines = [BEGIN, f"Holdout test split, n = {n}; members {', '.join(f'`{m}`' for m in manifest.members)}.", ""]
    lines += results_table(metrics, manifest.members, manifest.views) + [""]
    lines += interval_paragraph(metrics, calibration) + [""]
    lines += breakdown_paragraph(metrics) + [END]
    return "\n".join(lines)


def _block_span(text: str) -> tuple[int, int]:
    """Start and end of the results block in `text`, markers included (SystemExit when they are missing)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the README has no results block ({BEGIN!r} ... {END!r})")
    return start, end + len(END)


def replace_block(text: str, block: str) -> str:
    """`text` with its results block replaced by `block`."""
    start, end = _block_span(text)
    return text[:start] + block + text[end:]


def readme_block(text: str) -> str:
    """The results block as the README has it."""
    start, end = _block_span(text)
    return text[start:end]


def main(argv: list[str] | None = None) -> int:
    """Print the block, or write it into a README (--write)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--write", type=Path, default=None, metavar="README", help="replace the block in this file")
    args = p.parse_args(argv)
    block = results_block(args.artifacts)
    if args.write is None:
        print(block)
        return 0
    args.write.write_text(replace_block(args.write.read_text(encoding="utf-8"), block), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
