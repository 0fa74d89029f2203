"""Speculative Jacobi decoding against plain autoregressive sampling on a trained GPT (not collected by pytest).

Two measurements, each appending JSON lines to ``--out``:

* ``speed``: for each batch size and method (``ar``, and ``jacobi`` with each window), ``--calls`` calls of
  :func:`vfmtok.generator.sample` on class-balanced labels (one untimed warm-up call first): GPT forward passes per
  image (mean, min, max over images; ``passes_per_batch``: the slowest row of each call, what the batch waits for),
  tokens per forward pass, and wall-clock seconds per image of the GPT sampling alone (no image decoding), eager
  modules, fp32.
* ``fd``: ``--num`` samples per run with ``vfmtok sample`` (plain and Jacobi, for each of ``--seeds``), features
  of every set once with the bundled DINOv2-S at ``--vfm-size`` (the extractor ``vfmtok demo`` evaluates with):
  FD of each set against the reference (``--ref``: images or a statistics .npz) and between every two sets, so the
  Jacobi-vs-plain distance can be set against the plain-vs-plain one (run-to-run noise).

    python bench/jacobi.py speed --gpt DEMO/gpt/final --out jacobi.jsonl --threads 1
    python bench/jacobi.py fd --gpt DEMO/gpt/final --tokenizer DEMO/tokenizer/final --ref DEMO/data/.../train \\
        --num 5000 --window 16 --work /tmp/jacobi-fd --out jacobi.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from vfmtok.generator import GPT, balanced_labels
from vfmtok.generator.sampling import sample


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def emit(out: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


def speed(args: argparse.Namespace) -> None:
    gpt = GPT.from_pretrained(args.gpt, device=args.device).eval()
    n = gpt.num_tokens
    cases = [("ar", 1)] + [("jacobi", k) for k in args.windows]
    for batch in args.batches:
        labels = balanced_labels(batch * (args.calls + 1), gpt.config.num_classes, seed=0).view(-1, batch)
        for method, window in cases:
            kw = dict(cfg_scale=args.cfg_scale, top_k=args.top_k, temperature=args.temperature, method=method,
                      window=window, return_steps=True)
            sample(gpt, labels[-1], generator=torch.Generator(args.device).manual_seed(10_000), **kw)  # warm-up
            steps, seconds, passes = [], 0.0, []
            for call in range(args.calls):
                gen = torch.Generator(args.device).manual_seed(call)
                t0 = time.perf_counter()
                _, s = sample(gpt, labels[call], generator=gen, **kw)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - t0
                steps.append(s.cpu())
                passes.append(int(s.max()))  # the batch runs until its slowest row is done
            steps = torch.cat(steps).float()
            emit(args.out, {
                "bench": "jacobi-speed", "gpt": str(args.gpt), "tokens": n, "batch": batch, "method": method,
                "window": window if method == "jacobi" else None, "cfg_scale": args.cfg_scale, "top_k": args.top_k,
                "temperature": args.temperature, "images": int(steps.numel()),
                "steps_per_image": round(steps.mean().item(), 3), "steps_min": int(steps.min()),
                "steps_max": int(steps.max()), "tokens_per_step": round(n / steps.mean().item(), 3),
                "passes_per_batch": sum(passes) / len(passes),
                "s_per_image": seconds / steps.numel(), "device": args.device, **machine(),
            })


def fd(args: argparse.Namespace) -> None:
    from vfmtok.cli.main import main
    from vfmtok.evaluation.features import build_extractor, summarize
    from vfmtok.evaluation.fid import ReferenceStats, fd_between, is_stats_file
    from vfmtok.evaluation.images import iter_sample_images
    from vfmtok.evaluation.sample_eval import reference_from_summary

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--gpt", args.gpt, "--tokenizer", args.tokenizer, "--num", str(args.num), "--cfg-scale",
              str(args.cfg_scale), "--top-k", str(args.top_k), "--temperature", str(args.temperature),
              "--image-size", "0", "--no-png", "--batch-size", str(args.batch_size), "--device", args.device]
    runs = {}
    for seed in args.seeds:
        for method in ("ar", "jacobi"):
            name = f"{method}-seed{seed}"
            out = work / name
            if not (out / "samples.npz").exists():  # re-running reuses finished sample sets
                extra = ["--method", method, "--window", str(args.window)] if method == "jacobi" else []
                if main(["sample", *common, "--seed", str(seed), "--out", str(out), *extra]) != 0:
                    raise SystemExit(f"sampling {name} failed")
            runs[name] = json.loads((out / "sample_config.json").read_text())

    # features once per set (the demo's evaluation features: bundled DINOv2-S at --vfm-size), then every FD
    extractor = build_extractor("dinov2-bundled", device=args.device, vfm_size=args.vfm_size)

    def stats(images: Path, cache: Path) -> ReferenceStats:
        if not cache.exists():
            summary = summarize(extractor, iter_sample_images(images, 100))
            reference_from_summary(summary, meta={"source": str(images)}).save(cache)
        return ReferenceStats.load(cache)

    ref = ReferenceStats.load(args.ref) if is_stats_file(args.ref) else stats(Path(args.ref), work / "ref-stats.npz")
    sets = {name: stats(work / name / "samples.npz", work / name / "stats.npz") for name in runs}
    names = list(sets)
    for i, name in enumerate(names):
        for against in ["reference", *names[:i]]:
            other = ref if against == "reference" else sets[against]
            emit(args.out, {
                "bench": "jacobi-fd", "gpt": str(args.gpt), "run": name, "against": against, "num": args.num,
                "window": args.window if name.startswith("jacobi") else None, "cfg_scale": args.cfg_scale,
                "fd": fd_between(sets[name].pool, other.pool), "extractor": extractor.name,
                "reference_images": ref.pool.n, "steps_per_image": runs[name]["steps_per_image"],
                "images_per_s": runs[name]["images_per_s"], "vfm_size": args.vfm_size, **machine(),
            })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("speed", "fd"):
        p = sub.add_parser(name)
        p.add_argument("--gpt", required=True)
        p.add_argument("--out", required=True, type=Path, help="JSON lines, appended")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        p.add_argument("--cfg-scale", type=float, default=1.0)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--temperature", type=float, default=1.0)
    p = sub.choices["speed"]
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--calls", type=int, default=8, help="timed calls per case")
    p = sub.choices["fd"]
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--ref", required=True, help="reference images (folder / .npz) or statistics .npz")
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--vfm-size", type=int, default=84)
    p.add_argument("--work", required=True, help="sample sets and reports (re-running reuses them)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (speed if args.what == "speed" else fd)(args)


if __name__ == "__main__":
    main()
