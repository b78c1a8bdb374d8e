#!/usr/bin/env bash
# One command for a machine with a GPU and a Vulkan driver (e.g. NVIDIA): the kernel tests,
# the kernel figures, the 'gpu' kernel choices side by side (`bench -- ab`), the full-size
# model figures and the demo, as on the CPU adapter. A few minutes on an H100.
#   bash bench/gpu.sh             after npm ci; or, on a machine without network, after
#                                 `bash bench/gpu-pack.sh` here and carrying .gpu-pack along
#   bash bench/gpu.sh segment [ab|self]  a warm segmentation's time and its JS recording,
#                                 with the ELBO calls pipelined and one at a time
#                                 (ELBO_IN_FLIGHT=1); ab: the attention kernels side by side
#                                 (bench -- ab, AB_ONLY=attention); self: the self-attention
#                                 propagation on the host (ELBO_SELF_HOST=1)
#   bash bench/gpu.sh compile [tests|attention|sync]   where the first run's time goes
#                                 (pipeline compiles, bench -- compile), with and without the
#                                 driver's disk cache, a segmentation run twice in one process,
#                                 the VAE; then the kernel tests, or the attention tests
# Logs and a summary go to $OUT (default $TMPDIR/gpu-bench); GPU_BUDGET seconds in all (560);
# GPU_SKIP="ab kernels" leaves out the steps so named.
set -u
cd "$(dirname "$0")/.."
T0=$SECONDS
TMP=${TMPDIR:-/tmp}
OUT=${OUT:-$TMP/gpu-bench}
mkdir -p "$OUT"
log() { echo "[$((SECONDS - T0))s] $*"; }
step() { # step NAME LIMIT CMD...: runs CMD with its output in $OUT/NAME.log, within the budget
  local name=$1 t=$2
  shift 2
  case " ${GPU_SKIP:-} " in *" $name "*) log "skip $name (GPU_SKIP)"; echo "$name skipped" >>"$OUT/summary.txt"; return 98 ;; esac
  local left=$((${GPU_BUDGET:-560} - (SECONDS - T0)))
  [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -lt 15 ]; then log "skip $name (out of time)"; echo "$name skipped" >>"$OUT/summary.txt"; return 99; fi
  log "== $name (limit ${t}s)"
  local s=$SECONDS
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  log "   $name rc=$rc in $((SECONDS - s))s"
  echo "$name rc=$rc $((SECONDS - s))s" >>"$OUT/summary.txt"
  return $rc
}

# Offline set-up from bench/gpu-pack.sh's bundle: Node, node_modules, the Vulkan loader and
# the glvnd libraries NVIDIA's Vulkan driver (libGLX_nvidia) needs.
if [ -d .gpu-pack ]; then
  mkdir -p "$TMP/gpu-node"
  [ -x "$TMP/gpu-node/node" ] || xz -dc .gpu-pack/node.xz >"$TMP/gpu-node/node"
  chmod +x "$TMP/gpu-node/node"
  export PATH="$TMP/gpu-node:$PATH"
  [ -d node_modules/webgpu ] || tar -xJf .gpu-pack/node_modules.tar.xz
  if [ "$(id -u)" = 0 ]; then
    for f in .gpu-pack/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
fi
[ -d node_modules/webgpu ] || npm ci --no-audit --no-fund
# Containers often mount NVIDIA's driver here without registering its Vulkan ICD.
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$ICD" ] && [ -z "${VK_DRIVER_FILES:-}" ] && export VK_DRIVER_FILES=$ICD VK_ICD_FILENAMES=$ICD
export MESA_SHADER_CACHE_DIR="${MESA_SHADER_CACHE_DIR:-$PWD/.cache/mesa}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
TSX=node_modules/.bin/tsx
if ! step doctor 60 $TSX src/cli.ts doctor; then
  cat "$OUT/doctor.log"
  VK_LOADER_DEBUG=error,warn timeout 60 $TSX src/cli.ts doctor 2>&1 | tail -30
  exit 1
