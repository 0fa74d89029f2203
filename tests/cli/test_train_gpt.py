"""``vfmtok train-gpt``: the shipped recipes parse, a tiny run trains, resumes and exports; user errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vfmtok.cli.main import main
from vfmtok.data.tokens import Shard, codes_dtype, shard_path, write_manifest, write_shard
from vfmtok.generator import GPT, gpt_preset
from vfmtok.training.generator import GPTTrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "gpt"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["gpt-b-official", "cifar10-small", "fashion-mnist-tiny", "test"])
def test_shipped_recipes_parse(name):
    cfg = GPTTrainConfig.load(CONFIGS / f"{name}.yaml")
    gpt_preset(cfg.model).with_overrides(list(cfg.model_overrides))  # the preset and its overrides exist
    if name == "gpt-b-official":  # the official c2i recipe (reference §3.3)
        assert (cfg.model, cfg.global_batch_size, cfg.epochs, cfg.lr, cfg.lr_schedule) == ("gpt-b", 512, 300, 1e-4,
                                                                                         "constant")
        assert (cfg.betas, cfg.weight_decay, cfg.grad_clip, cfg.ema_decay) == ((0.9, 0.95), 0.05, 1.0, 0.9999)
        assert (cfg.class_dropout_prob, cfg.mixed_precision, cfg.warmup_steps) == (0.1, "bf16", 0)


@pytest.fixture()
def codes_dir(tmp_path):
    root = tmp_path / "codes"
    n, tokens, vocab = 40, 16, 64
    labels = np.arange(n) % 3
    codes = ((labels[:, None, None] * 5 + np.arange(tokens)) % vocab).astype(codes_dtype(vocab))
    write_shard(shard_path(root, 0), Shard(codes, labels, np.arange(n), np.zeros(0, np.int64)))
    write_manifest(root, {"num_tokens": tokens, "vocab_size": vocab, "num_classes": 3, "augmentations": ["center"],
                          "shards": [{"file": "shard-00000.npz", "start": 0, "stop": n, "count": n}]})
    return root


def test_train_gpt_runs_resumes_and_exports(codes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-gpt", "--config", str(CONFIGS / "test.yaml"), f"codes={codes_dir}", "total_steps=4",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["total_steps"] == 4 and saved["codes"] == str(codes_dir) and saved["model"] == "gpt-test"
    gpt = GPT.from_pretrained(out / "final")
    assert (gpt.config.block_size, gpt.config.vocab_size, gpt.config.num_classes) == (16, 64, 3)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "lr", "tokens_per_s"} <= set(records[0]) and any("val_loss" in r for r in records)
    assert list((out / "tb").iterdir())
    # longer: continues from the step-4 checkpoint
    assert main(argv[:4] + ["total_steps=6"] + argv[5:]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000006"]


@pytest.mark.parametrize("argv_tail, message", [
    (["nonsense_key=1"], "unknown key"),
    (["lr_schedule=sometimes"], "lr_schedule"),
    ([], "codes directory"),
    (["codes=/does/not/exist"], "not found"),
])
def test_train_gpt_user_errors(argv_tail, message, tmp_path, capsys):
    code = main(["train-gpt", "--config", str(CONFIGS / "test.yaml"), *argv_tail, "--out", str(tmp_path / "r")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_train_gpt_missing_config(tmp_path, capsys):
    assert main(["train-gpt", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
