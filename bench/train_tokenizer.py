"""Tokenizer training throughput, with and without the frozen-VFM feature cache (not collected by pytest).

Runs :func:`vfmtok.training.tokenizer.train_step` (the trainer's real step: forward, losses, backward, clip, Adam,
EMA) on random images with the official architecture (DINOv2-L/14-reg4-shaped backbone with *random* weights at
336 px, 73 M trainable parameters) and prints one JSON line per case:

* ``live``: the backbone runs every step (what the official trainer and ``cache_features=false`` do);
* ``cached``: precomputed backbone features resident on the GPU (``cache_features=true`` when the cache fits);
* ``cached_host``: precomputed features copied from pinned host memory every step (a cache too large for the GPU);
* ``backbone``: the frozen backbone's forward alone, for reference.

    python bench/train_tokenizer.py                          # official, bf16, batch 32, on cuda
    python bench/train_tokenizer.py --lpips --batch-size 16  # with the LPIPS-VGG term (needs the lpips packages)
    python bench/train_tokenizer.py --preset tok-test --image-size 0 --device cpu --precision fp32 --steps 3

``--config RECIPE.yaml`` takes the model, losses and precision from a training recipe instead of ``--preset``, with
``--set KEY=VALUE`` overrides as on ``vfmtok train-tokenizer``'s command line (``model.KEY=VALUE`` for the model;
``backbone_weights`` is forced to ``random``); ``--label`` names the case in the output. A tokenizer without a VFM
(``encoder_type=cnn``) runs the ``live`` case only. The issue-15 pilot
(``experiments/cifar10_compression/pilot.sh``) runs its five tokenizers this way:

    python bench/train_tokenizer.py --config configs/tokenizer/cifar10-compression.yaml --set model.quantization=grid \
        --batch-size 256 --label grid
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vfmtok.backbones.base import BackboneOutput
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.training.ema import EMA
from vfmtok.training.tokenizer import TokenizerTrainConfig, TrainParts, train_step
from vfmtok.training.tokenizer_setup import resolve_model_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="official")
    p.add_argument("--image-size", type=int, default=336, help="0: the preset's image size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--lpips", action="store_true", help="include the LPIPS-VGG term (official weight 1)")
    p.add_argument("--cases", default="live,cached,cached_host,backbone")
    p.add_argument("--config", help="a tokenizer training recipe (YAML/JSON) instead of --preset / --image-size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides (with --config)")
    p.add_argument("--label", default="", help="name of this configuration in the output")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.config:
        from pathlib import Path

        from vfmtok.cli.train_tokenizer import load_recipe

        cfg = load_recipe(Path(args.config), [*args.set, "backbone_weights=random"], None)
        cfg = cfg.replace(batch_size=args.batch_size, precision=args.precision,
                          lpips_weight=1.0 if args.lpips else cfg.lpips_weight)
    else:
        cfg = TokenizerTrainConfig(preset=args.preset, image_size=args.image_size, batch_size=args.batch_size,
                                   precision=args.precision, lpips_weight=1.0 if args.lpips else 0.0)
    model_cfg = resolve_model_config(cfg)
    torch.manual_seed(0)
    tok = VFMTokenizer(model_cfg).to(device).train()
    params = [q for q in tok.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=True if device.type == "cuda" else None)
    lpips = None
    if cfg.lpips_weight > 0:
        from vfmtok.losses.lpips import load_lpips

        lpips = load_lpips("vgg").to(device)
    parts = TrainParts(tok, tok, opt, EMA(tok, cfg.ema_decay), lpips, None, None, None)
    s = model_cfg.image_size
    x = torch.rand(args.batch_size, 3, s, s, device=device) * 2 - 1
    bf16 = device.type == "cuda" and args.precision == "bf16"
    cases_asked = args.cases.split(",")
    if not tok.has_backbone:  # encoder_type=cnn: nothing frozen to cache
        cases_asked = [c for c in cases_asked if c == "live"]
        out = BackboneOutput([torch.zeros(1, 1, 1, 1, device=device)], torch.zeros(1, 1, 1, device=device))
    else:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = tok.backbone(x)  # cached features are stored as float16, as the feature cache does
    feats = BackboneOutput([lvl.half() for lvl in out.levels], out.target.half())
    host = BackboneOutput([lvl.cpu().pin_memory() if device.type == "cuda" else lvl.cpu() for lvl in feats.levels],
                          None)
    target_level = len(feats.levels) - 1

    def as_float(f: BackboneOutput) -> BackboneOutput:
        levels = [lvl.float() for lvl in f.levels]
        return BackboneOutput(levels, levels[target_level].flatten(2).transpose(1, 2))

    step = [0]

    def run(features_fn):
        def fn():
            train_step(parts, cfg, x, features_fn(), step[0], cfg.lr)
            step[0] += 1
        return fn

    cases = {
        "live": run(lambda: None),
        "cached": run(lambda: as_float(feats)),
        "cached_host": run(lambda: as_float(BackboneOutput(
            [lvl.to(device, non_blocking=True) for lvl in host.levels], None))),
        "backbone": lambda: tok.backbone(x),
    }
    info = {
        "bench": "train_tokenizer", "label": args.label or args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "preset": model_cfg.preset, "num_tokens": model_cfg.num_tokens, "image_size": s, "batch_size": args.batch_size,
        "precision": args.precision, "lpips": args.lpips,
        "trainable_params_m": round(tok.num_trainable_params() / 1e6, 2),
        "cache_mb_per_image": round(sum(lvl[0].numel() * 2 for lvl in feats.levels) / 2**20, 3),
    }
    for name in cases_asked:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=name == "backbone" and bf16):
            times = _time(cases[name], args.steps, args.warmup, device)
        med = statistics.median(times)
        row = {**info, "case": name, "median_ms": round(med * 1e3, 2), "images_per_s": round(args.batch_size / med, 1)}
        if device.type == "cuda":
            row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
