"""``vfmtok eval-samples``: score generated samples against a reference set or reference statistics."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "evaluate generated samples (.npz or image folder) against a reference: FID / FD, sFID, IS, precision/recall"

log = logging.getLogger(__name__)


# kept in sync with vfmtok.evaluation.features.EXTRACTOR_CHOICES (not imported: --help must not import torch)
EXTRACTOR_CHOICES = ("inception", "dinov2-bundled", "efficientnet-lite0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", help="samples: .npz with a uint8 (N, H, W, 3) array (arr_0) or a folder of images")
    parser.add_argument("--ref", required=True,
                        help="reference: images (.npz / folder) or a statistics .npz written by --save-ref-stats")
    parser.add_argument("--fid-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid release); enables FID / sFID / IS")
    parser.add_argument("--extractor", action="append", choices=EXTRACTOR_CHOICES, default=None,
                        help="feature extractor(s); default: inception with --fid-weights, else dinov2-bundled")
    parser.add_argument("--vfm-size", type=int, default=224,
                        help="input size of the bundled DINOv2-S extractor (multiple of 14; default 224)")
    parser.add_argument("--num", type=int, default=None, help="use the first N samples (default: all)")
    parser.add_argument("--num-ref", type=int, default=None, help="use the first N reference images (default: all)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pr-features", type=int, default=50000,
                        help="at most this many features per set enter precision/recall (default 50000)")
    parser.add_argument("--fd-method", choices=("eigh", "sqrtm"), default="eigh")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="also report the FD's spread over N bootstrap resamples of the samples (0: off)")
    parser.add_argument("--save-ref-stats", default=None,
                        help="write the reference statistics (with features for precision/recall) to this .npz "
                             "(one file per extractor: NAME.<extractor>.npz when several are used)")
    parser.add_argument("--out", required=True, help="report.json (a report.md is written next to it)")


def _check_positive(name: str, value: int | None) -> None:
    from .main import UserError

    if value is not None and value < 1:
        raise UserError(f"{name} must be positive, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.features import build_extractor, extractor_kind, summarize
    from ..evaluation.fid import ReferenceStats, is_stats_file
    from ..evaluation.images import SkipCounter, iter_sample_images
    from ..evaluation.sample_eval import evaluate_samples, format_samples_report, reference_from_summary
    from .main import UserError

    for name in ("num", "num_ref", "batch_size", "pr_features"):
        _check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.bootstrap == 1 or args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (off) or at least 2, got {args.bootstrap}")
    samples, ref = Path(args.samples), Path(args.ref)
    for p in (samples, ref):
        if not p.exists():
            raise FileNotFoundError(f"not found: {p}")
    ref_stats = ReferenceStats.load(ref) if is_stats_file(ref) else None
    if ref_stats is not None:
        try:
            kind = extractor_kind(ref_stats.extractor)
        except ValueError as e:
            raise UserError(str(e)) from None
        if args.extractor and args.extractor != [kind]:
            raise UserError(f"{ref} holds {ref_stats.extractor!r} statistics; they only serve --extractor {kind}")
        kinds = [kind]
    else:
        kinds = list(dict.fromkeys(args.extractor or (["inception"] if args.fid_weights else ["dinov2-bundled"])))

    results, skipped = [], {"samples": 0, "reference": 0}
    for kind in kinds:
        extractor = build_extractor(kind, device=args.device, fid_weights=args.fid_weights, vfm_size=args.vfm_size)
        log.info("extracting %s features of %s", extractor.name, samples)
        counter = SkipCounter()
        try:
            summary = summarize(
                extractor, iter_sample_images(samples, args.batch_size, args.num, counter), keep_feats=args.pr_features
            )
        except ValueError as e:
            raise UserError(str(e) if str(e).startswith(str(samples)) else f"{samples}: {e}") from None
        skipped["samples"] = counter.skipped
        reference = ref_stats
        if reference is None:
            counter = SkipCounter()
            try:
                ref_summary = summarize(
                    extractor, iter_sample_images(ref, args.batch_size, args.num_ref, counter),
                    keep_feats=args.pr_features,
                )
            except ValueError as e:
                raise UserError(str(e) if str(e).startswith(str(ref)) else f"{ref}: {e}") from None
            skipped["reference"] = counter.skipped
            reference = reference_from_summary(ref_summary, meta={"source": str(ref), "images": "uint8 as stored"})
            if args.save_ref_stats:
                target = Path(args.save_ref_stats)
                if len(kinds) > 1:
                    target = target.with_name(f"{target.stem}.{kind}.npz")
                reference.save(target)
                log.info("saved reference statistics to %s", target)
        try:
            results.append(evaluate_samples(summary, reference, extractor, fd_method=args.fd_method,
                                            bootstrap=args.bootstrap))
        except ValueError as e:
            raise UserError(str(e)) from None

    report = {"samples": str(samples), "reference": str(ref), "skipped_unreadable": skipped, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(format_samples_report(report))
    for res in results:
        log.info("%s", {k: v for k, v in res.items() if k != "warnings"})
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
