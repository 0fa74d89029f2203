"""Generation throughput and batch-1 latency of the GPT samplers, side by side (not collected by pytest).

Random-weight LlamaGen GPTs (GPT-B, GPT-XXL shapes; vocab 16384, 256 tokens, 1000 classes) in bf16 generate whole
token grids with :func:`vfmtok.generator.sample` (temperature 1, no top-k/top-p), in one process, per decoding path:

* ``official``: LlamaGen's ``generate`` decoding (full-length cache + boolean mask, K/V copied every step), eager;
* ``official-compiled``: the same step under ``torch.compile(mode="reduce-overhead", fullgraph=True)``, as LlamaGen
  runs it;
* ``eager``: our KV cache over the filled prefix, module path, eager;
* ``fast``: our :class:`~vfmtok.generator.fast_decode.FastDecoder` (fused layer halves under ``torch.compile``, one
  CUDA graph per position), the ``sample(..., compile=True)`` path; ``fast-nofuse``: graphs without ``torch.compile``;
  ``fast-efficient`` / ``fast-cudnn``: the fast path with SDPA's memory-efficient / cuDNN attention kernel forced;
  ``fast-autotune``: the fused functions compiled with ``mode="max-autotune-no-cudagraphs"``; ``fast-torch`` /
  ``fast-triton``: the fast path with its layer kernels chosen (``kernels="torch"``: the fused functions around cuBLAS;
  ``"triton"``: five Triton matrix-vector kernels per layer, :mod:`vfmtok.ops.decode_triton`); ``fast`` takes
  ``kernels="auto"`` (Triton up to ``TRITON_MAX_ROWS`` rows on CUDA).

Each case runs once untimed (compilation, graph capture, allocation: reported as ``setup_s``) and then ``--repeats``
timed times; images/s and ms/step use the best timed run; ``--profile FILE`` then appends the CUDA-kernel table of
one more run (``torch.profiler``) to FILE. Every case also reports the memory-bandwidth limit: per
image, the decode streams the weights once per step (shared by the batch) and reads the filled KV cache
(``n_layer x 2 x D x 2 bytes`` per cached position, 32,896 positions per row over 256 steps), at the bandwidth of a
large device-to-device copy measured in the same run. One JSON object per case is appended to ``--out`` (JSON lines)
as soon as it is measured, so a run cut short keeps what it measured.

    python bench/sample.py --out sample.jsonl                                   # the docs/results/performance.md run
    python bench/sample.py --models gpt-b --batches 8 --paths fast eager --device cpu --dtype fp32 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import torch

from vfmtok.generator import GPT, gpt_preset
from vfmtok.generator.sampling import clear_decoder_cache, sample

PATHS = {
    "official": dict(baseline="official", compile=False),
    "official-compiled": dict(baseline="official", compile=True),
    "eager": dict(baseline=None, compile=False),
    "fast": dict(baseline=None, compile=True),
    "fast-nofuse": dict(baseline=None, compile={"fuse": False}),
    "fast-efficient": dict(baseline=None, compile={"attn_backend": "efficient"}),
    "fast-cudnn": dict(baseline=None, compile={"attn_backend": "cudnn"}),
    "fast-autotune": dict(baseline=None, compile={"compile_mode": "max-autotune-no-cudagraphs"}),
    "fast-torch": dict(baseline=None, compile={"kernels": "torch"}),
    "fast-triton": dict(baseline=None, compile={"kernels": "triton"}),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read and written."""
    if device.type != "cuda":
        return float("nan")
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    return 2 * src.numel() * src.element_size() * 10 / (time.perf_counter() - t0)


def build(name: str, dtype: torch.dtype, device: torch.device) -> GPT:
    cfg = gpt_preset(name, vocab_size=16384, block_size=256, num_classes=1000)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device (fast for 1.4 B parameters)
        gpt = GPT(cfg)
    torch.nn.init.normal_(gpt.output.weight, std=0.02)  # a non-degenerate next-token distribution
    return gpt.to(device=device, dtype=dtype).eval()


