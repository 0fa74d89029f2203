"""``vfmtok train-tokenizer``: a full tiny run, resuming by run directory, overrides and user errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.cli.main import main
from vfmtok.training.tokenizer import TokenizerTrainConfig
from vfmtok.training.tracker import read_metrics

TEST_YAML = Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "test.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-images")
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(6):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_run_export_and_resume_from_run_dir(images, tmp_path, capsys):
    from vfmtok.tokenizer.model import VFMTokenizer

    out = tmp_path / "run"
    assert main(["train-tokenizer", "--config", str(TEST_YAML), f"data={images}", "device=cpu", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 steps" in printed and "model exported to" in printed and "0 unreadable files skipped" in printed
    tok = VFMTokenizer.from_pretrained(out / "final")
    assert tok.encode(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    assert (out / "samples" / "recon-00000004.png").exists()
    # resume with the run's own recipe and a longer schedule: continues at step 4
    assert main(["train-tokenizer", "total_steps=6", "--out", str(out), "--resume", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(out) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_model_overrides_reach_the_model_config(images, tmp_path):
    out = tmp_path / "run"
    assert main(["train-tokenizer", "--config", str(TEST_YAML), f"data={images}", "device=cpu",
                 "model.codebook_size=32", "lr=3e-4", "--out", str(out), "--stop-after", "0", "--no-progress"]) == 0
    saved = TokenizerTrainConfig.load(out / "train_config.json")
    assert saved.model.codebook_size == 32 and saved.lr == 3e-4 and not (out / "final").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{yaml}", "data={missing}"], "data path not found"),
        (["--config", "{yaml}", "data={images}", "no_such_key=1"], "unknown key"),
        (["--config", "{yaml}", "data={images}", "crop=random", "cache_features=true"], "deterministic"),
        (["--resume"], "no checkpoint"),
        ([], "--config is required"),
    ],
)
def test_user_errors_exit_2_with_one_line(images, tmp_path, capsys, args, message):
    fill = {"yaml": TEST_YAML, "missing": tmp_path / "nope", "images": images}
    argv = ["train-tokenizer", *(a.format(**fill) for a in args), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
