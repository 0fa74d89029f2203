#!/usr/bin/env bash
# The H200 measurements of docs/results/performance.md (issue 16), in priority order, in one call of at most ~600 s
# (each stage has its own time limit; every case is appended to OUT as soon as it is measured).
# Usage (repo root, on the GPU machine): bench/run_sampling_h200.sh OUT_DIR [OFFICIAL_SRC]
# OFFICIAL_SRC: root of a CVMI-Lab/VFMTok checkout (never committed), for the src-official paths.
set -u
OUT=${1:?usage: bench/run_sampling_h200.sh OUT_DIR [OFFICIAL_SRC]}
SRC=${2:-}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
S="python3 bench/sample.py --out $OUT/h200-sample.jsonl --repeats 1"
# GPU tests of the new kernels (and the graph paths they run in)
timeout 120 python3 -m pytest -q -m gpu tests/ops/test_decode_triton.py tests/generator/test_sampling.py \
    -k "split or graph" 2>&1 | tee $OUT/gpu-tests.txt | tail -15
# the attention alone: SDPA against the flash-decoding kernel's tiles; its last line is the best large-batch tile
timeout 60 python3 bench/decode_attention.py --rows 1 8 64 256 896 --tiles 32,4 64,4 64,8 128,8 \
    --out $OUT/h200-attention.jsonl 2>&1 | tee $OUT/attention.txt | tail -4
TILE=$(tail -1 $OUT/attention.txt | grep -E '^[0-9]+,[0-9]+$' || echo 64,4)
echo "tile $TILE"
# GPT-XXL, CFG-free at large batch: HEAD's SDPA path, the flash-decoding kernel, and it on two streams
timeout 150 $S --split-tile $TILE --models gpt-xxl --paths fast-sdpa fast-splitk fast-splitk-2s --batches 896 \
    --cfg 1.0 --max-rows 1280
# with CFG (768 rows), and batch 1 (the small-batch kernels, unchanged)
timeout 90 $S --split-tile $TILE --models gpt-xxl --paths fast-splitk fast-splitk-2s --batches 384 --cfg 2.0 \
    --max-rows 1280
timeout 30 $S --models gpt-xxl --paths fast --batches 1 --cfg 1.0
# GPT-B at large batch
timeout 60 $S --split-tile $TILE --models gpt-b --paths fast-splitk fast-splitk-2s --batches 1024 \
    --cfg 1.0 --max-rows 2048
# the official code's own generate(), compiled as its test_net.py does, same process (long compilation: last)
if [ -n "$SRC" ]; then
    timeout 200 python3 bench/sample.py --out $OUT/h200-sample.jsonl --repeats 1 --official-src "$SRC" \
        --models gpt-xxl --paths src-official-compiled --baseline-batches 256 --cfg 1.0
fi
