#!/usr/bin/env bash
# SD 1.5 UNet forward and VAE encoder at 512x512, PyTorch beside ours, alternated ROUNDS
# times on this machine (whose speed drifts: only alternated runs compare). Needs a Python
# with torch: PYTHON=/path/python (default python3; Debian's python3-torch is PyTorch
# 1.13, the version the speed targets name). Dev-only; the package never runs Python.
#   bash bench/pytorch/side-by-side.sh [ROUNDS=2] [unet|vae|all=all]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
ROUNDS="${1:-2}"
WHAT="${2:-all}"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "side-by-side: $PY has no torch; set PYTHON to a Python with torch installed (Debian: apt-get install python3-torch, then PYTHON=/usr/bin/python3)" >&2
  exit 1
fi
echo "torch $("$PY" -c 'import torch; print(torch.__version__)'), $(nproc) cores"
# ratio PYTORCH_RUNS OURS_LINE: our median over the mean of PyTorch's printed runs (a run
# disturbed by other work shows in the lines above it: leave that round out by hand)
ratio() {
  local pt ours
  pt=$(echo "$1" | sed -nE 's/.*: ([0-9.]+) s$/\1/p' | awk '{ s += $1; n++ } END { if (n) print s / n }')
  ours=$(echo "$2" | sed -nE 's/^[^:]*: ([0-9.]+) s.*/\1/p')
  if [ -n "$pt" ] && [ -n "$ours" ]; then
    awk -v o="$ours" -v p="$pt" 'BEGIN { printf "  ratio %.2f (ours %.2f s / PyTorch f32 %.2f s)\n", o / p, o, p }'
  fi
}
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  if [ "$WHAT" != vae ]; then
    pt=$("$PY" bench/pytorch/unet_sd15.py f32 "$(nproc)" 3 | tail -2)
    echo "$pt" | sed 's/^/  pytorch unet f32 /'
    for dt in f32 f16; do
      o=$(npm run --silent bench -- unet --dtype "$dt" --runs 2 2>/dev/null | grep '^unet')
      echo "  ours $o"
      ratio "$pt" "$o"
    done
  fi
  if [ "$WHAT" != unet ]; then
    pt=$("$PY" bench/pytorch/vae_encoder_sd15.py f32 "$(nproc)" 3 | tail -2)
    echo "$pt" | sed 's/^/  pytorch vae encoder f32 /'
    o=$(npm run --silent bench -- vae --runs 2 2>/dev/null | grep '^vae')
    echo "  ours $o"
    ratio "$pt" "$o"
  fi
done
