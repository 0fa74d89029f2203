"""``vfmtok convert-official``: an official VFMTok tokenizer checkpoint + DINOv2 weights -> a vfmtok model directory.

Example (the released model)::

    vfmtok convert-official --tokenizer vfmtok-tokenizer.pt --dinov2 dinov2_vitl14_reg4_pretrain.pth --out vfmtok-l

Without ``--config`` the released architecture is assumed (``configs/vit_transformer.yaml``, VQ-16, DINOv2-L/14-reg4
at 336). ``--config`` takes the official hyper-parameters as JSON (the fixture's ``tokenizer_config.json``) or the
official YAML (``vit_transformer.yaml``); ``--dinov2-config`` describes a non-standard DINOv2 (``dinov2_config.json``).
The ``ema`` entry of the checkpoint is used (the released weights), falling back to ``model`` / ``state_dict``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "convert an official VFMTok tokenizer checkpoint (+ DINOv2 weights) to a vfmtok model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="official tokenizer checkpoint, e.g. vfmtok-tokenizer.pt")
    parser.add_argument("--dinov2", required=True, help="official DINOv2 weights, e.g. dinov2_vitl14_reg4_pretrain.pth")
    parser.add_argument("--config", help="official tokenizer hyper-parameters (.json or vit_transformer.yaml); "
                        "default: the released architecture")
    parser.add_argument("--dinov2-config", help="DINOv2 hyper-parameters (dinov2_config.json); default: from --config")
    parser.add_argument("--entry", choices=("ema", "model", "state_dict"),
                        help="checkpoint entry to convert (default: 'ema', else 'model', else 'state_dict')")
    parser.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")


def _read_mapping(path: str) -> dict[str, Any]:
    from vfmtok.config import ConfigError

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(file.read_text())
        else:
            data = json.loads(file.read_text())
    except Exception as e:  # noqa: BLE001 - any parse error is reported with the file name
        raise ConfigError(f"{file}: cannot parse ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    return data


def run(args: argparse.Namespace) -> int:
    from vfmtok.backbones.factory import load_official_dinov2
    from vfmtok.convert.official_vfmtok import (
        config_from_official_json,
        convert_official_tokenizer,
        load_official_checkpoint,
    )
    from vfmtok.hub import WEIGHTS_NAME, save_state_dict, write_training_record

    tok_json = _read_mapping(args.config) if args.config else None
    dino_json = _read_mapping(args.dinov2_config) if args.dinov2_config else None
    config = config_from_official_json(tok_json, dino_json)
    src = load_official_checkpoint(args.tokenizer, entry=args.entry)
    dinov2 = load_official_dinov2(args.dinov2)
    # The converter checks every key and shape against the model built from `config` (meta device), which is
    # exactly what a strict load checks, so the weights are written without materialising the model.
    state = convert_official_tokenizer(src, config, backbone_state_dict=dinov2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, out / WEIGHTS_NAME)
    config.save(out)
    write_training_record(out, {"trained": True, "source": f"official VFMTok checkpoint {args.tokenizer}",
                                "data": "ImageNet-1k (the official release)", "image_size": config.image_size})
    n_train = sum(v.numel() for k, v in state.items() if not k.startswith("backbone."))
    n_bb = sum(v.numel() for k, v in state.items() if k.startswith("backbone."))
    print(
        f"converted {args.tokenizer} + {args.dinov2} -> {out}: {config.num_tokens} tokens, codebook "
        f"{config.codebook_size} x {config.codebook_dim}, {config.image_size} px, "
        f"{n_train / 1e6:.2f}M tokenizer + {n_bb / 1e6:.2f}M frozen backbone parameters"
    )
    return 0
