#!/usr/bin/env bash
# The granularity comparison on ResNet-20 / CIFAR-10 at the GPU recipe, in one call of a lent GPU.
#
#   OUT=DIR DATA=cifar10-jpeg.zip bash benchmarks/gpu_granularity.sh
#
# benchmarks/compare_granularity.py in NSH processes sharing the GPU (ResNet-20 steps are too small
# to fill it alone), each a shard of the (method, granularity, target, seed) jobs: hessian and search
# at layer, group:32, group:8 and channel, 16x/24x/28x, 3 seeds, the full training set, 2 search +
# 2 fine-tuning epochs for every row, distillation on (the recipe of benchmarks/gpu_compare.sh).
# Every process stops at the deadline; finished rows are kept; the merged report and every file
# written end in OUT/gpu_granularity.tgz. DEV=cpu EXTRA="--train-subset 256 --test-subset 256"
# NSH=1 checks the wiring on a CPU.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src MIXBITS_CACHE_DIR=${MIXBITS_CACHE_DIR:-/tmp/mbcache} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DATA=${DATA:-.devdata/cifar10-jpeg.zip}
OUT=${OUT:-/tmp/gpu_granularity}
DEV=${DEV:-cuda}
NSH=${NSH:-16}
PY=${PY:-python3}
EXTRA=${EXTRA:-}
DEADLINE=$((SECONDS + ${BUDGET_S:-520}))
W=$OUT/work
mkdir -p "$W/rows"
{ date -u; nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__)"; } > "$W/machine.txt"
$PY -c "from mixbits.data import load_dataset; load_dataset('cifar10', root='$DATA')"  # decode once, before the shards
# the step-time ratios first, alone on the GPU
timeout 90 $PY benchmarks/step_time.py --device "$DEV" --rounds 30 --granularity layer channel group:8 group:32 \
  --json "$W/step_time.json" > "$W/step_time.txt" 2>&1
left=$((DEADLINE - SECONDS - 30))
for i in $(seq 0 $((NSH - 1))); do
  timeout "$left" $PY benchmarks/compare_granularity.py --model resnet20 --data cifar10 --data-root "$DATA" \
    --checkpoint benchmarks/checkpoints/resnet20_cifar10_e37.pt --methods "${METHODS:-hessian,search}" \
    --granularities "${GRANULARITIES:-layer,group:32,group:8,channel}" --targets "${TARGETS:-16x,24x,28x}" \
    --seeds "${SEEDS:-0,1,2}" --search-epochs 2 --finetune-epochs 2 --batch-size 256 --finetune-lr 0.02 \
    --search-option warmup_epochs=0 --distill --device "$DEV" $EXTRA --shard "$i/$NSH" --out "$W/rows" \
    > "$W/rows/log$i.txt" 2>&1 &
done
wait
$PY benchmarks/compare_granularity.py --report --out "$W/rows" > /dev/null 2>&1
tar czf "$OUT/gpu_granularity.tgz" -C "$W" .
echo "written $OUT/gpu_granularity.tgz"
