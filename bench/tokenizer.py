"""Tokenizer inference throughput: encode and decode at 336 with the official architecture (not collected by pytest).

The ``official`` preset (DINOv2-L/14-reg4-shaped backbone with *random* weights, 256 tokens, the pixel decoder to 336)
encodes random images and decodes random codes at ``--batch-size`` (default 64), per setting:

* ``fp32``: everything float32; ``tf32``: float32 with TF32 matrix products and convolutions;
* ``bf16-autocast``: bf16 autocast around the whole call (what the official code's ``--mixed-precision bf16`` does);
* ``bf16-fast``: the frozen backbone's weights stored in bf16, bf16 autocast, the backbone, encoder, token decoder and
  pixel decoder each under ``torch.compile``, the pixel decoder in channels-last memory format
  (:func:`vfmtok.tokenizer.inference.prepare_inference`); ``bf16-fast-gather``: the same with the region encoder's
  deformable sampling as one fusable weighted gather instead of ``grid_sample``; ``bf16-fast-nchw``: without
  channels-last;
* ``bf16-fast-tf32``: ``bf16-fast`` with TF32 matrix products (``torch.backends.cuda.matmul.allow_tf32``, reset
  afterwards), which is what the region encoder's float32 attention islands then use;
* ``bf16-fast-lowp``: ``bf16-fast`` with the gather form and the region encoder's attentions under the bf16 autocast
  instead of float32 (``prepare_inference(..., deform_impl="gather", attention_fp32=False)``; the sampling locations
  stay float32; changes rounding only, see :func:`~vfmtok.tokenizer.inference.prepare_inference`);
  ``bf16-fast-triton``: ``bf16-fast-lowp`` with the deformable sampling as the forward-only Triton kernel
  (``deform_impl="triton"``, :mod:`vfmtok.ops.ms_deform_attn_triton`).

For each setting it times ``encode`` (backbone -> region encoder -> quantizer, codes out), the backbone forward alone
(to give the share of our layers on top of it) and ``decode`` (codes -> image), and appends one JSON object per setting
to ``--out`` (JSON lines) as soon as it is measured.

``--profile N`` then runs ``torch.profiler`` over N more encode calls (CPU and CUDA activities on CUDA) and adds the
25 ops/kernels with the largest self device time (self CPU time on CPU) to the row as ``profile_top``: a list of
``{name, calls, self_device_ms}`` (``self_cpu_ms`` on CPU), ``calls`` counted over the N encodes and the time per
encode (total / N); the table is also printed to stderr.

    python bench/tokenizer.py --out tokenizer.jsonl
    python bench/tokenizer.py --preset tok-test --image-size 0 --batch-size 4 --device cpu --settings fp32 --steps 2
    python bench/tokenizer.py --settings bf16-fast bf16-fast-lowp --profile 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import traceback

import torch
from torch.profiler import ProfilerActivity, profile

from vfmtok.tokenizer import VFMTokenizer
from vfmtok.tokenizer.inference import prepare_inference
from vfmtok.tokenizer.presets import tokenizer_preset

SETTINGS = (
    "fp32", "tf32", "bf16-autocast", "bf16-fast", "bf16-fast-gather", "bf16-fast-nchw", "bf16-fast-tf32",
    "bf16-fast-lowp", "bf16-fast-triton",
)
PROFILE_TOP = 25


def _time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def backbone_gflop(tok: VFMTokenizer) -> float:
    """Matrix-product GFLOP of one image through the backbone blocks up to the last tap (2 x MACs)."""
    c = tok.config.backbone
    n = (c.input_size // c.patch_size) ** 2 + 1 + c.num_register_tokens
    blocks = 1 + max(tok.backbone.taps)
    per_block = sum(p.numel() for name, p in tok.backbone.blocks[0].named_parameters() if p.ndim == 2)
    attention = 2 * n * n * c.embed_dim  # q k^T and a v
    return 2 * blocks * (n * per_block + attention) / 1e9


def profile_top(fn, steps: int, device: torch.device, top: int = PROFILE_TOP) -> list[dict]:
    """The ``top`` ops/kernels by self device time (self CPU time on CPU) over ``steps`` calls of ``fn``.

    Each entry: ``name``, ``calls`` (over all ``steps`` calls) and ``self_device_ms`` / ``self_cpu_ms`` per call of
    ``fn`` (total / steps). The profiler's table is printed to stderr.
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    key, field = ("self_device_time_total", "self_device_ms") if cuda else ("self_cpu_time_total", "self_cpu_ms")
    averages = prof.key_averages()
    print(averages.table(sort_by=key, row_limit=top), file=sys.stderr, flush=True)
    rows = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"name": e.key, "calls": e.count, field: getattr(e, key) / 1e3 / steps} for e in rows]


