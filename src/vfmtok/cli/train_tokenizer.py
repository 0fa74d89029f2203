"""``vfmtok train-tokenizer``: train (or resume) a VFMTok tokenizer from a YAML/JSON recipe.

    vfmtok train-tokenizer --config configs/tokenizer/bundled-dinov2s-cifar10.yaml data=cifar10/train --out runs/c10
    torchrun --nproc-per-node 8 -m vfmtok.cli.main train-tokenizer --config configs/tokenizer/official.yaml \\
        data=/data/imagenet/train backbone_weights=dinov2_vitl14_reg4_pretrain.pth --out runs/official

``key=value`` overrides are applied to the recipe (values parsed as JSON); ``model.key=value`` overrides go to the
tokenizer config. A run directory that already holds a checkpoint is resumed automatically (``--config`` may then be
omitted: the run's own ``train_config.json`` is used); ``--resume`` makes a missing checkpoint an error.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

HELP = "train or resume a VFMTok tokenizer (DDP under torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="recipe file (.yaml or .json); optional when resuming --out")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. total_steps=2000 lr=2e-4 model.codebook_size=1024")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/tokenizer/<config name>)")
    parser.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N steps without saving, as if killed (tests, time-sliced jobs)")
    parser.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                        help="step, running loss and time left: a bar on a terminal, a log line every 30 s otherwise "
                        "(auto, the default), or forced")
    parser.add_argument("--no-progress", action="store_true", help="same as --progress none")


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(recipe overrides, model overrides with the ``model.`` prefix removed)."""
    from .main import UserError

    recipe, model = [], []
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected KEY=VALUE")
        (model if item.startswith("model.") else recipe).append(item[len("model."):] if item.startswith("model.")
                                                                else item)
    return recipe, model


def load_recipe(config: Path | None, overrides: list[str], out: Path | None):  # -> TokenizerTrainConfig
    """The recipe from ``config`` (or the run's ``train_config.json``) with ``overrides`` applied."""
    from ..training.tokenizer import TokenizerTrainConfig
    from .main import UserError

    if config is None:
        saved = out / "train_config.json" if out is not None else None
        if saved is None or not saved.exists():
            raise UserError("--config is required to start a new run (or pass --out of an existing run to resume)")
        config = saved
    if not config.exists():
        raise FileNotFoundError(f"config file not found: {config}")
    recipe, model = _split_overrides(overrides)
    cfg = TokenizerTrainConfig.load(config).with_overrides(recipe)
    if model:
        if cfg.model is not None:
            cfg = cfg.replace(model=cfg.model.with_overrides(model))
        else:
            cfg = cfg.replace(model_overrides=tuple(cfg.model_overrides) + tuple(model))
    return cfg


def _has_progress(out: Path) -> bool:
    """A checkpoint (resumable) or a finished feature cache (minutes of work) is kept when a run fails."""
    from ..training.checkpoint import latest_checkpoint

    return latest_checkpoint(out) is not None or (out / "feature_cache" / "meta.json").exists()


def run(args: argparse.Namespace) -> int:
    from ..training.checkpoint import latest_checkpoint
    from ..training.tokenizer import train_tokenizer
    from ._outputs import removed_on_failure
    from .main import UserError

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # one rank talks; the others only report problems
        logging.getLogger().setLevel(logging.WARNING)
    out = args.out
    if out is None:
        if args.config is None:
            raise UserError("pass --config (new run) or --out (resume an existing run)")
        out = Path("runs") / "tokenizer" / args.config.stem
    if args.resume and latest_checkpoint(out) is None:
        raise UserError(f"--resume: no checkpoint in {out}")
    cfg = load_recipe(args.config, list(args.overrides), out)
    progress = "none" if args.no_progress else args.progress
    with removed_on_failure(out, keep_if=_has_progress):  # a run that fails before its first checkpoint leaves nothing
        result = train_tokenizer(cfg, out, stop_after=args.stop_after, progress=progress)
    if rank == 0:
        m = result.metrics
        parts = [f"{result.step} steps"]
        for key, fmt in (("val/psnr", "val PSNR {:.2f} dB"), ("val/usage", "val codebook usage {:.1%}"),
                         ("train/images_per_s", "{:.1f} images/s")):
            if key in m:
                parts.append(fmt.format(m[key]))
        parts.append(f"{int(m.get('data/skipped_files', 0))} unreadable files skipped")
        where = f"model exported to {result.final}" if result.final else f"stopped; resume with --out {out}"
        print(f"train-tokenizer: {', '.join(parts)}; {where}")
    return 0
