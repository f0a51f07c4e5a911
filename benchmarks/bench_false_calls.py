"""Clinical read-out on the holdout with chronological age = true bone age (normal by construction): false-call rates.

python -m benchmarks.bench_false_calls --artifacts artifacts
"point": |z| > 2 on the point estimate (the old rule); "interval": advanced/delayed only when the whole
z-interval (the validation-calibrated 90 % interval evaluate wrote) lies beyond +-2 (the rule the app, CLI and reports use). Target (issue 10): <= 2 % overall.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from boneage_core.clinical import holdout_false_calls, load_reference
from boneage_core.heads import CNN
from boneage_core.manifest import PREDICTIONS_FILE, evaluated_path, read_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    frame = pd.read_csv(evaluated_path(args.artifacts, read_manifest(args.artifacts), PREDICTIONS_FILE))
    result = holdout_false_calls(frame, load_reference(), CNN)
    for rule, groups in result.items():
        for group in ("overall", "under_2y"):
            g = groups[group]
            print(f"{rule:<9} {group:<9} n={g['n']:<5} false calls {g['false_call_rate']:.2%}  {g['counts']}")
    print(f"left out (chronological age outside the reference table): {result['interval'].get('n_outside_reference')}")
    return 0 if result["interval"]["overall"]["false_call_rate"] <= 0.02 else 1


if __name__ == "__main__":
    raise SystemExit(main())
