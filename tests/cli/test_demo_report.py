"""The demo report's tables and sentences: every number explained, percent units, no extractor names in labels, and
a CFG sentence that follows the numbers and their noise."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vfmtok.cli.demo_report import cfg_sentence, class_names, labelled_grid, samples_table, tokenizer_table

EXT = "dinov2-s14-bundled-84"


def _tok_report() -> dict:
    return {"metrics": {
        "num_images": 500, "psnr": 19.5, "ssim": 0.61, "lpips_vgg": 0.12,
        "codebook": {"usage": 0.1133, "perplexity": 40.2, "used": 58, "total": 18000, "size": 512},
        "distribution": {EXT: {"metric": f"FD_{EXT}", "extractor": EXT, "reconstruction": 30.0, "down2_up": 28.4,
                               "down4_up": 224.0, "spatial": {"metric": f"sFD_{EXT}", "reconstruction": 50.0}}}},
        "linear_probe": {"tokens": {"top1": 0.62, "num_train": 1000, "num_test": 500, "num_classes": 10}}}


def _samples(fd: float, std: float | None) -> dict:
    res = {"extractor": EXT, "num_samples": 80, "num_reference": 500, f"FD_{EXT}": fd, f"sFD_{EXT}": fd + 10,
           "precision": 0.5, "recall": 0.25}
    if std is not None:
        res[f"FD_{EXT}_bootstrap"] = {"mean": fd, "std": std, "p5": fd - std, "p95": fd + std, "resamples": 100}
    return {"results": [res]}


def test_tokenizer_table_explains_every_row_in_percent():
    t = tokenizer_table(_tok_report())
    rows = {r.metric: r for r in t.rows}
    assert rows["codebook usage"].values == ["11.3% (58 of 512)"]
    assert rows["linear probe top-1, quantized tokens"].values == ["62.0%"] and "chance 10.0%" in \
        rows["linear probe top-1, quantized tokens"].meaning
    assert "yardstick" in rows["FD, originals blurred 2x vs originals"].meaning
    assert all(r.meaning for r in t.rows)
    assert not any(EXT in r.metric or "dinov2" in r.metric.lower() for r in t.rows)  # named once, in the note
    assert "500 test images" in t.note and "not FID" in t.note


def test_samples_table_shows_the_bootstrap_spread():
    t = samples_table({"cfg-free": _samples(60.0, 2.0), "cfg-3": _samples(40.0, 1.5)},
                      {"cfg-free": 1.0, "cfg-3": 3.0})
    assert t.columns == ["no CFG", "CFG 3"]
    fd = next(r for r in t.rows if r.metric.startswith("FD"))
    assert fd.values == ["60 ± 2", "40 ± 1.5"] and "bootstrap" in fd.meaning
    assert next(r for r in t.rows if r.metric == "precision").values == ["50.0%", "50.0%"]
    assert "80 class-balanced samples" in t.note


def test_cfg_sentence_follows_the_numbers():
    scales = {"cfg-free": 1.0, "cfg-3": 3.0}
    better = cfg_sentence({"cfg-free": _samples(60.0, 2.0), "cfg-3": _samples(40.0, 1.5)}, scales)
    assert better.startswith("In this demo CFG 3 scores clearly better than sampling without guidance")
    assert "without CFG" in better  # the paper's claim, put in its place
    assert "precision (fidelity) from 50.0% to 50.0%" in better
    alike = cfg_sentence({"cfg-free": _samples(41.0, 2.0), "cfg-3": _samples(40.0, 1.5)}, scales)
    assert "score alike" in alike
    worse = cfg_sentence({"cfg-free": _samples(30.0, 1.0), "cfg-3": _samples(40.0, 1.0)}, scales)
    assert "sampling without guidance scores clearly better than CFG 3" in worse
    unknown = cfg_sentence({"cfg-free": _samples(30.0, None), "cfg-3": _samples(40.0, None)}, scales)
    assert "no bootstrap spread" in unknown
    assert cfg_sentence({"cfg-free": _samples(30.0, 1.0)}, {"cfg-free": 1.0}) == ""


def test_class_names_and_labelled_grid(tmp_path):
    for name in ("1-trouser", "0-t-shirt", "10-x", "bird"):
        (tmp_path / "data" / name).mkdir(parents=True)
    assert class_names(tmp_path / "data") == ["t-shirt", "trouser", "x", "bird"]
    images = np.zeros((6, 8, 8, 3), np.uint8)
    path = labelled_grid(images, np.array([0, 1, 0, 1, 0, 1]), ["a", "b"], 3, "title", tmp_path / "g.png")
    w, h = Image.open(path).size
    assert w > 100 and h > 50


def test_class_names_keep_prefixes_that_tell_classes_apart(tmp_path):
    for name in ("0-class", "1-class"):
        (tmp_path / name).mkdir()
    assert class_names(tmp_path) == ["0-class", "1-class"]
