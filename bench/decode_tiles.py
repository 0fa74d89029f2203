"""Tile policies of the small-batch Triton decode kernels, measured on the whole decode step (not collected by pytest).

Triton's autotuner times each kernel alone, but in the step the kernels overlap (programmatic dependent launch: a
kernel loads its weights while the previous one finishes), so the tiles that are fastest alone need not be fastest in
the step. This script swaps the autotuner's candidate filter (:data:`vfmtok.ops.decode_triton.CONFIG_FILTER`) by
policy, re-tunes, and times whole generations of the GPT-XXL shape at batch 1 (and ``--batches``) with
``sample(..., compile={"kernels": "triton"})``, as bench/sample.py does; ``no-pdl`` switches programmatic dependent
launch off, ``attention-warps4`` runs the attention kernel with 4 warps instead of 8. One JSON object per (policy, batch) is appended to ``--out``.

    python bench/decode_tiles.py --out tiles.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch
from sample import DTYPES, build, copy_bandwidth, limit, run_case  # bench/sample.py (this script's directory)

from vfmtok.generator.sampling import clear_decoder_cache
from vfmtok.ops import decode_triton


def _only(**want):
    def narrow(kind, k, candidates):
        keep = [c for c in candidates
                if all((c.num_warps if name == "warps" else c.kwargs[name]) in values for name, values in want.items())]
        return keep or candidates

    return narrow


def _all(kind, k, candidates):
    return candidates


POLICIES = {  # name -> (CONFIG_FILTER, programmatic dependent launch, attention warps)
    "default": (decode_triton.in_step_filter, True, 8),  # 4 outputs per program, 4 warps
    "n4-or-n8": (_only(BLOCK_N={4, 8}), True, 8),
    "all": (_all, True, 8),  # every candidate, as the autotuner alone would pick
    "no-pdl": (decode_triton.in_step_filter, False, 8),
    "exact-blocks": (lambda kind, k, c: [x for x in c if k % x.kwargs["BLOCK_K"] == 0] or c, True, 8),
    "n1": (_only(BLOCK_N={1}), True, 8),
    "n2": (_only(BLOCK_N={2}), True, 8),
    "n4": (_only(BLOCK_N={4}), True, 8),
    "n8": (_only(BLOCK_N={8}), True, 8),
    "n4-warps4": (_only(BLOCK_N={4}, warps={4}), True, 8),
    "n4-warps8": (_only(BLOCK_N={4}, warps={8}), True, 8),
    "attention-warps4": (decode_triton.in_step_filter, True, 4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt-xxl")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--out", default="tiles.jsonl")
    args = ap.parse_args()
    device = torch.device("cuda")
    bandwidth = copy_bandwidth(device)
    gpt = build(args.model, DTYPES[args.dtype], device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device), "copy_bandwidth_Bps": bandwidth}
    print(json.dumps(env), flush=True)
    for policy in args.policies:
        decode_triton.CONFIG_FILTER, decode_triton.USE_PDL, decode_triton.ATTENTION_WARPS = POLICIES[policy]
        for batch in args.batches:
            decode_triton.clear_kernel_cache()
            clear_decoder_cache(gpt)
            row = {"model": args.model, "policy": policy, "batch": batch, **env}
            row.update(run_case(gpt, "fast-triton", batch, 1.0, args.repeats, device))
            row.update(limit(gpt, batch, batch, bandwidth))
            tuned = {}
            for name, cache in (("gemv", decode_triton._gemv_kernels), ("swiglu", decode_triton._swiglu_kernels),
                                ("qkv", decode_triton._qkv_kernels)):
                for (_, k), kernel in cache.items():
                    for key, cfg in kernel.cache.items():
                        tuned[f"{name} k={k} n={key[1]}"] = str(cfg)
            row["tuned"] = tuned
            print(json.dumps({k: v for k, v in row.items() if k not in env and k != "tuned"}), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    decode_triton.CONFIG_FILTER, decode_triton.USE_PDL, decode_triton.ATTENTION_WARPS = POLICIES["default"]


if __name__ == "__main__":
    main()