fi
head -30 "$OUT/doctor.log"
B="$TSX bench/index.ts"
if [ "${1:-}" = segment ]; then
  # Where a warm segmentation's time goes: the UNet's JS recording beside its GPU time, the
  # ELBO calls pipelined against one at a time, and the options above.
  step record 60 $B record
  step unet 60 $B unet --runs 5
  step segment 90 $B segment --runs 3
  step segment-serial 90 env ELBO_IN_FLIGHT=1 $B segment --runs 3
  [ "${2:-}" = self ] && step segment-self-host 90 env ELBO_SELF_HOST=1 $B segment --runs 2
  [ "${2:-}" = ab ] && step ab-attention 90 env AB_ONLY=attention AB_ROUNDS=3 $B ab
  step tests 40 node_modules/.bin/vitest run test/device.test.ts
  for f in record unet segment segment-serial segment-self-host ab-attention tests; do
    [ -f "$OUT/$f.log" ] && { echo "== $f"; grep -vE "^(elbo ([3-9]|[1-9][0-9])|collect [0-9])|Warning" "$OUT/$f.log" | grep -vE "^ +(✓|→)" | head -30; }
  done
  for f in "$OUT"/*.log; do echo "==== $(basename "$f")"; cat "$f"; done >"$OUT/all.txt" && rm -f "$OUT"/*.log
  exit 0
fi
if [ "${1:-}" = compile ]; then
  # Where the first run's time goes (pipeline compiles), and whether compiling every pipeline
  # at once (createComputePipelineAsync) beats one by one. The driver's disk cache is off for
  # the first three steps so each compiles for real; then on (its default place), cold and warm.
  export __GL_SHADER_DISK_CACHE=0
  step record 90 $B compile --record "$OUT/pipes.json" --what segment
  step replay-async 90 $B compile --replay "$OUT/pipes.json" --what segment
  [ "${2:-}" = sync ] && step replay-sync 90 $B compile --replay "$OUT/pipes.json" --sync --what segment
  unset __GL_SHADER_DISK_CACHE
  rm -rf "$HOME/.cache/nvidia"
  step unet-cold-cache 60 $B unet --runs 3
  step unet-warm-cache 60 $B unet --runs 3
  du -sh "$HOME/.cache/nvidia" 2>&1 | tee -a "$OUT/summary.txt"
  step segment-warm-cache 60 $B segment --runs 2
  step vae 30 $B vae --runs 3
  for f in record replay-async replay-sync unet-cold-cache unet-warm-cache segment-warm-cache vae; do
    [ -f "$OUT/$f.log" ] && { echo "== $f"; grep -vE "^(elbo ([6-9]|[1-9][0-9])|collect [0-9])|Warning" "$OUT/$f.log" | head -40; }
  done
  [ "${2:-}" = tests ] && step tests 150 node_modules/.bin/vitest run test/kernels-*.test.ts test/device.test.ts test/conv-prepared.test.ts && grep -E "Test Files|Tests |FAIL|×" "$OUT/tests.log" | head -20
  [ "${2:-}" = attention ] && step tests 90 node_modules/.bin/vitest run test/kernels-attention.test.ts && grep -E "Test Files|Tests |FAIL|×|max abs" "$OUT/tests.log" | head -20
  for f in "$OUT"/*.log; do echo "==== $(basename "$f")"; cat "$f"; done >"$OUT/all.txt" && rm -f "$OUT"/*.log
  exit 0
fi
step unet 60 $B unet --json --runs 5
step unet-b2 60 $B unet --json --runs 3 --batch 2
step unet-profile 60 $B unet --runs 1 --profile-shapes 25
step segment 60 $B segment --json
step ab 150 $B ab
step demo 40 $TSX src/cli.ts demo --out "$OUT/demo"
step kernels 40 $B kernels --json
step vae 30 $B vae --json --runs 3
step text 20 $B text --json
step tests 150 node_modules/.bin/vitest run test/kernels-*.test.ts test/device.test.ts test/conv-prepared.test.ts
grep -E "Test Files|Tests |FAIL|×" "$OUT/tests.log" | head -20
log "== summary"
cat "$OUT/summary.txt"
cat "$OUT/ab.log"
cat "$OUT"/unet.log "$OUT"/unet-b2.log "$OUT"/segment.log "$OUT"/vae.log "$OUT"/text.log 2>/dev/null | grep '^{' | cut -c1-200
tail -45 "$OUT/unet-profile.log"
grep -E '"variant":"(gpu|naive)"' "$OUT/kernels.log" | cut -c1-160
# Few files back: every log into one, the demo's ELBO figures beside it.
for f in "$OUT"/*.log; do echo "==== $(basename "$f")"; cat "$f"; done >"$OUT/all.txt" && rm -f "$OUT"/*.log
[ -f "$OUT/demo/elbo.json" ] && cp "$OUT/demo/elbo.json" "$OUT/demo-elbo.json"
rm -rf "$OUT/demo"
