#!/usr/bin/env bash
# The compression-regime CIFAR-10 experiment of issue 15, both seeds, resumable (see README.md in this folder).
#
# Usage: experiments/cifar10_compression/run.sh OUT_ROOT      (run from anywhere; OUT_ROOT/seed<s>/ per seed)
#
# For each seed in SEEDS, experiments/cifar10/run.sh OUT_ROOT/seed<s> with the five chains
#   vfm (a)  nosem (b)  grid (c)  gridfull (c+)  cnn (d)
# on configs/tokenizer/cifar10-compression.yaml (DINOv2-S at 224 = 16 x 16 features, 64 tokens; gridfull: 256), the
# seed passed to the tokenizers and GPTs (seed=<s>), then anchors.py on the trained (a) (OUT_ROOT/seed<s>/chains/vfm/
# anchors/). Every stage is skipped when its output exists and the tokenizers checkpoint every TOK_CKPT_EVERY steps,
# so the same command continues where the previous call stopped (a warm machine keeps OUT_ROOT). At the end
# everything small of both seeds is packed into OUT_ROOT/results.tar.gz (no checkpoints, caches or codes).
#
# TOK_ONLY [auto]: without EfficientNet-Lite0 weights (VFMTOK_EFFICIENTNET_WEIGHTS unset or missing: the first call
# carries only the training inputs) the chains stop after their tokenizers; 0 / 1 force it.
# DEADLINE [none]: seconds after the start of this script; a seed is not started with less than MIN_LEFT [90] s left.
# Defaults below (the plan of README.md); every variable of experiments/cifar10/run.sh may be set.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/experiments/cifar10_compression"
if [ $# -ne 1 ]; then echo "usage: $0 OUT_ROOT" >&2; exit 2; fi
mkdir -p "$1" && ROOT=$(cd "$1" && pwd)
cd "$REPO" || exit 2
if [ -z "${DATA:-}" ] || [ ! -d "$DATA/test" ]; then
  echo "$0: DATA must name an ImageFolder root with train/ and test/ (got '${DATA:-}'); see README.md" >&2; exit 2
fi

export RUN_T0=${RUN_T0:-$(date +%s)}  # run.sh's DEADLINE counts from here: one deadline for the whole call
export CHAINS=${CHAINS:-vfm nosem grid gridfull cnn}
export TOK_CONFIG=${TOK_CONFIG:-configs/tokenizer/cifar10-compression.yaml}
export TOK_STEPS=${TOK_STEPS:-500} TOK_EMA=${TOK_EMA:-0.99}
export TOK_CKPT_EVERY=${TOK_CKPT_EVERY:-$(( TOK_STEPS / 5 > 0 ? TOK_STEPS / 5 : 1 ))}
export GPT_STEPS=${GPT_STEPS:-1200} GPT_CKPTS=${GPT_CKPTS:-4} NUM_SAMPLES=${NUM_SAMPLES:-2000}
export SAMPLE_BATCH=${SAMPLE_BATCH:-1000} PROBE_NUM=${PROBE_NUM:-5000} VFM_SIZE=${VFM_SIZE:-224}
SEEDS=${SEEDS:-0 1} MIN_LEFT=${MIN_LEFT:-90} PYTHON=${PYTHON:-python3} DEVICE=${DEVICE:-cuda}
ANCHOR_NUM=${ANCHOR_NUM:-1000}
BASE_TOK_EXTRA=${TOK_EXTRA:-} BASE_GPT_EXTRA=${GPT_EXTRA:-}
if [ "${TOK_ONLY:-auto}" = auto ]; then
  if [ -n "${VFMTOK_EFFICIENTNET_WEIGHTS:-}" ] && [ -f "$VFMTOK_EFFICIENTNET_WEIGHTS" ]; then TOK_ONLY=0; else TOK_ONLY=1; fi
fi
export TOK_ONLY

elapsed() { echo $(( $(date +%s) - RUN_T0 )); }
log() { echo "[$(elapsed) s] compression: $*" | tee -a "$ROOT/timing.log"; }
log "start: seeds '$SEEDS', chains '$CHAINS', TOK_ONLY=$TOK_ONLY, TOK_STEPS=$TOK_STEPS GPT_STEPS=$GPT_STEPS"

for s in $SEEDS; do
  if [ -n "${DEADLINE:-}" ] && [ $(( DEADLINE - $(elapsed) )) -lt "$MIN_LEFT" ]; then
    log "seed $s not started: less than $MIN_LEFT s before the deadline"; continue
  fi
  log "seed $s"
  TOK_EXTRA="seed=$s $BASE_TOK_EXTRA" GPT_EXTRA="seed=$s $BASE_GPT_EXTRA" \
    "$REPO/experiments/cifar10/run.sh" "$ROOT/seed$s"
  vfm="$ROOT/seed$s/chains/vfm"
  if [ -f "$vfm/tok/final/model.safetensors" ] && [ ! -f "$vfm/anchors/anchors.json" ]; then
    if "$PYTHON" "$HERE/anchors.py" --tokenizer "$vfm/tok/final" --data "$DATA/test" --out "$vfm/anchors" \
        --num "$ANCHOR_NUM" --device "$DEVICE" > "$vfm/anchors.log" 2>&1; then
      log "seed $s: anchors done"
    else
      log "seed $s: anchors FAILED (see chains/vfm/anchors.log)"
    fi
  fi
done

# everything small of every seed, packed into OUT_ROOT/results.tar.gz (run.sh's own filter; no checkpoints or codes)
"$REPO/experiments/cifar10/run.sh" --pack "$ROOT"
