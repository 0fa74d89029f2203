"""``vfmtok extract-codes`` with the tiny ``tok-test`` tokenizer: codes, manifest, kill + resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.cli.main import main
from vfmtok.data import ImageTransform
from vfmtok.data.tokens import CodeDataset, read_manifest, read_shard, shard_path
from vfmtok.tokenizer.model import VFMTokenizer
from vfmtok.tokenizer.presets import tokenizer_preset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok")
    VFMTokenizer(tokenizer_preset("tok-test")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cow"):
        (root / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "bee" / "1.png").write_bytes(b"\x89PNG broken")  # dataset index 4
    return root


def _extract(tokenizer_dir, data_dir, out, *extra):
    return main(["extract-codes", "--tokenizer", str(tokenizer_dir), "--data", str(data_dir), "--out", str(out),
                 "--shard-size", "3", "--batch-size", "3", "--num-workers", "0", "--device", "cpu", *extra])


def test_extract_codes_flip_and_resume(tokenizer_dir, data_dir, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _extract(tokenizer_dir, data_dir, full, "--flip") == 0
    manifest = read_manifest(full)
    assert manifest["num_tokens"] == 16 and manifest["vocab_size"] == 64 and manifest["codes_dtype"] == "uint16"
    assert manifest["class_names"] == ["ant", "bee", "cow"] and manifest["num_classes"] == 3
    assert manifest["augmentations"] == ["center", "center-flip"]
    assert manifest["skipped"] == [4] and manifest["num_codes"] == 8 and manifest["class_counts"] == [3, 2, 3]
    assert [s["count"] for s in manifest["shards"]] == [3, 2, 3]

    # the stored codes are the tokenizer's codes of the centre crop and of its mirror image
    tok = VFMTokenizer.from_pretrained(tokenizer_dir)
    x = ImageTransform(32)(Image.open(data_dir / "cow" / "2.png"))[None]
    ds = CodeDataset(full)
    assert ds.indices.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert torch.equal(ds.get_batch([7], aug=0)[0], tok.encode(x))
    assert torch.equal(ds.get_batch([7], aug=1)[0], tok.encode(x.flip(-1)))
    assert ds.get_batch([7])[1].item() == 2

    # killed after one shard, then again mid-way through another (stale temporary file); the same command resumes
    assert _extract(tokenizer_dir, data_dir, part, "--flip", "--max-shards", "1") == 0
    assert not (part / "manifest.json").exists() and shard_path(part, 0).exists()
    (part / ".shard-00001.npz.abcd.tmp").write_bytes(b"partial")
    assert _extract(tokenizer_dir, data_dir, part, "--flip") == 0
    assert not list(part.glob(".*.tmp"))
    m_part = read_manifest(part)
    assert m_part == manifest
    for k in range(3):
        for a, b in zip(read_shard(shard_path(full, k)), read_shard(shard_path(part, k))):
            np.testing.assert_array_equal(a, b)

    # a finished directory is left alone; other settings are refused
    assert _extract(tokenizer_dir, data_dir, part, "--flip") == 0
    capsys.readouterr()
    assert _extract(tokenizer_dir, data_dir, part, "--ten-crop") == 2
    assert "different settings (augmentation)" in capsys.readouterr().err
    assert json.loads((part / "extraction.json").read_text())["augmentation"] == "flip"


def test_extract_codes_ten_crop(tokenizer_dir, data_dir, tmp_path):
    assert _extract(tokenizer_dir, data_dir, tmp_path / "ten", "--ten-crop", "--crop", "resize") == 0
    manifest = read_manifest(tmp_path / "ten")
    assert len(manifest["augmentations"]) == 10 and manifest["ten_crop_load_size"] == 35
    codes = read_shard(tmp_path / "ten" / manifest["shards"][0]["file"]).codes
    assert codes.shape == (3, 10, 16) and int(codes.max()) < 64


def test_extract_codes_needs_labels(tokenizer_dir, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(flat / "a.png")
    assert _extract(tokenizer_dir, flat, tmp_path / "out") == 2
    assert "without class labels" in capsys.readouterr().err


def test_extract_codes_bf16_precision_is_recorded_and_close_to_fp32(tokenizer_dir, data_dir, tmp_path, capsys):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert _extract(tokenizer_dir, data_dir, fp32) == 0
    assert _extract(tokenizer_dir, data_dir, bf16, "--precision", "bf16") == 0
    assert json.loads((bf16 / "extraction.json").read_text())["precision"] == "bf16"
    a = np.concatenate([read_shard(shard_path(fp32, k)).codes for k in range(3)])
    b = np.concatenate([read_shard(shard_path(bf16, k)).codes for k in range(3)])
    assert a.shape == b.shape and int(b.max()) < 64
    assert (a == b).mean() > 0.9  # the same tokenizer; bf16 rounding flips only near-ties (99.6 % equal here)
    capsys.readouterr()
    assert _extract(tokenizer_dir, data_dir, bf16) == 2  # resuming in another precision is refused
    assert "different settings (precision)" in capsys.readouterr().err
    # an extraction recorded before --precision existed counts as fp32
    settings = json.loads((fp32 / "extraction.json").read_text())
    del settings["precision"]
    (fp32 / "extraction.json").write_text(json.dumps(settings))
    (fp32 / "manifest.json").unlink()
    assert _extract(tokenizer_dir, data_dir, fp32) == 0
