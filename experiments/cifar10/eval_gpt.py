"""Sample FD of one GPT run at every kept checkpoint, without and with classifier-free guidance (issue 8).

One process per chain: the tokenizer, the GPT and the feature extractors are loaded once. For every checkpoint of
``--run`` (its EMA weights by default) and every ``--cfg`` scale, ``--num-samples`` class-balanced samples are drawn
(``vfmtok.generator.sample``; batch ``i`` uses ``torch.Generator(device).manual_seed(seed + i)``, so every checkpoint
and scale sees the same labels and random streams), decoded by the tokenizer at its own resolution with the official
uint8 conversion, and their features compared with the reference statistics of ``--ref`` (written once per run by
``prepare.py reference``): one FD per extractor. The validation losses the run logged at that step are copied in.

Writes ``--out`` (JSON; progress is kept in ``<out>.partial`` so a killed evaluation resumes where it stopped) and,
for the last checkpoint, ``grid-cfg<scale>.png`` in ``--grid-dir``: 10 samples per class, one row per class.

    python experiments/cifar10/eval_gpt.py --run CHAIN/gpt --tokenizer CHAIN/tok/final --ref OUT/ref \\
        --out CHAIN/gpt_eval.json --grid-dir CHAIN --num-samples 5000 --cfg 1.0 2.0 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import REFERENCE_JSON, write_json

GRID_PER_CLASS = 10
# images per feature-extractor call: EfficientNet-Lite0 sees 224 px inputs; the padded 96 x 113 x 113 input of one of
# its depthwise convolutions takes 4.6 GiB per 1000 images (the allocation that failed when four evaluations shared
# the H100)
FEATURE_CHUNK = 250


def kept_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint of a GPT run, by step."""
    from vfmtok.training.checkpoint import Checkpoint

    found = [Checkpoint(p, int(p.name.split("-")[1])) for p in (run / "checkpoints").glob("step-*")
             if (p / "state.pt").exists() and (p / "config.json").exists()]
    return [(c.step, c.path) for c in sorted(found, key=lambda c: c.step)]


def logged_val_losses(run: Path) -> dict[int, dict[str, float]]:
    """step -> {"val_loss": ..., "val_loss_ema": ...} from the run's metrics.jsonl."""
    from vfmtok.training.tracker import read_metrics

    out: dict[int, dict[str, float]] = {}
    for r in read_metrics(run):
        vals = {k: float(r[k]) for k in ("val_loss", "val_loss_ema") if k in r}
        if vals:
            out.setdefault(int(r["step"]), {}).update(vals)
    return out


def load_references(ref_dir: Path) -> dict[str, Any]:
    """extractor name -> :class:`ReferenceStats` from ``prepare.py reference``'s output."""
    from vfmtok.evaluation.fid import ReferenceStats

    index = ref_dir / REFERENCE_JSON
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: run `prepare.py reference` first")
    meta = json.loads(index.read_text())
    return {name: ReferenceStats.load(ref_dir / e["file"]) for name, e in meta["extractors"].items()}


def build_extractors(refs: dict[str, Any], device: torch.device, vfm_size: int) -> dict[str, Any]:
    from vfmtok.evaluation.features import build_extractor, extractor_kind

    out = {}
    for name in refs:
        extractor = build_extractor(extractor_kind(name), device=device, vfm_size=vfm_size)
        if extractor.name != name:
            raise ValueError(f"reference statistics were computed with {name!r}, this run builds {extractor.name!r} "
                             "(pass the same --vfm-size as prepare.py)")
        out[name] = extractor
    return out


@torch.inference_mode()
def evaluate_setting(gpt: Any, tok: Any, extractors: dict[str, Any], refs: dict[str, Any], labels: torch.Tensor,
                     num: int, cfg_scale: float, args: argparse.Namespace, keep: int) -> tuple[dict[str, Any], list]:
    """Sample the first ``num`` of ``labels`` at ``cfg_scale``.

    ``labels`` (M,) int64 with M a multiple of ``args.batch_size``: every batch has the same number of rows, so the
    compiled decoder is built once (the samples beyond ``num`` are drawn and dropped). Returns (entry with one FD per
    extractor, [(uint8 (b, S, S, 3), labels (b,))] holding at least the first ``keep`` samples).
    """
    from vfmtok.evaluation.features import FeatureCollector
    from vfmtok.evaluation.fid import fd_between
    from vfmtok.generator import sample

    device = args.device
    collectors = {name: FeatureCollector(e, keep_logits=False) for name, e in extractors.items()}
    kept: list = []
    t_sample = t_feats = 0.0
    for i, start in enumerate(range(0, num, args.batch_size)):
        t0 = time.perf_counter()
        y = labels[start : start + args.batch_size].to(device)
        gen = torch.Generator(device).manual_seed(args.seed + i)
        codes = sample(gpt, y, cfg_scale=cfg_scale, generator=gen, compile=args.compile)
        images = tok.decode_uint8(codes[: num - start], size=None)  # (b, S, S, 3) uint8, the official conversion
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        for c in collectors.values():
            for j in range(0, images.shape[0], FEATURE_CHUNK):
                c.update(images[j : j + FEATURE_CHUNK])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_sample, t_feats = t_sample + t1 - t0, t_feats + time.perf_counter() - t1
        if sum(len(k) for k, _ in kept) < keep:
            kept.append((images.cpu().numpy(), y[: images.shape[0]].cpu().numpy()))
    fd = {name: fd_between(c.summary().pool, refs[name].pool) for name, c in collectors.items()}
    entry = {"cfg_scale": cfg_scale, "fd": fd, "num_samples": num, "sample_seconds": round(t_sample, 2),
             "feature_seconds": round(t_feats, 2), "images_per_s": num / max(t_sample, 1e-9)}
    return entry, kept


