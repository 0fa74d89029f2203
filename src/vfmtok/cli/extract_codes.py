"""``vfmtok extract-codes``: encode a labelled image dataset into code shards for GPT training.

What is stored per image (see :mod:`vfmtok.data.tokens` for the file format):

- default: the codes of the ADM centre crop at the tokenizer's image size (``--crop resize`` resizes the whole image
  instead, for tiny square datasets such as CIFAR-10);
- ``--flip``: that crop and its horizontal mirror (LlamaGen's default extraction);
- ``--ten-crop``: LlamaGen's ``--ten-crop``: the image is centre-cropped (or resized) to ``int(S * 1.1)``, then
  torchvision's ``TenCrop(S)`` is taken: 4 corners + centre of it, then the same 5 crops of its mirror image.

Shard k holds dataset indices ``[k * shard_size, (k + 1) * shard_size)``; under ``torchrun`` rank r encodes the shards
with ``k % world_size == r``. Each shard is written atomically, so a run killed at any moment is resumed by running
the same command again: finished shards are skipped, temporaries removed. Unreadable images are recorded as skipped.
When every shard is present, rank 0 checks that each dataset index occurs exactly once (encoded or skipped) and writes
``manifest.json`` last. The arguments are recorded in ``extraction.json``; resuming with different ones is refused.
Encoding runs in strict fp32 (no autocast, no TF32), as the official evaluation encodes; ``--precision bf16`` encodes
with :func:`vfmtok.tokenizer.inference.fast_encode` instead (bf16, compiled, Triton deformable sampling on CUDA:
~3.5x the official encode speed on an H100; a few codes may differ where two codes are nearly equidistant).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

HELP = "encode a labelled image dataset into resumable code shards (for train-gpt)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    parser.add_argument("--data", required=True, help="class folders (root/<class>/*.jpg) or .tar shards with .cls")
    parser.add_argument("--out", required=True, help="output codes directory")
    aug = parser.add_mutually_exclusive_group()
    aug.add_argument("--flip", action="store_true", help="also store the codes of the mirrored image (2 per image)")
    aug.add_argument("--ten-crop", action="store_true", help="store 10 crops per image (LlamaGen --ten-crop)")
    parser.add_argument("--crop", choices=("center", "resize"), default="center",
                        help="center: ADM centre crop (default, official); resize: whole image to S x S (tiny images)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--num-workers", type=int, default=4, help="data-loading worker processes (default 4)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cuda, cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32: strict float32, the official protocol (default); bf16: the fast inference settings "
                             "(vfmtok.tokenizer.inference.fast_encode), recorded with the extraction")
    parser.add_argument("--max-shards", type=int, default=None,
                        help="write at most this many shards per rank, then stop (re-run to continue)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _settings(args: argparse.Namespace, tok_dir: Path, num_images: int, mode: str) -> dict[str, Any]:
    from vfmtok.hub import WEIGHTS_NAME

    return {
        "tokenizer_config_sha256": _sha256(tok_dir / "config.json"),
        "tokenizer_weights_sha256": _sha256(tok_dir / WEIGHTS_NAME),
        "data": str(Path(args.data).resolve()),
        "num_images": num_images,
        "shard_size": args.shard_size,
        "augmentation": mode,
        "crop": args.crop,
        "precision": args.precision,
    }


_SETTING_DEFAULTS = {"precision": "fp32"}  # settings newer than some extractions on disk: their implied value


def _check_settings(out: Path, settings: dict[str, Any], write: bool) -> None:
    """Refuse to resume an extraction made with other settings; ``write``: record them if new (rank 0)."""
    from vfmtok.cli.main import UserError

    path = out / "extraction.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in settings if old.get(k, _SETTING_DEFAULTS.get(k)) != settings[k])
        if diff:
            raise UserError(f"{out} holds an extraction with different settings ({', '.join(diff)}); "
                            "use another --out or delete it")
        return
    if not write:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import torch

    from vfmtok.cli._outputs import removed_on_failure
    from vfmtok.cli.main import UserError
    from vfmtok.data import ImageTransform, open_image_dataset
    from vfmtok.data.tokens import (AUGMENTATIONS, MANIFEST_NAME, TEN_CROP_RANGE, codes_dtype, extract_shards,
                                    verify_shards, write_manifest)
    from vfmtok.hub import resolve_model_dir
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.training.distributed import barrier, cleanup, init_distributed

    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_shards is not None and args.max_shards < 0:
        raise UserError("--max-shards must be >= 0")
    mode = "ten-crop" if args.ten_crop else "flip" if args.flip else "none"
    info = init_distributed(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32, as the official evaluation encodes
    torch.backends.cudnn.allow_tf32 = False
    try:
        # a run that fails before its first shard leaves nothing behind (no extraction.json)
        with removed_on_failure(args.out, keep_if=_has_shards):
            tok_dir = resolve_model_dir(args.tokenizer)
            tok = VFMTokenizer.from_pretrained(tok_dir, device=info.device).eval()
            tcfg = tok.config
            size = tcfg.image_size
            load_size = int(size * TEN_CROP_RANGE) if mode == "ten-crop" else size
            dataset = open_image_dataset(args.data, ImageTransform(load_size, crop=args.crop))
            labels = dataset.labels
            if any(y < 0 for y in labels):
                raise UserError(f"{args.data}: images without class labels; extract-codes needs class folders "
                                "(root/<class>/<image>) or tar shards with .cls members")
            classes = list(getattr(dataset, "classes", [])) or [str(c) for c in range(max(labels) + 1)]
            out = Path(args.out)
            settings = _settings(args, tok_dir, len(dataset), mode)
            _check_settings(out, settings, write=info.is_main)  # every rank checks: none waits for a failed one
            barrier()
            if (out / MANIFEST_NAME).exists():
                log.info("%s is already complete", out)
                return 0
            num_tokens, vocab = tcfg.num_tokens, tcfg.vocab_size
            if args.precision == "bf16":
                from vfmtok.tokenizer.inference import fast_encode

                encode = fast_encode(tok)
            else:
                encode = tok.encode
            written = extract_shards(
                dataset, encode, out, image_size=size, num_tokens=num_tokens, vocab_size=vocab, mode=mode,
                shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.num_workers, rank=info.rank,
                world_size=info.world_size, device=info.device, max_shards=args.max_shards, progress=info.is_main,
            )
            log.info("rank %d wrote %d shard(s)", info.rank, len(written))
            barrier()
            if not info.is_main:
                return 0
            num_aug = len(AUGMENTATIONS[mode])
            try:
                shards, skipped = verify_shards(out, len(dataset), args.shard_size, num_aug, num_tokens, vocab)
            except FileNotFoundError as e:
                if args.max_shards is not None:
                    log.info("stopped after --max-shards: %s", e)
                    return 0
                raise UserError(str(e)) from None
            count = sum(s["count"] for s in shards)
            write_manifest(out, {
                "tokenizer": {"path": str(tok_dir.resolve()), "preset": tcfg.preset, "config": tcfg.to_dict(),
                              **{k: v for k, v in settings.items() if k.startswith("tokenizer_")}},
                "num_tokens": num_tokens,
                "token_grid": list(tcfg.token_grid),
                "vocab_size": vocab,
                "codes_dtype": codes_dtype(vocab).name,
                "num_classes": len(classes),
                "class_names": classes,
                "image_size": size,
                "augmentations": list(AUGMENTATIONS[mode]),
                "crop": args.crop,
                "ten_crop_load_size": load_size if mode == "ten-crop" else None,
                "data": settings["data"],
                "num_images": len(dataset),
                "num_codes": count,
                "class_counts": _class_counts(out, shards, len(classes)),
                "skipped": sorted(skipped),
                "shard_size": args.shard_size,
                "shards": shards,
            })
            log.info("extraction complete: %d images encoded, %d skipped, %d shards in %s", count, len(skipped),
                     len(shards), out)
            return 0
    finally:
        cleanup()


def _has_shards(out: Path) -> bool:
    """Finished shards are kept when an extraction fails (running the command again resumes from them)."""
    return any(out.glob("shard-*.npz"))


def _class_counts(out: Path, shards: list[dict[str, Any]], num_classes: int) -> list[int]:
    import numpy as np

    from vfmtok.data.tokens import read_shard

    counts = np.zeros(num_classes, dtype=np.int64)
    for s in shards:
        labels = read_shard(out / s["file"], mmap=True).labels
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    return counts.tolist()
