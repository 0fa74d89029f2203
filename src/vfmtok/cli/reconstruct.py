"""``vfmtok reconstruct``: tokenize and reconstruct images; writes original | reconstruction PNGs, prints PSNR.

Each image is read with PIL, converted to RGB, ADM-centre-cropped to the tokenizer's image size (the official eval
transform), encoded to codes and decoded. PSNR is computed on the uint8 images (``x * 127.5 + 128``, clamp,
truncate) at the tokenizer's resolution, peak 255.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

HELP = "reconstruct images through a tokenizer: side-by-side PNGs and PSNR per image"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output directory for <name>_recon.png files")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def read_image(path: str) -> Any:
    """Open ``path`` fully and return it as a PIL RGB image; unreadable -> UserError naming it."""
    from PIL import Image, UnidentifiedImageError

    from vfmtok.cli.main import UserError
    from vfmtok.data.transforms import to_rgb

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image not found: {file}")
    try:
        with Image.open(file) as img:
            img.load()
            rgb = to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {file}: {type(e).__name__}: {e}") from None
    return rgb


def psnr_uint8(a: Any, b: Any) -> float:
    """PSNR in dB between two uint8 tensors of equal shape (peak 255); inf when identical."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _out_names(paths: list[str]) -> list[str]:
    names, seen = [], {}
    for p in paths:
        stem = Path(p).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(stem if n == 0 else f"{stem}-{n}")
    return names


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from vfmtok.cli.main import UserError
    from vfmtok.data.transforms import center_crop_arr, pil_to_tensor, tensor_to_uint8
    from vfmtok.tokenizer.model import VFMTokenizer

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    images = [read_image(p) for p in args.images]  # a bad file fails before the model is loaded
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device)
    size = tok.config.image_size
    crops = [center_crop_arr(img, size) for img in images]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _out_names(args.images)
    scores = []
    for start in range(0, len(crops), args.batch_size):
        chunk = crops[start : start + args.batch_size]
        x = torch.stack([pil_to_tensor(c) for c in chunk]).to(args.device)
        with torch.no_grad():
            codes = tok.encode(x)
            rec = tok.decode(codes)
        orig_u8 = tensor_to_uint8(x).cpu()
        rec_u8 = tensor_to_uint8(rec).cpu()
        for i in range(len(chunk)):
            k = start + i
            score = psnr_uint8(orig_u8[i], rec_u8[i])
            scores.append(score)
            pair = np.concatenate([orig_u8[i].numpy(), rec_u8[i].numpy()], axis=1)  # (S, 2S, 3)
            dest = out / f"{names[k]}_recon.png"
            Image.fromarray(pair).save(dest)
            print(f"{args.images[k]}: PSNR {score:.2f} dB -> {dest}")
    finite = [s for s in scores if math.isfinite(s)]
    if len(scores) > 1 and finite:
        print(f"mean PSNR over {len(finite)} images: {sum(finite) / len(finite):.2f} dB")
    return 0
