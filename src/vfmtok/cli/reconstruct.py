"""``vfmtok reconstruct``: tokenize and reconstruct images; writes original | reconstruction PNGs, prints PSNR.

Each image is read with PIL, converted to RGB, ADM-centre-cropped to the tokenizer's image size (the official eval
transform), encoded to codes and decoded. PSNR is computed on the uint8 images (``x * 127.5 + 128``, clamp,
truncate) at the tokenizer's resolution, peak 255.

Unreadable images do not stop the others: every readable one is reconstructed, each unreadable one is reported on
stderr (one line naming it) and the exit code is 2. Warnings say when the tokenizer is a random initialisation (its
reconstructions are noise) and when an image is far from the size the tokenizer works at (e.g. a 336-px photo through
the demo's 32-px Fashion-MNIST tokenizer is shrunk 10x first, and that tokenizer has never seen a photo).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
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


def warn_outside_domain(tok_dir: str, image_size: int, images: dict[str, Any]) -> None:
    """Log a warning when the tokenizer in ``tok_dir`` is untrained (or has no training record) and when images
    (``{path: PIL image}``) are far from its ``image_size``: shorter side over 4x larger (detail is lost in the
    down-scaling) or under half of it (up-scaled blur)."""
    from vfmtok.hub import TRAINING_RECORD_NAME, read_training_record

    record = read_training_record(tok_dir)
    if record is None:
        log.warning("%s has no training record (%s): if it is a random initialisation (vfmtok init-tokenizer) its "
                    "reconstructions are noise; train it first (README, Train)", tok_dir, TRAINING_RECORD_NAME)
    elif not record.get("trained", True):
        log.warning("%s is a randomly initialised tokenizer (%s): its reconstructions are noise by design; it is "
                    "for trying the commands and for starting training (README, Train)", tok_dir,
                    record.get("source", "not trained"))
    data = f", trained on {record['data']}" if record and record.get("data") else ""
    far = {p: min(img.size) / image_size for p, img in images.items()
           if not 0.5 <= min(img.size) / image_size <= 4.0}
    if far:
        names = [f"{Path(p).name} ({images[p].size[0]}x{images[p].size[1]} px, {'shrunk' if r > 1 else 'enlarged'} "
                 f"{max(r, 1 / r):.1f}x)" for p, r in list(far.items())[:3]]
        more = f" and {len(far) - 3} more" if len(far) > 3 else ""
        log.warning("%s%s: far from the %d px this tokenizer works at%s; images are resized to %d px before encoding, "
                    "and a tokenizer knows only the kind of images it was trained on: expect a poor reconstruction",
                    ", ".join(names), more, image_size, data, image_size)


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
    readable, unreadable = {}, {}  # every file is tried before the model is loaded
    for p in args.images:
        try:
            readable[p] = read_image(p)
        except (UserError, FileNotFoundError) as e:
            unreadable[p] = str(e)
    if not readable:
        raise UserError("no readable image: " + "; ".join(unreadable.values()))
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device)
    size = tok.config.image_size
    warn_outside_domain(args.tokenizer, size, readable)
    paths = list(readable)
    crops = [center_crop_arr(readable[p], size) for p in paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _out_names(paths)
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
            print(f"{paths[k]}: PSNR {score:.2f} dB -> {dest}")
    finite = [s for s in scores if math.isfinite(s)]
    if len(scores) > 1 and finite:
        print(f"mean PSNR over {len(finite)} images: {sum(finite) / len(finite):.2f} dB")
    for message in unreadable.values():
        print(f"vfmtok reconstruct: error: {message}", file=sys.stderr)
    if unreadable:
        print(f"vfmtok reconstruct: {len(unreadable)} of {len(args.images)} images unreadable (skipped, listed "
              f"above); the other {len(readable)} were reconstructed", file=sys.stderr)
        return 2
    return 0
