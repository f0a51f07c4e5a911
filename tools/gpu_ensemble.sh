#!/usr/bin/env bash
# Train a three-member multi-head ensemble with the gpu preset into one folder, then fit the input gate and the calibration and evaluate it.
#
# usage: tools/gpu_ensemble.sh DATA_DIR OUT [extra train.py flags, passed to every command]
#   e.g. tools/gpu_ensemble.sh ../shared/data/rsna-bone-age-299 runs/gpu-ensemble --cache-dir /tmp/boneage-cache
# Each training command is one member (about 10 minutes on one H100 under the preset's time budget).
# PYTHON picks the interpreter (default: the checkout's .venv/bin/python when present, else python3).
# When OUT has no split.csv yet, the committed artifacts/split.csv is copied in first (SPLIT= to skip), so the
# holdout is the committed one. Not yet run on a GPU (none was available when it was written).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 DATA_DIR OUT [extra train.py flags]" >&2
  exit 2
fi
DATA_DIR=$1
OUT=$2
shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -x "$REPO/.venv/bin/python" ]]; then default_python=$REPO/.venv/bin/python; else default_python=python3; fi
PYTHON=${PYTHON:-$default_python}
SPLIT=${SPLIT-$REPO/artifacts/split.csv}

mkdir -p "$OUT"
if [[ -n "$SPLIT" && -f "$SPLIT" && ! -f "$OUT/split.csv" ]]; then
  cp "$SPLIT" "$OUT/split.csv"
fi

train() {
  "$PYTHON" "$REPO/train.py" --data-dir "$DATA_DIR" --out "$OUT" --preset gpu "$@"
}

# member file stem, backbone, seed
MEMBERS=(
  "multihead_lite0_s1 tf_efficientnet_lite0 1"
  "multihead_lite0_s2 tf_efficientnet_lite0 2"
  "multihead_lite2_s1 tf_efficientnet_lite2 1"
)
files=()
for member in "${MEMBERS[@]}"; do
  read -r name backbone seed <<<"$member"
  train --stages multihead --model-name "$name" --backbone "$backbone" --seed "$seed" "$@"
  files+=("$name.pt")
done

members=$(IFS=,; echo "${files[*]}")
train --stages gate,calibrate,evaluate --members "$members" "$@"
