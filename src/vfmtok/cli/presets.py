"""``vfmtok presets``: list the named model configurations (tokenizers, GPTs, frozen backbones)."""

from __future__ import annotations

import argparse

HELP = "list tokenizer, GPT and backbone presets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("all", "tokenizer", "gpt", "backbone"), default="all")


def run(args: argparse.Namespace) -> int:
    from ..backbones.factory import BACKBONE_PRESETS
    from ..generator.presets import GPT_PRESETS, count_parameters
    from ..tokenizer.presets import TOKENIZER_PRESETS

    if args.kind in ("all", "tokenizer"):
        print("tokenizer presets:")
        for name, make in TOKENIZER_PRESETS.items():
            cfg = make()
            print(f"  {name:20s} {cfg.num_tokens:4d} tokens, codebook {cfg.codebook_size} x {cfg.codebook_dim}, "
                  f"{cfg.image_size} px, backbone {cfg.backbone.name} @ {cfg.backbone.input_size}")
    if args.kind in ("all", "gpt"):
        print("GPT presets:")
        for name, cfg in GPT_PRESETS.items():
            print(f"  {name:20s} {cfg.n_layer} layers, dim {cfg.dim}, {cfg.n_head} heads, "
                  f"{count_parameters(cfg) / 1e6:.1f} M parameters (vocab {cfg.vocab_size}, {cfg.block_size} tokens)")
    if args.kind in ("all", "backbone"):
        print("backbone presets:")
        for name, cfg in BACKBONE_PRESETS.items():
            print(f"  {name:20s} {cfg.depth} blocks, width {cfg.embed_dim}, registers {cfg.num_register_tokens}, "
                  f"taps {list(cfg.taps)}, input {cfg.input_size}")
    return 0
