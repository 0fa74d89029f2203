"""``vfmtok regions``: draw where a few tokens' deformable attention samples the image.

The image is ADM-centre-cropped to the tokenizer's size and encoded. For one encoder layer (default: the last) a few
tokens spread over the anchor grid (``--num-tokens``, or the ones ``--tokens`` names) get one panel each: the anchor,
and every sampling point (all heads, levels and points) coloured by VFM level and sized by its attention weight, with
the points outside the image counted. Drawing: :func:`vfmtok.evaluation.regions_plot.draw_token_regions`. Needs a
tokenizer with ``encoder_type="vfm"`` and ``quantization="deformable"``; rendering uses matplotlib's Agg backend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot where a few tokens' deformable attention samples an image (points sized by attention weight)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="image file")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--layer", type=int, default=-1,
                        help="encoder layer to show, counted from 1 (default -1: the last; -2 the one before)")
    parser.add_argument("--tokens", help="comma-separated token indices to show (row-major on the anchor grid)")
    parser.add_argument("--num-tokens", type=int, default=6,
                        help="without --tokens: this many tokens spread over the anchor grid (default 6)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _parse_tokens(spec: str | None, num_tokens: int, grid: int, count: int) -> list[int]:
    from vfmtok.cli.main import UserError
    from vfmtok.evaluation.regions_plot import choose_tokens

    if not spec:
        if count < 1:
            raise UserError(f"--num-tokens must be at least 1, got {count}")
        return choose_tokens(grid, count)
    try:
        tokens = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--tokens: expected comma-separated integers, got {spec!r}") from None
    bad = [t for t in tokens if not 0 <= t < num_tokens]
    if bad or not tokens:
        raise UserError(f"--tokens: indices must be in [0, {num_tokens}), got {spec!r}")
    return list(dict.fromkeys(tokens))


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vfmtok.cli.main import UserError
    from vfmtok.cli.reconstruct import read_image, warn_outside_domain
    from vfmtok.data.transforms import center_crop_arr, pil_to_tensor
    from vfmtok.evaluation.regions_plot import draw_token_regions, level_names, token_stats
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
    if not 1 <= args.layer <= cfg.enc_depth and not -cfg.enc_depth <= args.layer <= -1:
        raise UserError(f"--layer {args.layer} out of range: the encoder has {cfg.enc_depth} layers "
                        f"(1..{cfg.enc_depth}, or -1 for the last)")
    layer = args.layer - 1 if args.layer > 0 else args.layer % cfg.enc_depth  # 0-based
    tokens = _parse_tokens(args.tokens, cfg.num_tokens, cfg.anchor_grid, args.num_tokens)
    crop = center_crop_arr(image, cfg.image_size)
    x = pil_to_tensor(crop)[None].to(args.device)
    reg = tok.regions(x)
    loc = reg.locations[layer, 0].cpu().numpy()  # (L, M, n_levels, P, 2) normalised (x, y)
    w = reg.weights[layer, 0].cpu().numpy()  # (L, M, n_levels, P)
    fig = draw_token_regions(np.asarray(crop), loc, w, reg.reference_points.cpu().numpy(), tokens, layer,
                             cfg.enc_depth, cfg.anchor_grid, level_names(cfg.backbone), title=Path(args.image).name)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    stats = token_stats(loc[tokens].reshape(-1, 2), w[tokens].reshape(-1))
    print(f"wrote {out}: tokens {','.join(map(str, tokens))} of {cfg.num_tokens}, encoder layer {layer + 1} of "
          f"{cfg.enc_depth}; {stats['outside']} of {stats['points']} of their sampling points outside the image "
          f"({100 * stats['outside_weight']:.0f}% of their attention weight)")
    return 0
