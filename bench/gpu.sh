#!/usr/bin/env bash
# One command for a machine with a GPU and a Vulkan driver (e.g. NVIDIA): prints the kernel
# figures and the full-size model figures, as on the CPU adapter. Finishes in a few minutes.
#   bash bench/gpu.sh            (after npm ci)
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules/webgpu ] || npm ci --no-audit --no-fund
export MESA_SHADER_CACHE_DIR="${MESA_SHADER_CACHE_DIR:-$PWD/.cache/mesa}"
run() { echo "== npm run bench -- $*"; timeout "${BENCH_TIMEOUT:-240}" node_modules/.bin/tsx bench/index.ts "$@" || echo "(failed or timed out: $*)"; }
node_modules/.bin/tsx src/cli.ts doctor
run kernels --json
run unet --json --runs 3
run unet --json --runs 3 --dtype f16
run unet --json --runs 3 --profile
run vae --json --runs 3
run text --json
run segment --json
