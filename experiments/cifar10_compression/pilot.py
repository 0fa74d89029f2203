"""Sizing pilot of the compression experiment (issue 15), part 2: the GPT and evaluation costs (random weights).

``pilot.sh`` runs ``bench/train_tokenizer.py`` for the five tokenizers (part 1) and then this script, which prints one
JSON line per measurement:

* ``gpt-train``: one optimiser step of the experiment's GPT (``configs/gpt/cifar10-small.yaml``: gpt-small, AdamW,
  bf16 autocast) on random codes at batch 256, for 64 tokens (the 64-token tokenizers) and 256 (``gridfull``), eager
  and under ``torch.compile`` (compilation time reported apart);
* ``sample``: class-conditional generation of ``--num-samples`` token grids at 64 / 256 tokens without and with CFG
  (``vfmtok.generator.sample``, the path ``eval_gpt.py`` takes; ``--compile`` adds the compiled fast decoder);
* ``decode``: the 64- and 256-token tokenizers decoding codes to 32 x 32 images;
* ``features``: DINOv2-S/14 at 224 and EfficientNet-Lite0 at 224 (both random weights) on 32 x 32 images: the FD
  and rFD feature cost per image.

A case is skipped (``{"skipped": ...}``) once ``--budget`` seconds have passed, so the pilot ends inside its call.

    python experiments/cifar10_compression/pilot.py --device cuda --budget 150
    python experiments/cifar10_compression/pilot.py --device cpu --tiny          # a CPU check of the code paths
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(seconds of the first call (compilation, allocation), median seconds of ``repeats`` further calls)."""
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def gpt_config(tokens: int, tiny: bool):
    from vfmtok.generator import gpt_preset

    return gpt_preset("gpt-test" if tiny else "gpt-small", vocab_size=1024, block_size=tokens, num_classes=10)


def bench_gpt_train(dev: torch.device, tokens: int, batch: int, compile: bool, tiny: bool, steps: int) -> dict:
    import torch.nn.functional as F

    from vfmtok.generator import GPT

    torch.manual_seed(0)
    gpt = GPT(gpt_config(tokens, tiny)).to(dev).train()
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=True if dev.type == "cuda" else None)
    model = torch.compile(gpt) if compile else gpt
    codes = torch.randint(0, 1024, (batch, tokens), device=dev)
    labels = torch.randint(0, 10, (batch,), device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(codes[:, :-1], labels)
        loss = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    first, med = timed(step, dev, steps, warmup=3)
    return {"case": "gpt-train", "tokens": tokens, "batch": batch, "compile": compile, "first_s": round(first, 2),
            "step_ms": round(med * 1e3, 2), "steps_per_s": round(1 / med, 2)}


def bench_sample(dev: torch.device, tokens: int, num: int, cfg: float, compile: bool, tiny: bool) -> dict:
    from vfmtok.generator import GPT
    from vfmtok.generator.sampling import balanced_labels, clear_decoder_cache, sample

    torch.manual_seed(0)
    gpt = GPT(gpt_config(tokens, tiny)).to(dev).eval()
    if dev.type == "cuda":
        gpt = gpt.to(torch.bfloat16)
    labels = balanced_labels(num, 10).to(dev)
    gen = torch.Generator(dev).manual_seed(0)

    def run() -> None:
        with torch.no_grad():
            sample(gpt, labels, cfg_scale=cfg, generator=gen, compile=compile)

    first, med = timed(run, dev, 1)
    clear_decoder_cache(gpt)
    return {"case": "sample", "tokens": tokens, "num": num, "cfg": cfg, "compile": compile,
            "first_s": round(first, 2), "seconds": round(med, 3), "samples_per_s": round(num / med, 1)}


def tokenizer(tokens: int):
    from vfmtok.cli.train_tokenizer import load_recipe
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.training.tokenizer_setup import resolve_model_config

    sets = ["backbone_weights=random", "model.quantization=grid"] + (["model.anchor_grid=16"] if tokens == 256 else [])
    cfg = load_recipe(REPO / "configs" / "tokenizer" / "cifar10-compression.yaml", sets, None)
    torch.manual_seed(0)
    return VFMTokenizer(resolve_model_config(cfg))


def bench_decode(dev: torch.device, tokens: int, num: int, batch: int) -> dict:
    tok = tokenizer(tokens).to(dev).eval()
    codes = torch.randint(0, tok.config.codebook_size, (num, tokens), device=dev)

    def run() -> None:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            for i in range(0, num, batch):
                tok.decode_uint8(codes[i : i + batch], size=None)

    first, med = timed(run, dev, 2)
    return {"case": "decode", "tokens": tokens, "num": num, "first_s": round(first, 2),
            "images_per_s": round(num / med, 1)}


def bench_features(dev: torch.device, num: int, batch: int, which: str) -> dict:
    import torch.nn.functional as F

    if which == "dinov2-s14-224":
        net = tokenizer(64).backbone.to(dev).eval()  # bundled DINOv2-S/14 shape at 224, random weights
        fn = lambda x: net(x).target  # noqa: E731
    else:
        from vfmtok.evaluation.efficientnet import EfficientNetLite0

        eff = EfficientNetLite0().to(dev).eval()
        fn = lambda x: eff(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))  # noqa: E731
    x = torch.rand(num, 3, 32, 32, device=dev) * 2 - 1

    def run() -> None:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            for i in range(0, num, batch):
                fn(x[i : i + batch])

    first, med = timed(run, dev, 2)
    return {"case": "features", "extractor": which, "num": num, "batch": batch, "first_s": round(first, 2),
            "images_per_s": round(num / med, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=150.0, help="skip the cases that would start after this (s)")
    ap.add_argument("--tiny", action="store_true", help="tiny GPT and sizes (a CPU check of the code paths)")
    ap.add_argument("--compile", action="store_true", help="also the compiled GPT step and fast sampler")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tiny = args.tiny
    batch, num, steps = (8, 16, 2) if tiny else (256, 2000, 20)
    cases = []
    for tokens in (64, 256):
        cases.append(lambda t=tokens: bench_gpt_train(dev, t, batch, False, tiny, steps))
    for tokens in (64, 256):
        for cfg in (1.0, 2.0):
            cases.append(lambda t=tokens, c=cfg: bench_sample(dev, t, num, c, False, tiny))
    for tokens in (64, 256):
        cases.append(lambda t=tokens: bench_decode(dev, t, num, 500 if not tiny else 8))
    for which in ("dinov2-s14-224", "efficientnet-lite0"):
        cases.append(lambda w=which: bench_features(dev, num, 250 if not tiny else 8, w))
    if args.compile:  # last: compilation is the slow part, the budget may stop it
        for tokens in (64, 256):
            cases.append(lambda t=tokens: bench_sample(dev, t, num, 2.0, True, tiny))
            cases.append(lambda t=tokens: bench_gpt_train(dev, t, batch, True, tiny, steps))
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        if time.perf_counter() - t0 > args.budget:
            row = {"skipped": f"{len(cases) - i} cases: budget of {args.budget:g} s spent"}
            print(json.dumps(row), flush=True)
            break
        try:
            row = case()
        except Exception as e:  # noqa: BLE001 - a failed case is reported, the others still run
            row = {"case": "error", "index": i, "error": f"{type(e).__name__}: {e}"[:400]}
        row["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
