"""``vfmtok regions``: draw where each token's deformable attention samples the image.

The image is ADM-centre-cropped to the tokenizer's size and encoded; for one encoder layer (default: the last) every
token's sampling points (all heads, levels and points) are drawn over the image, coloured by token and sized by their
attention weight. The left panel shows the fixed anchor reference points in the same colours. Needs a tokenizer with
``encoder_type="vfm"`` and ``quantization="deformable"``. Rendering uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot each token's deformable sampling points (coloured by token, sized by attention weight) over an image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="image file")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--layer", type=int, default=-1, help="encoder layer to show (default -1: the last)")
    parser.add_argument("--tokens", help="comma-separated token indices to show (default: all tokens)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _parse_tokens(spec: str | None, num_tokens: int) -> list[int]:
    from vfmtok.cli.main import UserError

    if not spec:
        return list(range(num_tokens))
    try:
        tokens = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--tokens: expected comma-separated integers, got {spec!r}") from None
    bad = [t for t in tokens if not 0 <= t < num_tokens]
    if bad or not tokens:
        raise UserError(f"--tokens: indices must be in [0, {num_tokens}), got {spec!r}")
    return tokens


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vfmtok.cli.main import UserError
    from vfmtok.cli.reconstruct import read_image, warn_outside_domain
    from vfmtok.data.transforms import center_crop_arr, pil_to_tensor
    from vfmtok.tokenizer.model import VFMTokenizer

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png file, got {out}")
    image = read_image(args.image)
    tok = VFMTokenizer.from_pretrained(args.tokenizer, device=args.device)
    cfg = tok.config
    warn_outside_domain(args.tokenizer, cfg.image_size, {args.image: image})  # random tokenizer, far-off image size
    if cfg.encoder_type != "vfm":
        raise UserError(f"{args.tokenizer}: encoder_type={cfg.encoder_type!r} encodes with a CNN, which has no "
                        "deformable sampling points (regions needs a VFMTok tokenizer)")
    if cfg.quantization != "deformable":
        raise UserError(f"{args.tokenizer}: quantization={cfg.quantization!r} has no deformable sampling points")
    if not -cfg.enc_depth <= args.layer < cfg.enc_depth:
        raise UserError(f"--layer {args.layer} out of range for {cfg.enc_depth} encoder layers")
    tokens = _parse_tokens(args.tokens, cfg.num_tokens)
    crop = center_crop_arr(image, cfg.image_size)
    x = pil_to_tensor(crop)[None].to(args.device)
    reg = tok.regions(x)
    s = cfg.image_size
    loc = reg.locations[args.layer, 0, tokens].reshape(len(tokens), -1, 2).cpu().numpy() * s  # (T, M*Lv*P, 2) px
    w = reg.weights[args.layer, 0, tokens].reshape(len(tokens), -1).cpu().numpy()  # (T, M*Lv*P)
    ref = reg.reference_points[tokens].cpu().numpy() * s  # (T, 2)

    # token colours: a fixed shuffle of a continuous colormap, so that neighbouring anchors differ
    perm = np.random.default_rng(0).permutation(cfg.num_tokens)
    colours = plt.get_cmap("gist_rainbow")(perm[tokens] / max(cfg.num_tokens - 1, 1))  # (T, 4)
    sizes = 2.0 + 60.0 * w / max(float(w.max()), 1e-12)

    arr = np.asarray(crop)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.3))
    axes[0].imshow(arr)
    axes[0].scatter(ref[:, 0], ref[:, 1], s=18, c=colours, edgecolors="black", linewidths=0.4)
    axes[0].set_title(f"{len(tokens)} anchor reference points")
    axes[1].imshow(arr)
    pts = loc.reshape(-1, 2)
    axes[1].scatter(pts[:, 0], pts[:, 1], s=sizes.reshape(-1), c=np.repeat(colours, loc.shape[1], axis=0),
                    alpha=0.6, linewidths=0)
    layer = args.layer % cfg.enc_depth
    axes[1].set_title(f"encoder layer {layer}: sampling points (size = attention weight)")
    for ax in axes:
        ax.set_xlim(-0.5, s - 0.5)
        ax.set_ylim(s - 0.5, -0.5)
        ax.axis("off")
    fig.suptitle(f"{Path(args.image).name} - {cfg.enc_heads} heads x {tok.encoder.num_levels} levels x "
                 f"{cfg.enc_points} points per token")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    inside = float(((loc >= 0) & (loc <= s)).all(-1).mean())
    print(f"wrote {out}: {len(tokens)} tokens, layer {layer}, {loc.shape[1]} points per token, "
          f"{100 * inside:.1f}% of points inside the image")
    return 0
