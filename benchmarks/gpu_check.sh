#!/usr/bin/env bash
# The GPU check in one device call (docs/BENCHMARKS.md, "GPU checks"), key figures first:
#   bash benchmarks/gpu_check.sh OUT              on the GPU machine, after ../shared/device/install-dali
#   bash benchmarks/gpu_check.sh --dry-run OUT    the same phases at tiny sizes on a CPU machine: GPU items skipped
# Each phase runs under its own `timeout` (benchmarks/gpu_phases.py) and appends one JSON line per result to
# OUT/summary.jsonl as soon as it is measured, then one {"item": "end"} line with its status: a phase that is cut
# short, or a kill of the whole check, keeps every line written before. OUT ends with 4 files, none over 16 MiB:
# summary.jsonl, check.log, loader_throughput.json (the full benchmark JSON), loader_throughput.png. Stores and
# checkpoints go to WORK (default /tmp/scarce-gpu-check; the store is reused by a rerun on the same machine).
#
# Expected time per phase on the H200 machine (16 cores): about 4 min 20 s in all. Estimates, not measurements (no
# GPU machine has run this yet): fixed costs from dry runs here, sizes scaled by costs measured here per image, per
# slot and per core, GPU steps from ResNet50's bf16 throughput (see docs/BENCHMARKS.md, "GPU checks"):
#   phase      H200 est.  timeout  dry run here (2 cores at load 3.7: 81 s)   what
#   preflight     15 s      120 s    14 s   versions, GPU identity, imports; dali-gpu streamed + resident vs dali-cpu
#   store         35 s      150 s     3 s   1,024 phantoms at 256 px, preprocess, merge to 65,536 slots (119 s here)
#   loader        40 s      150 s    16 s   dali-gpu resident, streamed, torchvision, opencv (14 workers), batch 256
#   train         50 s      180 s    24 s   ResNet50 bf16 channels_last b256: ceiling, dali-gpu, torchvision, ceiling
#   pytest        45 s      180 s     8 s   pytest -m gpu, counts into the summary (dry run: gpu-marked modules only)
#   long          75 s      240 s    16 s   300-step SimCLR ResNet50 on dali-gpu, then the worker sweep (1, 4, 14)
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
OUT=${1:?usage: bash benchmarks/gpu_check.sh [--dry-run] OUT}
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-/tmp/scarce-gpu-check$([ "$dry" = 1 ] && echo -dry)}
cd "$(dirname "$0")/.."
mkdir -p "$WORK" && rm -f "$WORK/results.jsonl" "$OUT/summary.jsonl"
LOG=$OUT/check.log
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "$dry" = 1 ]; then
  export OMP_NUM_THREADS=1  # torch's threads against the workers' on 2 busy cores: 10x slower steps, measured
  SIZES=(--base 32 --slots 128 --batch 8 --crop 32 --workers 1 --arch resnet18)
  LOADER=(--steps 3 --warmup 1 --min-seconds 0) TRAIN=(--steps 1 --warmup 1 --min-seconds 0)
  PYTEST=(--marked-modules-only)  # the GPU machine collects every module: what failed there before
  LONG=(--pretrain-steps 2 --sweep 1 --sweep-batch 8 --sweep-steps 2 --warmup 1 --min-seconds 0)
  declare -A T=([preflight]=90 [store]=60 [loader]=90 [train]=90 [pytest]=90 [long]=120)
else
  SIZES=(--base 1024 --slots 65536 --batch 256 --crop 224 --workers 14 --arch resnet50)
  LOADER=(--steps 50 --warmup 10 --min-seconds 3) TRAIN=(--steps 20 --warmup 5 --min-seconds 4)
  PYTEST=()
  LONG=(--pretrain-steps 300 --sweep 1,4,14 --sweep-batch 64 --sweep-steps 5 --warmup 4 --min-seconds 2)
  declare -A T=([preflight]=120 [store]=150 [loader]=150 [train]=180 [pytest]=180 [long]=240)
fi

phase() {  # phase NAME [extra flags]: run it under its timeout, then append its end line
  local name=$1 limit=${T[$1]} rc status t0 ds
  shift
  echo "[$(date +%T)] phase $name (timeout $limit s)" | tee -a "$LOG"
  t0=$(date +%s%N)
  timeout -k 15 "$limit" "$PY" -m benchmarks.gpu_phases "$name" --summary "$OUT/summary.jsonl" --out "$OUT" \
    --work "$WORK" "${SIZES[@]}" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  ds=$((($(date +%s%N) - t0) / 100000000))  # tenths of a second
  printf '{"phase": "%s", "item": "end", "status": "%s", "rc": %d, "seconds": %d.%d}\n' "$name" "$status" "$rc" \
    $((ds / 10)) $((ds % 10)) >>"$OUT/summary.jsonl"
  echo "[$(date +%T)] phase $name: $status (exit $rc)" | tee -a "$LOG"
}

echo "[$(date +%T)] gpu_check$([ "$dry" = 1 ] && echo ' --dry-run') into $OUT, work in $WORK" | tee "$LOG"
phase preflight
phase store
phase loader "${LOADER[@]}"
phase train "${TRAIN[@]}"
phase pytest "${PYTEST[@]}"
phase long "${LONG[@]}"
if [ "$(stat -c %s "$LOG")" -gt $((15 * 1024 * 1024)) ]; then  # only 16 MiB a file come back
  tail -c $((15 * 1024 * 1024)) "$LOG" >"$LOG.tail" && mv "$LOG.tail" "$LOG"
fi
echo "[$(date +%T)] done: $(grep -c . "$OUT/summary.jsonl") summary lines in $OUT/summary.jsonl" | tee -a "$LOG"
