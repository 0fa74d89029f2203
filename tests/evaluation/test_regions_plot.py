"""Token-region pictures: token choice, the outside-the-image count and the figure's panels and captions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vfmtok.evaluation.regions_plot import choose_tokens, draw_token_regions, level_names, token_stats  # noqa: E402


@pytest.mark.parametrize("grid,n", [(6, 6), (16, 6), (8, 4), (3, 8), (2, 6), (6, 1)])
def test_choose_tokens_spread_over_the_grid(grid, n):
    tokens = choose_tokens(grid, n)
    assert len(tokens) == min(n, grid * grid)
    assert tokens == sorted(set(tokens)) and all(0 <= t < grid * grid for t in tokens)
    if n > 1 and grid > 2:
        rows = {t // grid for t in tokens}
        cols = {t % grid for t in tokens}
        assert len(rows) >= 2 and len(cols) >= 2  # bands of anchors across the grid, not one corner


def test_token_stats_counts_points_and_weight_outside():
    loc = np.array([[0.5, 0.5], [-0.1, 0.5], [0.5, 1.2], [1.0, 0.0]])
    w = np.array([0.5, 0.25, 0.125, 0.125])
    st = token_stats(loc, w)
    assert st == {"outside": 2, "points": 4, "outside_weight": pytest.approx(0.375)}


def test_figure_panels_and_captions():
    rng = np.random.default_rng(0)
    grid, heads, levels, points = 4, 2, 3, 2
    num = grid * grid
    ref = np.stack(np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid), -1).reshape(num, 2)
    loc = ref[:, None, None, None, :] + rng.normal(0, 0.3, (num, heads, levels, points, 2))  # some fall outside
    w = rng.random((num, heads, levels, points))
    w /= w.sum((2, 3), keepdims=True)  # each head's weights sum to 1
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tokens = [1, 6, 11]
    fig = draw_token_regions(image, loc, w, ref, tokens, layer=1, num_layers=2, grid=grid,
                             level_names=["a", "b", "c"], title="x.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("all 16 anchors")
    for k, t in enumerate(tokens):
        st = token_stats(loc[t].reshape(-1, 2), w[t].reshape(-1))
        assert titles[1 + k].startswith(f"token {t} (anchor row {t // grid + 1}, col {t % grid + 1})")
        assert f"{st['outside']} of {heads * levels * points} points outside" in titles[1 + k]
        assert f"({100 * st['outside_weight']:.0f}% of the weight)" in titles[1 + k]
    assert "encoder layer 2 of 2" in fig._suptitle.get_text() and "x.png" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == ["a", "b", "c"] and "anchor (reference point)" in labels
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_levels_at_the_same_points_are_said_so():
    ref = np.array([[0.5, 0.5]])
    loc = np.broadcast_to(np.array([0.4, 0.6]), (1, 2, 3, 2, 2)).copy()  # every level samples the same place
    w = np.full((1, 2, 3, 2), 1 / 6)
    fig = draw_token_regions(np.zeros((8, 8, 3), np.uint8), loc, w, ref, [0], layer=0, num_layers=1, grid=1)
    assert "all 3 levels at the same points" in fig.axes[1].get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_level_names_count_blocks_from_one():
    from vfmtok.tokenizer.presets import tokenizer_preset

    assert level_names(tokenizer_preset("official").backbone) == [
        "level 1: block 6 of 24", "level 2: block 12 of 24", "level 3: block 18 of 24", "level 4: block 24 of 24"]
    assert level_names(object()) == []
