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
  ``kernels="auto"`` (Triton up to ``TRITON_MAX_ROWS`` rows on CUDA) and ``attn_backend="auto"`` (the flash-decoding
  kernel from ``SPLIT_ATTENTION_MIN_ROWS`` rows on CUDA); ``fast-splitk`` / ``fast-sdpa``: the fast path
  with the attention between the layer halves forced to our flash-decoding Triton kernel
  (``attn_backend="triton"``, :func:`vfmtok.ops.decode_triton.split_attention`) / to PyTorch's SDPA;
  ``fast-splitk-2s``: ``fast-splitk`` with the rows in two groups on two CUDA streams (``streams=2``);
* ``src-official`` / ``src-official-compiled`` (with ``--official-src PATH``): the official code's own ``generate()``
  (``autoregressive/models/generate.py``) and GPT (``autoregressive/models/gpt.py``) imported at run time from a local
  checkout of CVMI-Lab/VFMTok (never part of this repository), eager, and with the model under
  ``torch.compile(mode="reduce-overhead", fullgraph=True)`` as its ``test_net.py --compile`` does; same shapes, own
  random weights (``initialize_weights``, then the output head drawn as ours), same dtype, same process and GPU.

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
    "fast-splitk": dict(baseline=None, compile={"attn_backend": "triton"}),
    "fast-sdpa": dict(baseline=None, compile={"attn_backend": None}),
    "fast-splitk-2s": dict(baseline=None, compile={"attn_backend": "triton", "streams": 2}),
    "src-official": None,  # the official code's generate(), --official-src
    "src-official-compiled": None,
}
OFFICIAL_MODELS = {"gpt-b": "GPT-B", "gpt-l": "GPT-L", "gpt-xl": "GPT-XL", "gpt-xxl": "GPT-XXL"}
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


class OfficialSampler:
    """The official code's ``generate()`` and GPT, imported from a checkout at ``src`` (``autoregressive/`` at its
    root; the model code needs nothing beyond PyTorch). One model per name, built on first use; ``compiled`` wraps
    it as ``test_net.py --compile`` does."""

    def __init__(self, src: str) -> None:
        import importlib
        import os
        import sys

        if not os.path.isfile(os.path.join(src, "autoregressive", "models", "generate.py")):
            raise SystemExit(f"--official-src {src!r}: no autoregressive/models/generate.py there (a CVMI-Lab/VFMTok "
                             "checkout's root is expected)")
        sys.path.insert(0, os.path.abspath(src))
        self.gpt_module = importlib.import_module("autoregressive.models.gpt")
        self.generate = importlib.import_module("autoregressive.models.generate").generate
        self.models: dict[str, torch.nn.Module] = {}
        self.compiled: dict[str, torch.nn.Module] = {}

    def model(self, name: str, dtype: torch.dtype, device: torch.device, compiled: bool) -> torch.nn.Module:
        if name not in self.models:
            if name not in OFFICIAL_MODELS:
                raise ValueError(f"no official counterpart of {name!r}; expected one of {sorted(OFFICIAL_MODELS)}")
            torch.manual_seed(0)
            with torch.device(device):
                m = self.gpt_module.GPT_models[OFFICIAL_MODELS[name]](
                    vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i")
            torch.nn.init.normal_(m.output.weight, std=0.02)  # as build(): a non-degenerate distribution
            self.models[name] = m.to(device=device, dtype=dtype).eval()
        if not compiled:
            return self.models[name]
        if name not in self.compiled:
            self.compiled[name] = torch.compile(self.models[name], mode="reduce-overhead", fullgraph=True)
        return self.compiled[name]

    def release(self) -> None:
        self.models.clear()
        self.compiled.clear()


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
    gpt: GPT, path: str, batch: int, cfg: float, repeats: int, device: torch.device, profile: str | None = None,
    official: tuple[OfficialSampler, torch.nn.Module] | None = None,
) -> dict:
    labels = torch.arange(batch, device=device) % gpt.config.num_classes

    def draw() -> torch.Tensor:
        if official is not None:  # the official generate(): sampling as test_net.py calls it, CFG on all steps
            torch.manual_seed(0)
            sampler, model = official
            return sampler.generate(model, labels, gpt.num_tokens, cfg_scale=cfg, cfg_interval=-1, temperature=1.0,
                                    top_k=0, top_p=1.0, sample_logits=True)
        gen = torch.Generator(device).manual_seed(0)
        return sample(gpt, labels, generator=gen, **PATHS[path], cfg_scale=cfg)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        codes = draw()
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
    ap.add_argument("--paths", nargs="+", default=[p for p in PATHS if not p.startswith("src-")], choices=list(PATHS))
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
    ap.add_argument("--official-src", help="root of a CVMI-Lab/VFMTok checkout: enables the src-official paths")
    ap.add_argument("--split-tile", help="BLOCK_L,WARPS[,STAGES] of the flash-decoding attention kernel (bench/"
                    "decode_attention.py picks them)")
    args = ap.parse_args()
    if any(p.startswith("src-official") for p in args.paths) and not args.official_src:
        ap.error("the src-official paths need --official-src PATH")
    official = OfficialSampler(args.official_src) if args.official_src else None
    if args.split_tile:
        from vfmtok.ops import decode_triton

        values = [int(v) for v in args.split_tile.split(",")]
        decode_triton.SPLIT_BLOCK_L, decode_triton.SPLIT_WARPS = values[:2]
        decode_triton.SPLIT_STAGES = values[2] if len(values) > 2 else 0
    device = torch.device(args.device)
    for name in ("recompile_limit", "cache_size_limit"):  # one compilation per batch shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    bandwidth = copy_bandwidth(device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "copy_bandwidth_Bps": bandwidth, "dtype": args.dtype, "split_tile": args.split_tile}
    print(json.dumps(env), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"env": env}) + "\n")
    for model in args.models:
        gpt = build(model, DTYPES[args.dtype], device)
        params = sum(p.numel() for p in gpt.parameters())
        for path in args.paths:
            batches = args.baseline_batches if "official" in path else args.batches
            for cfg in args.cfg:
                for batch in batches:
                    rows = batch * (2 if cfg != 1.0 else 1)
                    if rows > args.max_rows:
                        continue
                    row = {"model": model, "params": params, "path": path, "batch": batch, "cfg": cfg, "rows": rows,
                           **env}
                    try:
                        src = None
                        if path.startswith("src-official"):
                            src = official, official.model(model, DTYPES[args.dtype], device, path.endswith("compiled"))
                        row.update(run_case(gpt, path, batch, cfg, args.repeats, device, args.profile, src))
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
                    if path in ("official-compiled", "src-official-compiled"):
                        torch._dynamo.reset()  # releases the cudagraph trees' memory
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        del gpt
        if official is not None:
            official.release()
        clear_decoder_cache()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
