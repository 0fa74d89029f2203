"""The CLI with a CNN-encoder tokenizer (``encoder_type=cnn``, no backbone weights anywhere): init-tokenizer,
reconstruct, extract-codes and eval-tokenizer work; regions, ``eval-tokenizer --vfm tokenizer`` and a recipe with a
semantic loss fail with one clear line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfmtok.cli.main import main
from vfmtok.data.tokens import read_manifest
from vfmtok.tokenizer.model import VFMTokenizer

TEST_YAML = Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "test.yaml"
CNN_SET = ["--set", "encoder_type=cnn", "--set", "cnn_ch=32", "--set", "cnn_ch_mult=[1,1,1,1]", "--set",
           "cnn_res_blocks=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, make_image_folder) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cnn-cli-img"), ("ant", "bee"), per_class=3, size=(36, 40))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cnn-tok") / "tok"
    assert main(["init-tokenizer", "--preset", "tok-test", *CNN_SET, "--out", str(out)]) == 0
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_init_tokenizer_needs_no_backbone_weights(tok_dir, capsys):
    tok = VFMTokenizer.from_pretrained(tok_dir)
    assert tok.config.encoder_type == "cnn" and tok.backbone is None
    assert main(["init-tokenizer", "--preset", "tok-test", *CNN_SET, "--random-backbone", "--out",
                 str(tok_dir.parent / "x")]) == 2
    assert "no backbone" in _one_error_line(capsys)
    assert main(["init-tokenizer", "--preset", "tok-test", "--set", "encoder_type=cnn", "--out",
                 str(tok_dir.parent / "y")]) == 2  # default cnn_ch_mult maps 32 px to 8, not anchor_grid 4
    assert "cnn_ch_mult" in _one_error_line(capsys)


def test_reconstruct(tok_dir, data_dir, tmp_path, capsys):
    assert main(["reconstruct", str(data_dir / "ant" / "0.png"), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path)]) == 0
    assert (tmp_path / "0_recon.png").exists() and "PSNR" in capsys.readouterr().out


def test_extract_codes(tok_dir, data_dir, tmp_path):
    out = tmp_path / "codes"
    assert main(["extract-codes", "--tokenizer", str(tok_dir), "--data", str(data_dir), "--out", str(out),
                 "--shard-size", "4", "--batch-size", "4", "--num-workers", "0", "--device", "cpu"]) == 0
    manifest = read_manifest(out)
    assert manifest["num_codes"] == 6 and manifest["num_tokens"] == 16
    assert manifest["tokenizer"]["config"]["encoder_type"] == "cnn"


def test_eval_tokenizer_with_probe_and_vfm_refusal(tok_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "eval" / "report.json"
    base = ["eval-tokenizer", "--tokenizer", str(tok_dir), "--data", str(data_dir), "--no-lpips", "--eval-size", "0",
            "--batch-size", "4", "--out", str(out)]
    assert main([*base, "--vfm", "none", "--probe-train", str(data_dir), "--probe-test", str(data_dir)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["num_images"] == 6 and set(report["linear_probe"]) == {"tokens", "slots"}
    capsys.readouterr()
    assert main([*base, "--vfm", "tokenizer"]) == 2
    line = _one_error_line(capsys)
    assert "encoder_type='cnn'" in line and "--vfm bundled" in line


def test_regions_is_refused(tok_dir, data_dir, tmp_path, capsys):
    assert main(["regions", str(data_dir / "ant" / "0.png"), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path / "r.png")]) == 2
    line = _one_error_line(capsys)
    assert "encoder_type='cnn'" in line and "deformable" in line
    assert not (tmp_path / "r.png").exists()


def test_train_tokenizer_refuses_a_semantic_loss(data_dir, tmp_path, capsys):
    argv = ["train-tokenizer", "--config", str(TEST_YAML), f"data={data_dir}", "device=cpu", "model.encoder_type=cnn",
            "model.cnn_ch=32", "model.cnn_ch_mult=[1,1,1,1]", "model.cnn_res_blocks=1", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert main(argv) == 2  # test.yaml keeps semantic_weight 1.0
    assert "semantic_weight" in _one_error_line(capsys)
