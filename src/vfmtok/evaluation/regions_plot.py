"""Pictures of where a few tokens' deformable attention samples the image (``vfmtok regions``, the demo report).

Each token of a VFMTok encoder layer has ``heads x levels x points`` sampling points, each with an attention weight
(for one token and head the weights sum to 1 over levels and points). Drawing all of them for every token gives
thousands of dots that nobody can read, so a figure shows a handful of tokens, one panel each: the image, the token's
anchor (its fixed reference point, a white star), and its sampling points coloured by VFM level and sized by
attention weight. A first panel shows every anchor, with the chosen ones numbered. Points outside the image read the
features' zero padding (``grid_sample`` semantics), so their weight is spent on nothing; each panel's caption counts
them and their share of the token's attention. The view extends a quarter of the image beyond each edge so that
nearby outside points are visible; the ones further out are counted, not drawn.

Layers are numbered from 1 in every label (``layer 2 of 2`` is the last of a two-layer encoder).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# one colour and one marker shape per VFM level: levels often sample the same place (always at initialisation), and
# distinct outlines stay visible where filled dots of one size would hide each other
LEVEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
MARGIN = 0.25  # the view extends this fraction of the image beyond each edge


def _rgba(colour: str, alpha: float) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(colour, alpha)


def choose_tokens(grid: int, n: int = 6) -> list[int]:
    """``n`` tokens spread over a ``grid x grid`` anchor grid (row-major token indices): the centres of equal bands
    of anchor rows (two when they suffice) and columns.

    Returns:
        ``min(n, grid * grid)`` sorted distinct indices in [0, grid * grid).
    """
    n = max(1, min(n, grid * grid))
    rows = 1 if n == 1 else min(grid, max(2, math.ceil(n / grid)))
    cols = min(grid, math.ceil(n / rows))
    pick = lambda k: [int((i + 0.5) * grid / k) for i in range(k)]  # noqa: E731 - centres of k equal bands
    tokens = list(dict.fromkeys(r * grid + c for r in pick(rows) for c in pick(cols)))
    rest = [t for t in range(grid * grid) if t not in tokens]
    tokens += rest[:: max(1, len(rest) // max(1, n - len(tokens)))][: max(0, n - len(tokens))]
    return sorted(tokens[:n])


def level_names(backbone_config: Any) -> list[str]:
    """Legend label per tapped VFM level of a :class:`~vfmtok.backbones.base.BackboneConfig`, e.g.
    ``"level 1: block 3 of 12"`` (blocks counted from 1); empty when the config names no taps."""
    taps, depth = getattr(backbone_config, "taps", None), getattr(backbone_config, "depth", None)
    if not taps:
        return []
    of = f" of {depth}" if depth else ""
    return [f"level {i + 1}: block {t + 1}{of}" for i, t in enumerate(taps)]


def token_stats(locations: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Points of one token outside the image.

    Args:
        locations: (N, 2) normalised (x, y); [0, 1] spans the image.
        weights: (N,) attention weights of those points (summing to the number of heads).

    Returns:
        ``{"outside": count, "points": N, "outside_weight": share of the weight outside, in [0, 1]}``.
    """
    out = ((locations < 0) | (locations > 1)).any(-1)
    total = float(weights.sum())
    return {"outside": int(out.sum()), "points": int(out.size),
            "outside_weight": float(weights[out].sum()) / total if total > 0 else 0.0}


