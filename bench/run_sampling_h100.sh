#!/usr/bin/env bash
# The sampling benchmark of docs/results/performance.md, in priority order (each part appends to OUT/sample.jsonl).
# Usage (repo root, on the GPU machine): bench/run_sampling_h100.sh OUT_DIR
set -u
OUT=${1:?usage: bench/run_sampling_h100.sh OUT_DIR}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
B="timeout 900 python3 bench/sample.py --out $OUT/sample.jsonl --repeats 1"
# GPT-XXL: our fast path over batch sizes, CFG-free and with CFG
$B --models gpt-xxl --paths fast --batches 1 128 256 512 --cfg 1.0
$B --models gpt-xxl --paths fast --batches 128 256 --cfg 2.0
$B --models gpt-xxl --paths fast --batches 768 896 --cfg 1.0 --max-rows 896
$B --models gpt-xxl --paths fast --batches 384 --cfg 2.0 --max-rows 768
# GPT-XXL: the official decoding (eager) and our eager / graphs-only paths at the same batch
$B --models gpt-xxl --paths official eager fast-nofuse --batches 1 256 --baseline-batches 256 --cfg 1.0 2.0 --max-rows 512
# GPT-B: every path
$B --models gpt-b --paths official official-compiled eager fast --batches 1 64 256 512 --baseline-batches 256 --cfg 1.0 2.0
# GPT-XXL: the official decoding compiled as LlamaGen compiles it (long compilation: last)
$B --models gpt-xxl --paths official-compiled --baseline-batches 256 --cfg 1.0
# Variants: the memory-efficient SDPA kernel, Inductor autotuning (cuDNN SDPA refuses the shape: not run)
$B --models gpt-xxl --paths fast-efficient fast-autotune --batches 1 768 --cfg 1.0 --max-rows 768
# Batch 1-2 (session 3): the small-batch Triton kernels (the default `fast` at <= 2 rows) against the torch kernels,
# the tile policies timed on the whole step, then GPT-B at batch 1
$B --models gpt-xxl --paths fast --batches 1 2 --cfg 1.0 2.0 --max-rows 2 --profile $OUT/decode-profile.txt
$B --models gpt-xxl --paths fast-torch --batches 1 --cfg 1.0
timeout 900 python3 bench/decode_tiles.py --out $OUT/decode-tiles.jsonl
$B --models gpt-b --paths fast fast-torch --batches 1 --cfg 1.0 2.0
