"""The compression-regime CIFAR-10 experiment of issue 15 (experiments/cifar10_compression/) at toy size on CPU: the
anchor-movement measurement on a tiny tokenizer (exact displacements of a known offset change), its script end to end,
the new chains of experiments/cifar10/run.sh and the report on toy results."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXP = REPO / "experiments" / "cifar10_compression"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"cifar10_compression_{name}", EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _tiny_tokenizer(seed: int = 0):
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.tokenizer.presets import tokenizer_preset

    torch.manual_seed(seed)
    return VFMTokenizer(tokenizer_preset("tok-test")).eval()


def _images(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


# ---------------------------------------------------------------------------------------------------- anchors
def test_untrained_tokenizer_has_not_moved_and_initial_ring_is_deformable_detr() -> None:
    anchors = _module("anchors")
    tok = _tiny_tokenizer()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    m = anchors.measure(tok, x, seed=5)
    depth, n, L, M, n_lv, P, _ = m["trained"].shape
    assert (depth, n, L, M, n_lv, P) == (1, 3, 16, 4, 4, 2) and m["shapes"] == [(4, 4)] * 4
    stats = anchors.statistics(m)
    lvl = stats["layers"][0]["levels"][0]
    assert lvl["moved"]["max"] == pytest.approx(0.0, abs=1e-5)  # offsets' weights start at zero: same ring
    # head h points along angle 2 pi h / M, max |component| scaled to 1, times (point + 1): distance in cells
    thetas = torch.arange(M) * (2 * math.pi / M)
    ring = torch.stack([thetas.cos(), thetas.sin()], -1)
    norms = (ring / ring.abs().max(-1, keepdim=True)[0]).norm(dim=-1)  # (M,)
    want = float((norms[:, None] * torch.arange(1, P + 1)).mean())
    assert lvl["initial_from_anchor"]["mean"] == pytest.approx(want, rel=1e-5)
    assert lvl["trained_from_anchor"]["mean"] == pytest.approx(want, rel=1e-5)
    assert stats["num_images"] == 3 and stats["unit"].startswith("feature cells")


def test_a_known_offset_change_is_measured_in_feature_cells() -> None:
    anchors = _module("anchors")
    tok = _tiny_tokenizer()
    attn = tok.encoder.layers[0].cross_attn
    M, n_lv, P = attn.n_heads, attn.n_levels, attn.n_points
    with torch.no_grad():  # head 0, every level and point: +3 pixels (cells) in x, +4 in y -> moved by exactly 5 cells
        bias = attn.sampling_offsets.bias.view(M, n_lv, P, 2)
        bias[0, :, :, 0] += 3.0
        bias[0, :, :, 1] += 4.0
    m = anchors.measure(tok, torch.rand(2, 3, 32, 32) * 2 - 1)
    moved = anchors.cell_displacement(m["trained"], m["initial"], m["shapes"])  # (1, 2, L, M, n_lv, P)
    torch.testing.assert_close(moved[:, :, :, 0], torch.full_like(moved[:, :, :, 0], 5.0), atol=1e-4, rtol=0)
    assert float(moved[:, :, :, 1:].abs().max()) < 1e-5
    level = anchors.statistics(m)["layers"][0]["levels"][2]
    assert level["moved"]["mean"] == pytest.approx(5.0 / M, rel=1e-4)  # one head of M moved
    assert level["moved"]["max"] == pytest.approx(5.0, rel=1e-4)
    assert 0.0 < level["moved"]["weighted_mean"] <= 5.0


def test_anchor_script_writes_json_and_figures(tmp_path: Path) -> None:
    anchors = _module("anchors")
    tok = _tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    data = _images(tmp_path / "test", 6)
    out = tmp_path / "anchors"
    assert anchors.main(["--tokenizer", str(tmp_path / "tok"), "--data", str(data), "--out", str(out), "--num", "4",
                         "--show", "2"]) == 0
    res = json.loads((out / "anchors.json").read_text())
    assert res["num_images"] == 4 and res["tokens_drawn"] == anchors.default_tokens(4) and len(res["images_drawn"]) == 2
    assert {"trained_from_anchor", "initial_from_anchor", "moved"} <= set(res["layers"][0]["all_levels"])
    assert all(math.isfinite(v) for lv in res["layers"][0]["levels"] for v in lv["moved"].values())
    for fig in ("anchors-tokens.png", "anchors-displacement.png"):
        assert (out / fig).stat().st_size > 1000
    assert anchors.main(["--tokenizer", str(tmp_path / "tok"), "--data", str(data), "--out", str(out),
                         "--tokens", "99"]) == 2
