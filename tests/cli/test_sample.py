"""``vfmtok sample`` end to end with a tiny GPT and the ``tok-test`` tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.cli.main import main
from vfmtok.generator import GPT, gpt_preset


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    presets = pytest.importorskip("vfmtok.tokenizer.presets")
    from vfmtok.tokenizer.model import VFMTokenizer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tok = VFMTokenizer(presets.tokenizer_preset("tok-test")).eval()
    tok.save_pretrained(root / "tok")
    cfg = tok.config
    gpt = GPT(gpt_preset("gpt-test", vocab_size=cfg.codebook_size, block_size=cfg.num_tokens, num_classes=10))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    gpt.save_pretrained(root / "gpt")
    return root, tok, gpt


def _run(root, out, *extra) -> int:
    return main(["sample", "--gpt", str(root / "gpt"), "--tokenizer", str(root / "tok"), "--out", str(out),
                 "--device", "cpu", *extra])


def test_sample_writes_pngs_grid_and_adm_npz(models, tmp_path):
    root, tok, gpt = models
    out = tmp_path / "s"
    args = ("--num", "7", "--batch-size", "3", "--cfg-scale", "2", "--cfg-schedule", "linear", "--top-k", "20",
            "--classes", "1", "4", "--seed", "5", "--image-size", "24")
    assert _run(root, out, *args) == 0
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (7, 24, 24, 3) and data["arr_0"].dtype == np.uint8
    assert data["codes"].shape == (7, tok.config.num_tokens)
    labels = data["labels"]
    assert set(labels.tolist()) == {1, 4} and sorted(np.bincount(labels)[[1, 4]].tolist()) == [3, 4]
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(7)]
    assert np.array_equal(np.asarray(Image.open(pngs[4])), data["arr_0"][4])
    assert Image.open(out / "grid.png").size == (4 * 24, 2 * 24)  # one row per class, up to 4 samples each
    assert json.loads((out / "sample_config.json").read_text())["cfg_schedule"] == "linear"
    assert not list(out.glob("*.tmp"))
    # the stored codes decode to the stored images (official gFID conversion), and re-running reproduces them
    codes = torch.from_numpy(data["codes"])
    decoded = np.concatenate([tok.decode_uint8(codes[i : i + 3], size=24).numpy() for i in (0, 3, 6)])  # CLI batches
    assert np.array_equal(decoded, data["arr_0"])
    assert _run(root, tmp_path / "again", *args, "--no-png") == 0
    again = np.load(tmp_path / "again" / "samples.npz")
    assert np.array_equal(again["codes"], data["codes"]) and not (tmp_path / "again" / "images").exists()


def test_sample_native_size_and_balanced_default_classes(models, tmp_path):
    root, tok, _ = models
    assert _run(root, tmp_path / "n", "--num", "20", "--batch-size", "20", "--image-size", "0", "--no-png") == 0
    data = np.load(tmp_path / "n" / "samples.npz")
    size = tok.config.image_size
    assert data["arr_0"].shape == (20, size, size, 3)
    assert np.bincount(data["labels"], minlength=10).tolist() == [2] * 10


def test_sample_user_errors(models, tmp_path, capsys):
    root, tok, _ = models
    bad = GPT(gpt_preset("gpt-test", vocab_size=tok.config.codebook_size + 1, block_size=tok.config.num_tokens))
    bad.save_pretrained(tmp_path / "bad")
    code = main(["sample", "--gpt", str(tmp_path / "bad"), "--tokenizer", str(root / "tok"), "--num", "2",
                 "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert code == 2 and "do not match" in capsys.readouterr().err
    assert _run(root, tmp_path / "y", "--num", "2", "--classes", "12") == 2
    assert "classes must lie" in capsys.readouterr().err
    assert _run(root, tmp_path / "z", "--num", "0") == 2
    assert _run(root, tmp_path / "w", "--num", "2", "--method", "jacobi", "--window", "0") == 2
    assert "--window" in capsys.readouterr().err


def test_sample_jacobi_reports_steps_per_image(models, tmp_path, capsys):
    root, tok, _ = models
    out = tmp_path / "j"
    assert _run(root, out, "--num", "6", "--batch-size", "4", "--method", "jacobi", "--window", "8", "--cfg-scale",
                "2", "--image-size", "0", "--no-png") == 0
    report = json.loads((out / "sample_config.json").read_text())
    n = tok.config.num_tokens
    assert report["method"] == "jacobi" and report["tokens_per_image"] == n
    assert 1 <= report["steps_min"] <= report["steps_per_image"] <= report["steps_max"] <= n
    assert "GPT forward passes per image" in capsys.readouterr().out
    data = np.load(out / "samples.npz")
    assert data["codes"].shape == (6, n) and data["arr_0"].shape[0] == 6
    assert _run(root, tmp_path / "ar", "--num", "2", "--image-size", "0", "--no-png") == 0
    assert json.loads((tmp_path / "ar" / "sample_config.json").read_text())["steps_per_image"] == n
