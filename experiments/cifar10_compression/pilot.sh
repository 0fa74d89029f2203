#!/usr/bin/env bash
# Sizing pilot of the compression experiment (issue 15) on the GPU machine: one call, random weights, no data.
#
# Usage: experiments/cifar10_compression/pilot.sh OUT_DIR     (writes OUT_DIR/pilot.jsonl and OUT_DIR/pilot.log)
#
# 1. each of the five tokenizers alone (bench/train_tokenizer.py, the trainer's real step at batch 256, bf16):
#    live (DINOv2-S forward at 224 every step), cached (features resident on the GPU), backbone (the forward alone);
# 2. the five live steps at once, one process each (run.sh trains the chains concurrently): per-process step time;
# 3. pilot.py: GPT step at 64 / 256 tokens, sampling with and without CFG, decoding, FD feature extractors.
# PILOT_STEPS [15] timed steps per tokenizer case; PILOT_BUDGET [90] seconds for pilot.py's eager cases + compile.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
OUT_DIR=${1:?usage: pilot.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEPS=${PILOT_STEPS:-15}
JSONL="$OUT_DIR/pilot.jsonl"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; $PY -c "import torch; print(torch.__version__)"; } \
  > "$OUT_DIR/machine.txt" 2>&1
TOK=configs/tokenizer/cifar10-compression.yaml
declare -A SETS=([vfm]="" [nosem]="--set semantic_weight=0.0" [grid]="--set model.quantization=grid"
                 [gridfull]="--set model.quantization=grid --set model.anchor_grid=16")
bench() {  # bench LABEL CASES STEPS: one tokenizer's bench_train line(s) into pilot.jsonl
  local label=$1 cases=$2 steps=$3 cfg=$TOK sets=""
  if [ "$label" = cnn ]; then cfg=configs/tokenizer/cifar10-cnn.yaml; else sets=${SETS[$label]}; fi
  # shellcheck disable=SC2086
  $PY bench/train_tokenizer.py --config "$cfg" $sets --label "$label" --batch-size 256 --steps "$steps" --warmup 3 \
    --cases "$cases"
}
for c in vfm nosem grid gridfull cnn; do
  bench "$c" live,cached,backbone "$STEPS" >> "$JSONL" || echo "{\"case\": \"error\", \"label\": \"$c\"}" >> "$JSONL"
  stamp "tokenizer $c alone done"
done
pids=()
for c in vfm nosem grid gridfull cnn; do
  ( bench "$c" live $(( STEPS * 2 )) | sed 's/"case": "live"/"case": "live-concurrent-5"/' >> "$JSONL" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
stamp "five tokenizers concurrently done"
$PY experiments/cifar10_compression/pilot.py --device cuda --budget "${PILOT_BUDGET:-90}" --compile --out "$JSONL" \
  > /dev/null
stamp "pilot.py done"
