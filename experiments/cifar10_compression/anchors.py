"""Where the trained VFMTok tokenizer (a) samples, and how far its sampling locations moved from the initial grid.

    python experiments/cifar10_compression/anchors.py --tokenizer CHAIN/tok/final --data DATA/test --out CHAIN/anchors \\
        [--num 1000] [--show 6] [--tokens 18,21,42,45,27] [--seed 0] [--device cuda]

For ``--num`` test images (evenly spread over the sorted file list, so over the classes of an ImageFolder) the
encoder's deformable sampling is read out (:meth:`VFMTokenizer.regions`): for every layer, token, head, level and
point a location in [0, 1]^2 of the feature map and an attention weight. Three displacements are measured, in
feature cells of each level (one cell = one DINOv2 patch: 1/16 of the map for the 16 x 16 levels at 224 px):

* ``trained_from_anchor``: |trained location - the token's anchor (reference point)|;
* ``initial_from_anchor``: the same for the initialisation (Deformable-DETR: zero offset weights, so every token of
  every image samples the same fixed ring of points around its anchor; computed with a freshly initialised tokenizer of
  the same config on the same features, seed ``--seed``);
* ``moved``: |trained location - initial location| of the same (layer, token, head, level, point): how far training
  moved each sampling point.

Each is summarised per level and layer (all points; and attention-weighted mean, i.e. where the weight actually
lies) as mean, median, 90th / 99th percentile and max, plus the share of points outside the map. Writes
``OUT/anchors.json`` and two figures: ``OUT/anchors-tokens.png`` (``--show`` test images, the anchors of ``--tokens``
and their last-layer sampling points, sized by weight, initial points as open circles) and
``OUT/anchors-displacement.png`` (histograms of ``moved`` and ``trained_from_anchor`` per level).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}


def default_tokens(grid: int) -> list[int]:
    """Five tokens spread over a g x g anchor grid: the four at (g/4, g/4)... (3g/4, 3g/4) and one near the centre."""
    a, b, c = grid // 4, (3 * grid) // 4, grid // 2
    cells = [(a, a), (a, b), (b, a), (b, b), (c, c)]
    return list(dict.fromkeys(r * grid + col for r, col in cells))


def list_images(root: Path, num: int) -> list[Path]:
    """``num`` image files of ``root`` (recursive), evenly spaced over the sorted list (all when fewer)."""
    from vfmtok.data.datasets import IMAGE_EXTENSIONS

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"--data {root}: no image files found")
    if len(files) <= num:
        return files
    idx = np.linspace(0, len(files) - 1, num).round().astype(int)
    return [files[i] for i in idx]


def load_images(paths: list[Path], size: int) -> Tensor:
    """(N, 3, size, size) float32 in [-1, 1]; images of another size are resized whole (bicubic), as ``crop=resize``."""
    from PIL import Image

    from vfmtok.data.transforms import pil_to_tensor

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out.append(pil_to_tensor(im))
    return torch.stack(out)


def cell_displacement(a: Tensor, b: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """|a - b| in feature cells of each level.

    Args:
        a, b: (..., n_levels, P, 2) normalised (x, y) locations (broadcastable).
        shapes: (h_l, w_l) of every level.
    Returns:
        (..., n_levels, P) Euclidean distance with x scaled by w_l and y by h_l.
    """
    scale = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=a.device)  # (n_levels, 2)
    return ((a - b) * scale[:, None, :]).norm(dim=-1)


def summarise(d: Tensor, w: Tensor | None = None) -> dict[str, float]:
    """Mean / quantiles / max of the distances ``d`` (any shape); with weights ``w`` (same shape) also their
    weighted mean."""
    flat = d.reshape(-1).double()
    out = {"mean": float(flat.mean()), **{k: float(flat.quantile(q)) if flat.numel() <= 16_000_000 else
                                          float(np.quantile(flat.cpu().numpy(), q)) for k, q in QUANTILES.items()},
           "max": float(flat.max())}
    if w is not None:
        ww = w.reshape(-1).double()
        out["weighted_mean"] = float((flat * ww).sum() / ww.sum())
    return out


@torch.no_grad()
def measure(tok, x: Tensor, seed: int = 0, batch: int = 250) -> dict[str, Any]:
    """Sampling of ``tok`` (trained, ``quantization="deformable"``) and of a freshly initialised tokenizer of the same
    config on images ``x`` (N, 3, S, S) in [-1, 1].

    Returns a dict with ``trained`` / ``initial`` locations (depth, N, L, M, n_levels, P, 2) and ``weights`` (depth,
    N, L, M, n_levels, P) of the trained model (CPU float32), ``reference`` (L, 2), ``shapes`` [(h, w)] per level.
    """
    from vfmtok.tokenizer.model import VFMTokenizer

    cfg = tok.config
    if cfg.encoder_type != "vfm" or cfg.quantization != "deformable":
        raise ValueError(f"anchors need a VFMTok tokenizer with deformable sampling, got encoder_type="
                         f"{cfg.encoder_type!r}, quantization={cfg.quantization!r}")
    dev = next(tok.parameters()).device
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        fresh = VFMTokenizer(cfg).encoder.to(dev).eval()
    trained, initial, weights, shapes = [], [], [], None
    for i in range(0, x.shape[0], batch):
        levels = tok.backbone_features(x[i : i + batch].to(dev)).levels
        shapes = [tuple(lvl.shape[-2:]) for lvl in levels]
        reg = tok.encoder.regions(levels)
        trained.append(reg.locations.float().cpu())
        weights.append(reg.weights.float().cpu())
        initial.append(fresh.regions(levels).locations.float().cpu())
    return {"trained": torch.cat(trained, 1), "initial": torch.cat(initial, 1), "weights": torch.cat(weights, 1),
            "reference": tok.encoder.reference_points.float().cpu(), "shapes": shapes}


def statistics(m: dict[str, Any]) -> dict[str, Any]:
    """Per layer and level: the three displacements of the module docstring (feature cells) and the share of trained
    points outside the map."""
    ref = m["reference"][None, None, :, None, None, None, :]  # (1, 1, L, 1, 1, 1, 2)
    shapes = m["shapes"]
    dists = {"trained_from_anchor": cell_displacement(m["trained"], ref, shapes),
             "initial_from_anchor": cell_displacement(m["initial"], ref, shapes),
             "moved": cell_displacement(m["trained"], m["initial"], shapes)}  # each (depth, N, L, M, n_lv, P)
    w = m["weights"]
    depth, n_img, n_tok, heads, n_lv, pts = w.shape
    outside = ((m["trained"] < 0) | (m["trained"] > 1)).any(-1)
    layers = []
    for layer in range(depth):
        per_level = []
        for lv in range(n_lv):
            entry = {"level": lv, "shape": list(shapes[lv]),
                     "outside_share": float(outside[layer, :, :, :, lv].float().mean())}
            for k, d in dists.items():
                entry[k] = summarise(d[layer, :, :, :, lv], w[layer, :, :, :, lv] if k != "initial_from_anchor"
                                     else None)
            per_level.append(entry)
        all_levels = {k: summarise(d[layer], w[layer] if k != "initial_from_anchor" else None)
                      for k, d in dists.items()}
        layers.append({"layer": layer, "levels": per_level, "all_levels": all_levels})
    return {"num_images": n_img, "num_tokens": n_tok, "heads": heads, "levels": n_lv, "points": pts,
            "depth": depth, "unit": "feature cells (DINOv2 patches) of each level", "layers": layers}


def plot_tokens(x: Tensor, m: dict[str, Any], tokens: list[int], show: int, path: Path, title: str) -> Path:
    """``show`` images; per chosen token its anchor (star), last-layer trained points (filled, size ~ weight) and
    initial points (open circles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = x.shape[-1]
    n = min(show, x.shape[0])
    colours = plt.get_cmap("tab10")(np.arange(len(tokens)) % 10)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.3), squeeze=False)
    for j, ax in enumerate(axes[0]):
        img = ((x[j].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        ax.imshow(img, extent=(0, s, s, 0), interpolation="bicubic")
        for c, k in zip(colours, tokens):
            loc = m["trained"][-1, j, k].reshape(-1, 2).numpy() * s
            ini = m["initial"][-1, j, k].reshape(-1, 2).numpy() * s
            wt = m["weights"][-1, j, k].reshape(-1).numpy()
            ax.scatter(ini[:, 0], ini[:, 1], s=6, facecolors="none", edgecolors=[c], linewidths=0.4, alpha=0.5)
            ax.scatter(loc[:, 0], loc[:, 1], s=4 + 120 * wt / max(float(wt.max()), 1e-12), color=c, alpha=0.7,
                       linewidths=0)
            r = m["reference"][k].numpy() * s
            ax.scatter([r[0]], [r[1]], marker="*", s=70, color=c, edgecolors="black", linewidths=0.6)
        ax.set_xlim(-0.1 * s, 1.1 * s)
        ax.set_ylim(1.1 * s, -0.1 * s)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_displacement(m: dict[str, Any], path: Path, title: str) -> Path:
    """Histograms (all layers, heads, points, images, tokens) per level of ``moved`` and ``trained_from_anchor``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = m["reference"][None, None, :, None, None, None, :]
    moved = cell_displacement(m["trained"], m["initial"], m["shapes"])
    from_anchor = cell_displacement(m["trained"], ref, m["shapes"])
    initial = cell_displacement(m["initial"], ref, m["shapes"])
    n_lv = moved.shape[-2]
    fig, axes = plt.subplots(1, n_lv, figsize=(3.2 * n_lv, 3.0), squeeze=False, sharey=True)
    top = float(max(moved.max(), from_anchor.max(), 1e-6))
    bins = np.linspace(0, top, 41)
    for lv, ax in enumerate(axes[0]):
        for d, label, colour in ((moved, "moved from init", "tab:red"), (from_anchor, "trained: from anchor",
                                                                         "tab:blue"),
                                 (initial, "initial: from anchor", "grey")):
            vals = d[..., lv, :].reshape(-1).numpy()
            ax.hist(vals, bins=bins, histtype="step", density=True, color=colour, label=label)
        ax.set_title(f"level {lv} ({m['shapes'][lv][0]} x {m['shapes'][lv][1]})", fontsize=8)
        ax.set_xlabel("feature cells", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="trained tokenizer directory (tok/final)")
    ap.add_argument("--data", type=Path, required=True, help="test images (ImageFolder or flat folder)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--num", type=int, default=1000, help="images measured")
    ap.add_argument("--show", type=int, default=6, help="images drawn in anchors-tokens.png")
    ap.add_argument("--tokens", default="", help="comma-separated token indices drawn (default: five spread out)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised reference tokenizer")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from vfmtok.tokenizer.model import VFMTokenizer

    if args.num < 1 or args.show < 0:
        print("anchors: --num must be >= 1 and --show >= 0", file=sys.stderr)
        return 2
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device).eval()
    cfg = tok.config
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()] or default_tokens(cfg.anchor_grid)
    except ValueError:
        print(f"anchors: --tokens: expected comma-separated integers, got {args.tokens!r}", file=sys.stderr)
        return 2
    if any(not 0 <= t < cfg.num_tokens for t in tokens):
        print(f"anchors: --tokens must lie in [0, {cfg.num_tokens}), got {tokens}", file=sys.stderr)
        return 2
    paths = list_images(args.data, args.num)
    x = load_images(paths, cfg.image_size)
    m = measure(tok, x, seed=args.seed)
    stats = statistics(m)
    last = stats["layers"][-1]["all_levels"]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"tokenizer": str(args.tokenizer), "data": str(args.data), "seed": args.seed, "tokens_drawn": tokens,
              "images_drawn": [str(p.relative_to(args.data)) for p in paths[: args.show]], **stats}
    (args.out / "anchors.json").write_text(json.dumps(result, indent=1) + "\n")
    head = (f"{len(paths)} test images, {stats['num_tokens']} tokens x {stats['heads']} heads x {stats['levels']} "
            f"levels x {stats['points']} points")
    plot_tokens(x, m, tokens, args.show, args.out / "anchors-tokens.png",
                f"last encoder layer: anchors (stars), trained sampling points (filled, size ~ weight), initial "
                f"points (open); tokens {tokens}")
    plot_displacement(m, args.out / "anchors-displacement.png", f"sampling-point displacement, all layers; {head}")
    print(f"anchors: {head}; last layer: moved from init mean {last['moved']['mean']:.2f} / p90 "
          f"{last['moved']['p90']:.2f} cells, trained from anchor mean {last['trained_from_anchor']['mean']:.2f} "
          f"(initial {last['initial_from_anchor']['mean']:.2f}) cells; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
