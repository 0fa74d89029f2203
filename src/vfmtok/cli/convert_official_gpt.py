"""``vfmtok convert-official-gpt``: an official LlamaGen/VFMTok GPT checkpoint -> a vfmtok model directory."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "convert an official LlamaGen/VFMTok c2i GPT checkpoint (.pt, EMA weights) to a vfmtok model directory"

log = logging.getLogger(__name__)

# Keys that only an official LlamaGen ModelArgs dict has (ours has none of them).
_OFFICIAL_ONLY_KEYS = {"model_args", "model_type", "cls_token_num", "caption_dim", "max_seq_len", "max_batch_size",
                       "n_kv_head"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="official checkpoint, e.g. GPT-B-300e.pt ('ema' entry first)")
    parser.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    parser.add_argument("--config", help="official gpt_config.json / ModelArgs JSON, or a vfmtok GPT config.json; "
                        "default: inferred from the checkpoint's shapes and training args")
    parser.add_argument("--block-size", type=int, help="number of image tokens (square grid); default: from the "
                        "checkpoint's training args, else 256")
    parser.add_argument("--n-head", type=int, help="attention heads, for sizes that match no official preset "
                        "(the weights do not store it); default head_dim 64")


def _read_config(path: str) -> Any:
    from vfmtok.config import ConfigError
    from vfmtok.convert.llamagen_gpt import gpt_config_from_official_json
    from vfmtok.generator.gpt import GPTConfig

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    if _OFFICIAL_ONLY_KEYS & set(data):
        return gpt_config_from_official_json(data)
    data.pop("_class", None)
    return GPTConfig.from_dict(data, _where=str(file))


def run(args: argparse.Namespace) -> int:
    from vfmtok.cli.main import UserError
    from vfmtok.convert.llamagen_gpt import (
        config_from_training_args,
        convert_official_gpt,
        infer_gpt_config,
        load_official_gpt_checkpoint,
    )
    from vfmtok.generator.gpt import GPT
    from vfmtok.generator.presets import count_parameters

    if args.config and args.n_head:
        raise UserError("--n-head conflicts with --config (the config already fixes the head count)")
    state, meta = load_official_gpt_checkpoint(args.ckpt)
    overrides = {"block_size": args.block_size} if args.block_size else {}
    if args.config:
        config = _read_config(args.config).replace(**overrides)
    else:
        if args.n_head:
            overrides["n_head"] = args.n_head
        config = infer_gpt_config(state, **{**config_from_training_args(meta["args"]), **overrides})
    model = GPT(config)
    model.load_pretrained_state_dict(convert_official_gpt(state, config), where=args.ckpt)
    out = model.save_pretrained(args.out)
    print(
        f"converted {args.ckpt} (entry {meta['entry'] or 'raw state dict'}) -> {out}: "
        f"{config.n_layer} layers, dim {config.dim}, {config.n_head} heads, vocab {config.vocab_size}, "
        f"{config.block_size} tokens, {config.num_classes} classes, {count_parameters(config) / 1e6:.1f}M parameters"
    )
    return 0
