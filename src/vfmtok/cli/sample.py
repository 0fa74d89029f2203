"""``vfmtok sample``: class-conditional samples from a GPT + tokenizer pair, as PNGs, a grid and an ADM ``.npz``.

``--method jacobi --window K`` samples with speculative Jacobi decoding (same distribution, fewer GPT forward
passes); the summary line and ``sample_config.json`` state the forward passes per image (``steps_per_image``).

Labels are class-balanced (every block of ``len(classes)`` samples holds each class once, in a seeded order), batch
``i`` draws from ``torch.Generator(device).manual_seed(seed + i)``, and ``samples.npz`` follows the ADM evaluator
contract: ``arr_0`` uint8 (N, H, W, 3), plus ``labels`` (N,) and ``codes`` (N, L). Images go through the official
gFID conversion (decode at the tokenizer's resolution, bicubic resize without antialias, ``x * 127.5 + 128``,
truncate to uint8).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "sample images from a GPT + tokenizer (class-balanced labels, CFG schedules) into PNGs and an ADM .npz"

log = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpt", required=True, help="GPT model directory (config.json + model.safetensors)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer model directory")
    parser.add_argument("--num", type=int, required=True, help="number of samples N")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--cfg-schedule", default="constant", choices=("constant", "linear", "power-cosine"))
    parser.add_argument("--cfg-power", type=float, default=1.0, help="exponent of the power-cosine schedule")
    parser.add_argument("--cfg-interval", type=int, nargs=2, metavar=("START", "END"),
                        help="apply CFG only at token steps START <= t < END (END -1: to the end)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the labels and of batch i's generator (+ i)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES), help="GPT weight dtype (tokenizer: fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="fast decoding: fused layers under torch.compile, one CUDA graph per position on GPU; "
                             "at 1-2 rows on a CUDA GPU, five Triton kernels per layer instead (same tokens as the "
                             "default path up to rounding; compiles once per batch shape)")
    parser.add_argument("--method", default="ar", choices=("ar", "jacobi"),
                        help="ar: one token per forward pass; jacobi: speculative Jacobi decoding, up to --window "
                             "tokens per pass with the same sample distribution (eager modules; no --compile)")
    parser.add_argument("--window", type=int, default=16, help="Jacobi window: draft tokens per row per pass")
    parser.add_argument("--classes", type=int, nargs="+", help="class labels to sample (default: all classes)")
    parser.add_argument("--image-size", type=int, default=256, help="output size (0: the tokenizer's resolution)")
    parser.add_argument("--no-png", action="store_true", help="skip the per-sample PNGs (grid and .npz only)")
    parser.add_argument("--grid-max", type=int, default=64, help="samples shown in grid.png (one row per class)")


def _save_grid(images, labels, max_images: int, path: Path) -> None:
    """Tile at most ``max_images`` of the (N, H, W, 3) uint8 ``images`` into a PNG with one row per class (classes in
    increasing order, the first samples of each class left to right)."""
    import numpy as np
    from PIL import Image

    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_row = max(1, max_images // len(classes))
    rows = [np.flatnonzero(labels == c)[:per_row] for c in classes]
    cols = max(len(r) for r in rows)
    _, h, w, _ = images.shape
    grid = np.zeros((len(rows) * h, cols * w, 3), dtype=np.uint8)
    for r, idx in enumerate(rows):
        for c, i in enumerate(idx):
            grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    Image.fromarray(grid).save(path)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from vfmtok.cli.main import UserError
    from vfmtok.generator.gpt import GPT
    from vfmtok.generator.sampling import CFG_SCHEDULES, balanced_labels, sample
    from vfmtok.tokenizer.model import VFMTokenizer

    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be >= 1")
    if args.cfg_schedule not in CFG_SCHEDULES:
        raise UserError(f"--cfg-schedule must be one of {CFG_SCHEDULES}")
    if not 0.0 < args.top_p <= 1.0 or args.top_k < 0:
        raise UserError("--top-p must be in (0, 1] and --top-k >= 0")
    if args.method == "jacobi" and (args.window < 1 or args.compile):
        raise UserError("--method jacobi needs --window >= 1 and runs without --compile")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")

    gpt = GPT.from_pretrained(args.gpt, device=device).to(getattr(torch, _DTYPES[args.dtype]))
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=device)
    gcfg, tcfg = gpt.config, tok.config
    if tcfg.codebook_size != gcfg.vocab_size or tcfg.num_tokens != gcfg.block_size:
        raise UserError(
            f"GPT and tokenizer do not match: GPT vocab {gcfg.vocab_size} / {gcfg.block_size} tokens, tokenizer "
            f"codebook {tcfg.codebook_size} / {tcfg.num_tokens} tokens"
        )
    if args.cfg_scale != 1.0 and not gcfg.has_null_class:
        raise UserError("this GPT has no null class (trained without label dropout): use --cfg-scale 1")
    try:
        labels = balanced_labels(args.num, gcfg.num_classes, args.seed, args.classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    interval = None
    if args.cfg_interval:
        start, end = args.cfg_interval
        interval = (start, None if end < 0 else end)
    size = args.image_size or None

    out = Path(args.out)
    img_dir = out / "images"
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_png:
        img_dir.mkdir(exist_ok=True)
    side = size or tcfg.image_size
    arr_path = out / "arr_0.npy.tmp"
    arr = np.lib.format.open_memmap(arr_path, mode="w+", dtype=np.uint8, shape=(args.num, side, side, 3))
    all_codes = np.empty((args.num, gcfg.block_size), dtype=np.int64)
    all_steps = np.empty(args.num, dtype=np.int64)  # GPT forward passes per image

    done, t0 = 0, time.perf_counter()
    bar = tqdm(total=args.num, unit="img", desc="sample")
    for batch, start in enumerate(range(0, args.num, args.batch_size)):
        y = labels[start : start + args.batch_size].to(device)
        gen = torch.Generator(device).manual_seed(args.seed + batch)
        codes, steps = sample(gpt, y, cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule,
                              cfg_power=args.cfg_power, cfg_interval=interval, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, generator=gen, compile=args.compile,
                              method=args.method, window=args.window, return_steps=True)
        images = tok.decode_uint8(codes, size=size).cpu().numpy()  # (b, side, side, 3)
        b = images.shape[0]
        arr[start : start + b] = images
        all_codes[start : start + b] = codes.cpu().numpy()
        all_steps[start : start + b] = steps.cpu().numpy()
        if not args.no_png:
            for i in range(b):
                Image.fromarray(images[i]).save(img_dir / f"{start + i:06d}.png")
        done += b
        bar.update(b)
        bar.set_postfix(img_s=f"{done / (time.perf_counter() - t0):.2f}")
    bar.close()
    elapsed = time.perf_counter() - t0

    _save_grid(arr, labels.numpy(), args.grid_max, out / "grid.png")
    arr.flush()
    np.savez(out / "samples.npz", arr_0=arr, labels=labels.numpy(), codes=all_codes)
    del arr
    arr_path.unlink()
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    steps_per_image = float(all_steps.mean())
    settings.update(device=str(device), num_classes=gcfg.num_classes, images_per_s=args.num / elapsed,
                    steps_per_image=steps_per_image, steps_min=int(all_steps.min()), steps_max=int(all_steps.max()),
                    tokens_per_image=gcfg.block_size)
    (out / "sample_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {args.num} samples ({side}x{side}) to {out / 'samples.npz'} in {elapsed:.1f}s "
          f"({args.num / elapsed:.2f} images/s); {steps_per_image:.2f} GPT forward passes per image "
          f"for {gcfg.block_size} tokens ({args.method})")
    return 0