def run_setting(args, setting: str, device: torch.device) -> dict:
    tf32_before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = setting in ("tf32", "bf16-fast-tf32")
        torch.backends.cudnn.allow_tf32 = setting == "tf32"
        return _run_setting(args, setting, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before


def _run_setting(args, setting: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = tokenizer_preset(args.preset)
    if args.image_size:
        config = dataclasses.replace(config, image_size=args.image_size,
                                     backbone=dataclasses.replace(config.backbone, input_size=args.image_size))
    tok = VFMTokenizer(config).to(device).eval()
    fast = setting.startswith("bf16-fast")
    if fast:
        prepare_inference(tok, backbone_dtype=torch.bfloat16, compile=True, channels_last=setting != "bf16-fast-nchw",
                          deform_impl={"bf16-fast-gather": "gather", "bf16-fast-lowp": "gather",
                                       "bf16-fast-triton": "triton"}.get(setting),
                          attention_fp32=setting not in ("bf16-fast-lowp", "bf16-fast-triton"))
    s = tok.config.image_size
    images = torch.rand(args.batch_size, 3, s, s, device=device) * 2 - 1
    codes = torch.randint(0, tok.config.codebook_size, (args.batch_size, tok.config.num_tokens), device=device)
    autocast = setting.startswith("bf16")

    def under(fn):
        def wrapped():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                return fn()
        return wrapped

    t_setup = time.perf_counter()
    under(lambda: tok.encode(images))()
    under(lambda: tok.decode(codes))()
    setup = time.perf_counter() - t_setup
    encode = _time(under(lambda: tok.encode(images)), args.steps, args.warmup, device)
    backbone = _time(under(lambda: tok.backbone(images)), args.steps, args.warmup, device)
    decode = _time(under(lambda: tok.decode(codes)), args.steps, args.warmup, device)
    b = args.batch_size
    row = {
        "setting": setting, "preset": args.preset, "image_size": s, "batch_size": b, "setup_s": setup,
        "encode_images_per_s": b / encode, "backbone_images_per_s": b / backbone, "decode_images_per_s": b / decode,
        "encode_ms": 1e3 * encode, "backbone_ms": 1e3 * backbone, "decode_ms": 1e3 * decode,
        "our_layers_over_backbone": encode / backbone - 1, "backbone_share_of_encode": backbone / encode,
        "backbone_tflops": backbone_gflop(tok) * b / backbone / 1e3,
    }
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile:
        row["profile_steps"] = args.profile
        row["profile_top"] = profile_top(under(lambda: tok.encode(images)), args.profile, device)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="official")
    ap.add_argument("--image-size", type=int, default=336, help="0: the preset's image size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, profile N encode calls and record the top ops/kernels (0: off)")
    ap.add_argument("--out", default="tokenizer.jsonl")
    args = ap.parse_args()
    if args.profile < 0:
        ap.error(f"--profile must be >= 0, got {args.profile}")
    device = torch.device(args.device)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for setting in args.settings:
        row = {**env}
        try:
            row.update(run_setting(args, setting, device))
        except Exception as e:  # noqa: BLE001 - a failing setting is recorded, the sweep goes on
            row.update(setting=setting, error=f"{type(e).__name__}: {e}")
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
