#!/usr/bin/env bash
# All GPU checks in one go, for a GPU machine (see docs/BENCHMARKS.md, "GPU checks"): writes everything into OUT.
#   bash benchmarks/gpu_check.sh OUT
# 1. pytest -m gpu   2. the four-loader benchmark in both modes (ResNet50, batch 256, bf16, channels_last), with the
# GPU-resident store too   3. 300-step ResNet50 SimCLR runs fed by dali-gpu and by torchvision (14 workers).
# Sizes can be shrunk for a dry run on a CPU machine: N=64 PX=256 BATCH=8 STEPS=3 ARCH=resnet18 CROP=64.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT}
N=${N:-8192} PX=${PX:-1024} BATCH=${BATCH:-256} STEPS=${STEPS:-300} ARCH=${ARCH:-resnet50} CROP=${CROP:-224}
BENCH_STEPS=${BENCH_STEPS:-200} TV_WORKERS=${TV_WORKERS:-14}
mkdir -p "$OUT"
DATA=${DATA:-/tmp/scarce-gpu-check}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/progress.log"; }

log "machine"; { nvidia-smi; python -c "import torch, nvidia.dali as d; print(torch.__version__, torch.version.cuda, d.__version__)"; } > "$OUT/machine.txt" 2>&1

log "pytest -m gpu"
python -m pytest -m gpu -q -rs > "$OUT/pytest_gpu.txt" 2>&1; echo "exit $?" >> "$OUT/pytest_gpu.txt"

log "store: $N synthetic NIH phantoms at $PX px"
if [ ! -f "$DATA/store/store.json" ]; then
  python -m preprocess.synthetic "$DATA/raw" --n "$N" --kind nih --size "$PX" > "$OUT/store.txt" 2>&1
  python -m preprocess "$DATA/raw/images" --dataset nih --metadata "$DATA/raw/Data_Entry_2017.csv" \
    --out "$DATA/store" --no-progress >> "$OUT/store.txt" 2>&1
fi

log "loader benchmark, both modes"
python -m benchmarks.loader_throughput --store "$DATA/store" --loaders torchvision,opencv,dali-cpu,dali-gpu --resident \
  --mode both --batch-size "$BATCH" --steps "$BENCH_STEPS" --warmup 10 --arch "$ARCH" --crop-size "$CROP" \
  --workers "$TV_WORKERS" --out "$OUT/loader_throughput" > "$OUT/loader_throughput.txt" 2>&1

for loader in dali-gpu torchvision; do
  log "SimCLR $ARCH, $STEPS steps, $loader"
  python -m training.pretrain --store "$DATA/store" --method simclr --arch "$ARCH" --loader "$loader" \
    --batch-size "$BATCH" --crop-size "$CROP" --steps "$STEPS" --workers "$TV_WORKERS" --log-every 25 \
    --checkpoint-every 100000 --wandb-mode disabled --out "$OUT/pretrain-$loader" > "$OUT/pretrain-$loader.txt" 2>&1
done
log "done"
