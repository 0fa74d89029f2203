"""Decode attention alone: our flash-decoding Triton kernel against PyTorch's SDPA (not collected by pytest).

One query per (row, head) over the filled prefix of a GPT-XXL-shaped KV cache (24 heads of 64, 257 positions), as the
fast decoder's step runs it: ``F.scaled_dot_product_attention(q, k[:, :, :L], v[:, :, :L])`` (PyTorch picks the
kernel: flash for this shape) against :func:`vfmtok.ops.decode_triton.split_attention` with each
``BLOCK_L,warps[,stages]`` tile of ``--tiles`` (stages: software pipelining of the block loop, 0 = unrolled). Each
timing runs the attention over ``layers`` separate caches in turn (as the 48 layers of a step do, so that small batches
are not timed out of the L2 cache) and reports the median per call (``triton.testing.do_bench``). No CUDA graphs: at a
few rows the figures are the host's launch time, not the GPU's. Bytes = keys and values of the prefix read once; the fraction is of a large
device-to-device copy's bandwidth measured in the same run. One JSON object per (rows, length, implementation) is
appended to ``--out``; the last line printed names the tile with the least total time over the rows >= 64 (the
large-batch path), which bench/sample.py takes as ``--split-tile``.

    python bench/decode_attention.py --out attention.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton.testing
from sample import copy_bandwidth  # bench/sample.py (this script's directory)

from vfmtok.ops import decode_triton


def set_tile(tile: str) -> None:
    """``"BLOCK_L,WARPS[,STAGES]"`` -> the module switches of :func:`vfmtok.ops.decode_triton.split_attention`."""
    values = [int(x) for x in tile.split(",")]
    decode_triton.SPLIT_BLOCK_L, decode_triton.SPLIT_WARPS = values[:2]
    decode_triton.SPLIT_STAGES = values[2] if len(values) > 2 else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 2, 8, 64, 256, 768, 896])
    ap.add_argument("--lengths", nargs="+", type=int, default=[33, 129, 257])
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tiles", nargs="+", default=["32,4", "64,4", "64,8", "128,4", "128,8"])
    ap.add_argument("--out", default="attention.jsonl")
    args = ap.parse_args()
    device = torch.device("cuda")
    bandwidth = copy_bandwidth(device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device), "copy_bandwidth_Bps": bandwidth}
    print(json.dumps(env), flush=True)
    s_max, h, dh = 257, args.heads, args.head_dim
    totals: dict[str, float] = {}
    for rows in args.rows:
        cache_bytes = 2 * rows * h * s_max * dh * 2
        layers = max(1, min(48, -(-(1 << 29) // cache_bytes)))  # >= 512 MiB of caches in turn, at most 48 layers
        ks = [torch.randn(rows, h, s_max, dh, device=device, dtype=torch.bfloat16) for _ in range(layers)]
        vs = [torch.randn_like(k) for k in ks]
        q4 = torch.randn(rows, 1, 2 * h, dh, device=device, dtype=torch.bfloat16).transpose(1, 2)[:, :h]
        out = torch.empty(rows, 1, h, dh, device=device, dtype=torch.bfloat16)
        for length in args.lengths:
            ref = F.scaled_dot_product_attention(q4, ks[-1][:, :, :length], vs[-1][:, :, :length])  # the last layer's
            impls = {"sdpa": lambda: [F.scaled_dot_product_attention(q4, k[:, :, :length], v[:, :, :length])
                                      for k, v in zip(ks, vs)]}
            for tile in args.tiles:
                def split(tile=tile):
                    set_tile(tile)
                    for k, v in zip(ks, vs):
                        decode_triton.split_attention(q4[:, :, 0], k, v, length, out[:, 0])
                impls[f"split-{tile}"] = split
            for name, fn in impls.items():
                fn()
                if name != "sdpa":  # the same function as SDPA (bf16 rounding apart)
                    err = (out.transpose(1, 2).float() - ref.float()).abs().max().item()
                    assert err < 2e-2, (name, rows, length, err)
                ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / layers
                moved = 2 * rows * h * length * dh * 2
                row = {"rows": rows, "length": length, "impl": name, "ms": ms, "bytes": moved,
                       "bandwidth_Bps": moved / (ms * 1e-3), "fraction_of_copy": moved / (ms * 1e-3) / bandwidth,
                       "splits": decode_triton.attention_splits(rows * h, length, torch.cuda.get_device_properties(
                           device).multi_processor_count, decode_triton.SPLIT_BLOCK_L)[0] if name != "sdpa" else None,
                       **env}
                print(json.dumps({k: v for k, v in row.items() if k not in env}), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if rows >= 64:
                    totals[name] = totals.get(name, 0.0) + ms
        del ks, vs
        torch.cuda.empty_cache()
    set_tile("64,2,0")
    print(json.dumps({"large_batch_totals_ms": totals}))
    best = min((n for n in totals if n != "sdpa"), key=totals.get, default=None)
    print(best.removeprefix("split-") if best else "64,2,0")


if __name__ == "__main__":
    main()
