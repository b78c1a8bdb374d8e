#!/usr/bin/env bash
# SD 1.5 UNet forward, PyTorch beside ours, alternated ROUNDS times on this machine (whose
# speed drifts: only alternated runs compare). Needs a Python with torch: PYTHON=/path/python
# (default python3). Dev-only; the package never runs Python.
#   bash bench/pytorch/side-by-side.sh [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
ROUNDS="${1:-2}"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "side-by-side: $PY has no torch; set PYTHON to a Python with torch installed (e.g. a venv with 'pip install torch')" >&2
  exit 1
fi
echo "torch $("$PY" -c 'import torch; print(torch.__version__)'), $(nproc) cores"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  "$PY" bench/pytorch/unet_sd15.py f32 "$(nproc)" 3 | tail -2 | sed 's/^/  pytorch f32 /'
  npm run --silent bench -- unet --runs 2 2>/dev/null | grep '^unet' | sed 's/^/  ours /'
  npm run --silent bench -- unet --dtype f16 --runs 2 2>/dev/null | grep '^unet' | sed 's/^/  ours /'
done
