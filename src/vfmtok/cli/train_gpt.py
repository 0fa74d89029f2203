"""``vfmtok train-gpt``: train the class-conditional GPT on pre-extracted codes (``vfmtok extract-codes``).

``--config`` is a YAML or JSON recipe (``configs/gpt/*.yaml``, fields of
:class:`vfmtok.training.generator.GPTTrainConfig`); ``key=value`` arguments override it (values parsed as JSON,
e.g. ``total_steps=2000 betas=[0.9,0.95] model_overrides='["n_layer=6"]'``). Running the same command again resumes
from the run's last checkpoint, bit-identically; a finished run is left as is. Multi-GPU: start it with
``torchrun --nproc-per-node N -m vfmtok.cli.main train-gpt ...`` (``strategy=ddp`` or ``strategy=fsdp``).

The run directory holds ``train_config.json`` (the resolved recipe), ``metrics.jsonl`` and ``tb/`` (train loss,
validation loss, lr, tokens/s), ``checkpoints/``, ``samples/`` (decoded grids when ``tokenizer`` is set) and, at the
end, ``final/``: the EMA weights as a model directory for ``vfmtok sample --gpt <run>/final``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train the class-conditional GPT on extracted codes (resumable; torchrun for multi-GPU)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training recipe, YAML or JSON (e.g. configs/gpt/test.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. total_steps=100")
    parser.add_argument("--out", default=None,
                        help="run directory (default runs/gpt-<config name>); resumed when present")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cuda, cpu")
    parser.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                        help="step, running loss and time left: a bar on a terminal, a log line every 30 s otherwise "
                        "(auto, the default), or forced")
    parser.add_argument("--no-progress", action="store_true", help="same as --progress none")


def run(args: argparse.Namespace) -> int:
    from vfmtok.cli._outputs import removed_on_failure
    from vfmtok.cli.main import UserError
    from vfmtok.training.checkpoint import latest_checkpoint
    from vfmtok.training.distributed import cleanup
    from vfmtok.training.generator import GPTTrainConfig, train_gpt

    config_path = Path(args.config)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file not found: {config_path}")
    cfg = GPTTrainConfig.load(config_path)
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    if not cfg.codes:
        raise UserError("the recipe has no codes directory: pass codes=PATH (from `vfmtok extract-codes`)")
    for name in ("codes", "val_codes", "tokenizer"):
        path = getattr(cfg, name)
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{name} directory not found: {path}")
    out = Path(args.out) if args.out else Path("runs") / f"gpt-{config_path.stem}"
    try:
        # a run that fails before its first checkpoint leaves nothing behind
        with removed_on_failure(out, keep_if=lambda p: latest_checkpoint(p) is not None):
            result = train_gpt(cfg, out, device=args.device,
                               progress="none" if args.no_progress else args.progress)
    finally:
        cleanup()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("train_loss", "val_loss",
                                                                                   "val_loss_ema"))
    print(f"trained {result.step} steps{': ' + summary if summary else ''}; model: {result.final}")
    return 0