def save_grid(kept: list, num_classes: int, path: Path) -> None:
    """``GRID_PER_CLASS`` samples of every class, one row per class (the ``vfmtok sample`` grid layout)."""
    import numpy as np

    from vfmtok.cli.sample import _save_grid  # the grid writer of `vfmtok sample`: one row per class

    images = np.concatenate([k for k, _ in kept])
    labels = np.concatenate([y for _, y in kept])
    _save_grid(images, labels, GRID_PER_CLASS * num_classes, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="GPT run directory (checkpoints/, metrics.jsonl)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer model directory")
    parser.add_argument("--ref", type=Path, required=True, help="folder written by `prepare.py reference`")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--grid-dir", type=Path, default=None, help="where grid-cfg<scale>.png go (default: --out's)")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0], help="guidance scales (1.0: none)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="checkpoint weights to sample from")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--vfm-size", type=int, default=112, help="must match prepare.py reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="compiled static-shape decoding (CUDA graphs on GPU); auto: on for CUDA only")
    args = parser.parse_args(argv)
    if args.num_samples < 2 or args.batch_size < 1:
        parser.error("--num-samples must be >= 2 and --batch-size >= 1")
    args.device = torch.device(args.device)
    args.compile = args.compile == "on" or (args.compile == "auto" and args.device.type == "cuda")

    from vfmtok.generator import GPT, GPTConfig, balanced_labels
    from vfmtok.hub import load_state_dict
    from vfmtok.tokenizer.model import VFMTokenizer

    ckpts = kept_checkpoints(args.run)
    if not ckpts:
        print(f"eval_gpt: no checkpoints in {args.run / 'checkpoints'}", file=sys.stderr)
        return 2
    refs = load_references(args.ref)
    extractors = build_extractors(refs, args.device, args.vfm_size)
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device).eval()
    gpt = GPT(GPTConfig.load(ckpts[-1][1] / "config.json")).to(args.device).eval()
    num_classes = gpt.config.num_classes
    padded = -(-args.num_samples // args.batch_size) * args.batch_size
    labels = balanced_labels(padded, num_classes, args.seed)  # its first N are balanced_labels(N): prefix-stable
    val = logged_val_losses(args.run)
    partial = args.out.with_name(args.out.name + ".partial")
    done = json.loads(partial.read_text()) if partial.exists() else {}
    settings = {"num_samples": args.num_samples, "weights": args.weights, "seed": args.seed,
                "cfg_scales": args.cfg, "vfm_size": args.vfm_size}
    entries = [e for e in done.get("entries", []) if done.get("settings") == settings]
    grid_dir = args.grid_dir or args.out.parent
    grid_dir.mkdir(parents=True, exist_ok=True)
    weights_file = "ema.safetensors" if args.weights == "ema" else "model.safetensors"
    # scale outside, checkpoints inside: the rows per decoding batch (x2 under CFG) change once per scale, so the
    # compiled decoder is built once per scale; new weights are loaded in place, which it reads (and refreshes).
    for scale in args.cfg:
        for step, path in ckpts:
            want_entry = not any(e["step"] == step and e["cfg_scale"] == scale for e in entries)
            grid = grid_dir / f"grid-cfg{scale}.png"
            want_grid = step == ckpts[-1][0] and not grid.exists()
            if not want_entry and not want_grid:
                continue
            if not (path / weights_file).exists():
                raise FileNotFoundError(f"{path / weights_file} not found (--weights {args.weights})")
            gpt.load_state_dict(load_state_dict(path / weights_file, device=args.device))
            entry, kept = evaluate_setting(gpt, tok, extractors, refs, labels, args.num_samples, scale, args,
                                           keep=GRID_PER_CLASS * num_classes if want_grid else 0)
            if want_grid:
                save_grid(kept, num_classes, grid)
            if want_entry:
                entry = {"step": step, **entry, **val.get(step, {})}
                entries.append(entry)
                write_json(partial, {"settings": settings, "entries": entries})
            print(f"step {step} cfg {scale}: " + ", ".join(f"FD_{k} {v:.3f}" for k, v in entry["fd"].items())
                  + f" ({entry['images_per_s']:.0f} samples/s)", flush=True)  # report.py reads these lines
            del kept
            if args.device.type == "cuda":  # hand the setting's cached blocks back (other chains share the GPU)
                torch.cuda.empty_cache()
    entries.sort(key=lambda e: (e["step"], e["cfg_scale"]))
    result = {
        "run": str(args.run), "tokenizer": str(args.tokenizer), **settings,
        "checkpoint_steps": [s for s, _ in ckpts], "num_classes": num_classes,
        "ema_decay": _train_value(args.run, "ema_decay"), "total_steps": _train_value(args.run, "total_steps"),
        "reference": {name: {"num_images": r.pool.n} for name, r in refs.items()},
        "device": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "entries": entries,
    }
    write_json(args.out, result)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}")
    return 0


def _train_value(run: Path, key: str) -> Any:
    path = run / "train_config.json"
    return json.loads(path.read_text()).get(key) if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