def limit(gpt: GPT, images: int, rows: int, bandwidth: float) -> dict[str, float]:
    """Bandwidth-bound time of generating ``images`` images over ``rows`` decoded rows."""
    c = gpt.config
    streamed = sum(p.numel() * p.element_size() for n, p in gpt.named_parameters() if "embedding" not in n)
    n = c.block_size
    kv_positions = n * (n + 1) // 2  # position p reads p + 1 cached keys and values, p = 0 .. n - 1
    kv_bytes = rows * c.n_layer * 2 * c.dim * gpt.output.weight.element_size() * kv_positions
    seconds = (n * streamed + kv_bytes) / bandwidth
    return {"limit_s": seconds, "limit_images_per_s": images / seconds, "streamed_weight_bytes": streamed,
            "kv_bytes_per_image": kv_bytes / images}


def run_case(
    gpt: GPT, path: str, batch: int, cfg: float, repeats: int, device: torch.device, profile: str | None = None
) -> dict:
    labels = torch.arange(batch, device=device) % gpt.config.num_classes
    kwargs = dict(PATHS[path], cfg_scale=cfg)

    def once() -> float:
        gen = torch.Generator(device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        codes = sample(gpt, labels, generator=gen, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert codes.shape == (batch, gpt.num_tokens)
        return time.perf_counter() - t0

    setup = once()
    times = [once() for _ in range(repeats)]
    best = min(times)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profiler(activities=activities) as prof:
            once()
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        with open(profile, "a") as f:
            f.write(f"## {gpt.config.n_layer} layers, dim {gpt.config.dim}, path {path}, batch {batch}, cfg {cfg}\n")
            f.write(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=90) + "\n")
    return {"setup_s": setup, "times_s": times, "images_per_s": batch / best, "s_per_image": best / batch,
            "ms_per_step": 1e3 * best / gpt.num_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gpt-b", "gpt-xxl"])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64, 128, 256, 512])
    ap.add_argument("--cfg", nargs="+", type=float, default=[1.0, 2.0], help="guidance scales (1.0 = CFG-free)")
    ap.add_argument("--baseline-batches", nargs="+", type=int, default=[256],
                    help="batch sizes for the official paths (slow)")
    ap.add_argument("--max-rows", type=int, default=1024, help="skip cases decoding more rows than this")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="sample.jsonl")
    ap.add_argument("--profile", help="append each case's kernel table (one extra profiled run) to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    for name in ("recompile_limit", "cache_size_limit"):  # one compilation per batch shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    bandwidth = copy_bandwidth(device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "copy_bandwidth_Bps": bandwidth, "dtype": args.dtype}
    print(json.dumps(env), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"env": env}) + "\n")
    for model in args.models:
        gpt = build(model, DTYPES[args.dtype], device)
        params = sum(p.numel() for p in gpt.parameters())
        for path in args.paths:
            batches = args.baseline_batches if path.startswith("official") else args.batches
            for cfg in args.cfg:
                for batch in batches:
                    rows = batch * (2 if cfg != 1.0 else 1)
                    if rows > args.max_rows:
                        continue
                    row = {"model": model, "params": params, "path": path, "batch": batch, "cfg": cfg, "rows": rows,
                           **env}
                    try:
                        row.update(run_case(gpt, path, batch, cfg, args.repeats, device, args.profile))
                        row.update(limit(gpt, batch, rows, bandwidth))
                        row["fraction_of_limit"] = row["images_per_s"] / row["limit_images_per_s"]
                    except Exception as e:  # noqa: BLE001 - a failing case is recorded, the sweep goes on
                        row["error"] = f"{type(e).__name__}: {e}"
                        traceback.print_exc()
                    if device.type == "cuda":
                        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                        torch.cuda.reset_peak_memory_stats(device)
                    print(json.dumps({k: v for k, v in row.items() if k not in env}), flush=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    clear_decoder_cache(gpt)
                    if path == "official-compiled":
                        torch._dynamo.reset()  # releases the cudagraph trees' memory
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        del gpt
        clear_decoder_cache()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