def draw_token_regions(
    image: np.ndarray,
    locations: np.ndarray,
    weights: np.ndarray,
    reference_points: np.ndarray,
    tokens: Sequence[int],
    layer: int,
    num_layers: int,
    grid: int,
    level_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """The token-region figure of one image and one encoder layer.

    Args:
        image: (S, S, 3) uint8, the image as the tokenizer saw it.
        locations: (L, M, n_levels, P, 2) normalised (x, y) sampling locations of every token of this layer.
        weights: (L, M, n_levels, P) attention weights.
        reference_points: (L, 2) normalised anchor centres.
        tokens: the token indices to draw (one panel each; 4-8 read well).
        layer: 0-based encoder layer index (labelled 1-based).
        num_layers: encoder depth.
        grid: anchor grid side (token ``t`` is anchor row ``t // grid``, column ``t % grid``).
        level_names: one legend label per level (default ``level 1`` ...).
        title: first line of the figure title (e.g. the image name).

    Returns:
        a matplotlib Figure (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    s = image.shape[0]
    _, heads, n_levels, n_points, _ = locations.shape
    level_names = list(level_names or [f"level {i + 1}" for i in range(n_levels)])
    lo, hi = -MARGIN * s, (1 + MARGIN) * s
    panels = 1 + len(tokens)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.8 * rows + 1.4), squeeze=False,
                             layout="constrained")
    flat = list(axes.reshape(-1))
    for ax in flat[panels:]:
        ax.axis("off")

    def show(ax: Any) -> None:
        ax.set_facecolor("#d9d9d9")  # the margin outside the image
        ax.imshow(image, extent=(0, s, s, 0), interpolation="nearest" if s < 128 else "antialiased")
        ax.add_patch(Rectangle((0, 0), s, s, fill=False, edgecolor="black", linewidth=0.8))
        ax.set_xlim(lo, hi)
        ax.set_ylim(hi, lo)
        ax.set_xticks([])
        ax.set_yticks([])

    ref = reference_points * s  # (L, 2) px
    ax = flat[0]
    show(ax)
    ax.scatter(ref[:, 0], ref[:, 1], s=10, c="white", edgecolors="black", linewidths=0.5)
    for k, t in enumerate(tokens):
        ax.scatter(ref[t, 0], ref[t, 1], s=160, marker="*", c="white", edgecolors="black", linewidths=0.8)
        ax.annotate(str(t), (ref[t, 0], ref[t, 1]), xytext=(5, 4), textcoords="offset points", fontsize=9,
                    fontweight="bold", color="black", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "lw": 0})
    ax.set_title(f"all {len(ref)} anchors; numbered: shown", fontsize=9)

    area = 600.0  # marker area (pt^2) of a point holding all of a head's weight
    for k, t in enumerate(tokens):
        ax = flat[1 + k]
        show(ax)
        loc = locations[t] * s  # (M, n_levels, P, 2) px
        w = weights[t]  # (M, n_levels, P)
        for lv in range(n_levels):
            pts = loc[:, lv].reshape(-1, 2)
            colour = LEVEL_COLOURS[lv % len(LEVEL_COLOURS)]
            ax.scatter(pts[:, 0], pts[:, 1], s=area * w[:, lv].reshape(-1),
                       marker=LEVEL_MARKERS[lv % len(LEVEL_MARKERS)], facecolors=_rgba(colour, 0.3), edgecolors=colour,
                       linewidths=1.3)
        ax.scatter(ref[t, 0], ref[t, 1], s=220, marker="*", c="white", edgecolors="black", linewidths=1.0, zorder=5)
        st = token_stats(locations[t].reshape(-1, 2), w.reshape(-1))
        beyond = int((((loc.reshape(-1, 2) < lo) | (loc.reshape(-1, 2) > hi)).any(-1)).sum())
        r, c = divmod(t, grid)
        caption = (f"token {t} (anchor row {r + 1}, col {c + 1})\n{st['outside']} of {st['points']} points outside "
                   f"({100 * st['outside_weight']:.0f}% of the weight)")
        notes = [f"{beyond} beyond the view"] if beyond else []
        if n_levels > 1 and np.allclose(loc, loc[:, :1], atol=1e-3 * s):
            notes.append(f"all {n_levels} levels at the same points")
        if notes:
            caption += "\n" + "; ".join(notes)
        ax.set_title(caption, fontsize=8.5)

    handles = [Line2D([], [], marker=LEVEL_MARKERS[i % len(LEVEL_MARKERS)], linestyle="", markersize=8,
                      markerfacecolor=_rgba(LEVEL_COLOURS[i % len(LEVEL_COLOURS)], 0.3), markeredgewidth=1.3,
                      markeredgecolor=LEVEL_COLOURS[i % len(LEVEL_COLOURS)], label=name)
               for i, name in enumerate(level_names)]
    handles.append(Line2D([], [], marker="*", linestyle="", markersize=12, markerfacecolor="white",
                          markeredgecolor="black", label="anchor (reference point)"))
    for wt in (0.05, 0.25):
        handles.append(Line2D([], [], marker="o", linestyle="", color="grey", markersize=math.sqrt(area * wt),
                              label=f"weight {wt:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8.5, frameon=False)
    head = f"{title} - " if title else ""
    fig.suptitle(f"{head}encoder layer {layer + 1} of {num_layers}: where {len(tokens)} tokens sample the VFM "
                 "features\n"
                 f"{heads} heads x {n_levels} levels x {n_points} points per token; dot area = attention weight "
                 f"(each head's weights sum to 1); grey = outside the image", fontsize=10)
    return fig
