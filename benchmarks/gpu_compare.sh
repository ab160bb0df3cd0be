#!/usr/bin/env bash
# The fair comparison on ResNet-20 / CIFAR-10 in one call of a lent GPU (about 9 minutes of an H200).
#
#   OUT=DIR DATA=cifar10-jpeg.zip bash benchmarks/gpu_compare.sh
#
# 1. A second cosine cycle of the committed float checkpoint (benchmarks/checkpoints/), so the
#    comparison starts from a better-trained model (FLOAT_EPOCHS=0 skips it).
# 2. benchmarks/compare_fair.py in NSH processes sharing the GPU (ResNet-20 steps are too small
#    to fill it alone), each a shard of the (method, target, seed) jobs; a second group without
#    distillation. Every process stops at the deadline; finished rows are kept.
# 3. The merged report and everything written, in OUT/gpu_compare.tgz.
# Settings come from the environment (defaults: the lent-GPU run); DEV=cpu EXTRA="--train-subset 512"
# FLOAT_EPOCHS=0 checks the wiring on a CPU.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src MIXBITS_CACHE_DIR=${MIXBITS_CACHE_DIR:-/tmp/mbcache} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DATA=${DATA:-.devdata/cifar10-jpeg.zip}
OUT=${OUT:-/tmp/gpu_compare}
DEV=${DEV:-cuda}
NSH=${NSH:-12}
PY=${PY:-python3}
FLOAT_EPOCHS=${FLOAT_EPOCHS:-0}
EXTRA=${EXTRA:-}
DEADLINE=$((SECONDS + ${BUDGET_S:-520}))
W=$OUT/work
mkdir -p "$W/fair" "$W/nodistill" "$W/fair8x"
{ date -u; nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__)"; } > "$W/machine.txt"

CKPT=benchmarks/checkpoints/resnet20_cifar10_e37.pt
if [ "$FLOAT_EPOCHS" -gt 0 ]; then
  timeout 150 $PY benchmarks/train_float_budget.py --model resnet20 --data cifar10 --data-root "$DATA" \
    --init-from "$CKPT" --epochs "$FLOAT_EPOCHS" --lr 0.04 --batch-size 256 --budget-s 0 --device "$DEV" \
    --out "$W/float" > "$W/float.log" 2>&1
  [ -f "$W/float/float.pt" ] && CKPT=$W/float/float.pt
else  # decode the data set into the cache once, before the shards start
  $PY -c "from mixbits.data import load_dataset; load_dataset('cifar10', root='$DATA')"
fi
echo "checkpoint: $CKPT" >> "$W/machine.txt"

COMMON=(--model resnet20 --data cifar10 --data-root "$DATA" --checkpoint "$CKPT" --seeds "${SEEDS:-0,1,2}"
        --search-epochs 2 --finetune-epochs 2 --batch-size 256 --finetune-lr 0.02
        --search-option warmup_epochs=0 --device "$DEV")
left=$((DEADLINE - SECONDS - 30))
FIX=benchmarks/results/mct_bits/resnet20_8x.json
# group A: every method at 16x, 24x, 28x with distillation; B: without distillation; C: 8x, with Sony MCT's bits
for i in $(seq 0 $((NSH - 1))); do
  timeout "$left" $PY benchmarks/compare_fair.py "${COMMON[@]}" $EXTRA --distill \
    --methods "${METHODS:-hessian,search,search_logits,search_uniform,uniform,random}" --targets "${TARGETS:-16x,24x,28x}" \
    --shard "$i/$NSH" --out "$W/fair" > "$W/fair/log$i.txt" 2>&1 &
done
for i in 0 1; do
  timeout "$left" $PY benchmarks/compare_fair.py "${COMMON[@]}" $EXTRA --no-distill \
    --methods hessian,search --targets 24x --shard "$i/2" --out "$W/nodistill" > "$W/nodistill/log$i.txt" 2>&1 &
  timeout "$left" $PY benchmarks/compare_fair.py "${COMMON[@]}" $EXTRA --distill --fixed "mct:8x=$FIX" \
    --methods hessian,search,mct,uniform --targets 8x --shard "$i/2" --out "$W/fair8x" > "$W/fair8x/log$i.txt" 2>&1 &
done
wait
for d in fair nodistill fair8x; do
  $PY benchmarks/compare_fair.py --report --out "$W/$d" > /dev/null 2>&1
done
tar czf "$OUT/gpu_compare.tgz" -C "$W" .
cat "$W/fair/compare_fair.md" "$W/nodistill/compare_fair.md" "$W/fair8x/compare_fair.md" 2>/dev/null
cat "$W"/*/errors-* 2>/dev/null | head -40
tail -n 3 "$W/float.log" 2>/dev/null
echo "elapsed ${SECONDS}s"
