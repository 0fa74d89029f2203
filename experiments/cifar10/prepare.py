"""Run-time helpers of the CIFAR-10 experiment (issue 8), called by ``run.sh``.

``reference``: once per run, the FD reference statistics of the CIFAR-10 test split for every extractor of the
experiment (bundled DINOv2-S/14 at ``--vfm-size`` and EfficientNet-Lite0), saved in the ``eval-samples
--save-ref-stats`` format (:class:`vfmtok.evaluation.fid.ReferenceStats`) and shared by all chains; the FD of
``--floor-num`` real *training* images against them (the value a perfect generator would get with that many
samples); and ``machine.json`` (GPU, torch, the run's settings)::

    python experiments/cifar10/prepare.py reference --data DATA --out OUT/ref --machine OUT/machine.json

``tokenizer-info``: parameter counts and the recipe of one trained tokenizer, for the report::

    python experiments/cifar10/prepare.py tokenizer-info --tokenizer CHAIN/tok/final --run CHAIN/tok --out JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# environment variables of run.sh recorded in machine.json
SETTINGS = ("CHAINS", "PARALLEL", "DEVICE", "TOK_CONFIG", "CNN_CONFIG", "TOK_STEPS", "TOK_BATCH", "TOK_WARMUP",
            "TOK_NUM_VAL", "TOK_EMA", "TOK_EXTRA", "GPT_CONFIG", "GPT_STEPS", "GPT_CKPTS", "GPT_EVALS", "GPT_EMA", "GPT_WARMUP",
            "GPT_EXTRA", "GPT_EVAL_WEIGHTS", "NUM_SAMPLES", "SAMPLE_BATCH", "CFG_SCALES", "EVAL_NUM", "EVAL_BATCH",
            "PROBE_NUM", "VFM_SIZE", "LPIPS", "WORKERS", "THREADS", "DEADLINE", "FLOOR_NUM", "PYTORCH_CUDA_ALLOC_CONF")
REFERENCE_JSON = "reference.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the experiment: accelerator, library versions, CPU count, date and run.sh's settings."""
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {k: os.environ[k] for k in SETTINGS if k in os.environ},
    }
    if device.type == "cuda":
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def _extractors(device: torch.device, vfm_size: int) -> list:
    from vfmtok.evaluation.features import build_extractor

    return [build_extractor("dinov2-bundled", device=device, vfm_size=vfm_size),
            build_extractor("efficientnet-lite0", device=device)]


def _collect(extractors: list, root: Path, image_size: int, num: int | None, batch_size: int, workers: int) -> list:
    from vfmtok.evaluation.features import FeatureCollector
    from vfmtok.evaluation.images import iter_eval_batches, open_eval_dataset

    collectors = [FeatureCollector(e, keep_logits=False) for e in extractors]
    for batch in iter_eval_batches(open_eval_dataset(root, image_size), batch_size, num, workers):
        for c in collectors:
            c.update(batch.u8)
    return [c.summary() for c in collectors]


def reference(args: argparse.Namespace) -> int:
    from vfmtok.evaluation.fid import ReferenceStats, fd_between

    device = torch.device(args.device)
    if args.machine:
        write_json(args.machine, machine_info(device))
    t0 = time.perf_counter()
    extractors = _extractors(device, args.vfm_size)
    with torch.inference_mode():
        test = _collect(extractors, args.data / "test", args.image_size, None, args.batch_size, args.workers)
        floor = _collect(extractors, args.data / "train", args.image_size, args.floor_num, args.batch_size,
                         args.workers) if args.floor_num else []
    out: dict[str, Any] = {"data": str(args.data / "test"), "image_size": args.image_size, "vfm_size": args.vfm_size,
                           "extractors": {}, "floor": {}}
    for i, summary in enumerate(test):
        meta = {"source": str(args.data / "test"), "images": f"uint8 at {args.image_size} px as stored (JPEG)"}
        path = args.out / f"{summary.extractor}.npz"
        ReferenceStats(summary.extractor, summary.pool, summary.spatial, None, meta).save(path)
        out["extractors"][summary.extractor] = {"file": path.name, "num_images": summary.pool.n}
        if floor:
            out["floor"][summary.extractor] = fd_between(floor[i].pool, summary.pool)
            out["floor_num_images"] = floor[i].pool.n
    out["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out / REFERENCE_JSON, out)  # written last: its presence means the statistics are complete
    print(f"reference statistics of {out['extractors']} in {args.out} ({out['seconds']} s); "
          f"real-data floor {out['floor']}")
    return 0


def tokenizer_info(args: argparse.Namespace) -> int:
    from vfmtok.tokenizer.model import VFMTokenizer

    tok = VFMTokenizer.from_pretrained(args.tokenizer)
    total = sum(p.numel() for p in tok.parameters())
    trainable = tok.num_trainable_params()
    cfg = tok.config
    recipe = json.loads((args.run / "train_config.json").read_text()) if (args.run / "train_config.json").exists() \
        else {}
    info = {
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "config": {k: getattr(cfg, k) for k in ("preset", "image_size", "dim", "quantization", "anchor_grid",
                                                 "codebook_size", "codebook_dim", "enc_depth", "dec_depth")
                   if hasattr(cfg, k)},
        "backbone": cfg.backbone.name,
        "encoder_type": getattr(cfg, "encoder_type", "vfm"),
        "num_tokens": cfg.num_tokens,
        "recipe": {k: recipe[k] for k in ("batch_size", "total_steps", "lr", "warmup_steps", "semantic_weight",
                                          "lpips_weight", "hflip", "cache_features", "ema_decay", "seed") if k in recipe},
    }
    write_json(args.out, info)
    print(f"{args.tokenizer}: {trainable / 1e6:.2f} M trainable parameters")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reference", help="reference statistics of the test split + machine.json")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and test/")
    p.add_argument("--out", type=Path, required=True, help="folder for <extractor>.npz and reference.json")
    p.add_argument("--machine", type=Path, default=None, help="also write machine.json here")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--vfm-size", type=int, default=112)
    p.add_argument("--floor-num", type=int, default=5000, help="real training images for the FD floor (0: none)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=reference)
    p = sub.add_parser("tokenizer-info", help="parameter counts and recipe of a trained tokenizer")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer model directory (run/final)")
    p.add_argument("--run", type=Path, required=True, help="its training run directory (train_config.json)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=tokenizer_info)
    args = parser.parse_args(argv)
    data = getattr(args, "data", None)
    if data is not None and not all((data / split).is_dir() for split in ("train", "test")):
        print(f"prepare: --data {data}: expected train/ and test/ class folders", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
