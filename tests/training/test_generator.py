"""GPT training on code shards: exact kill + resume, learning, recipe handling, data order, sample grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vfmtok.config import ConfigError
from vfmtok.data.tokens import Shard, codes_dtype, shard_path, shard_ranges, write_manifest, write_shard
from vfmtok.generator import GPT
from vfmtok.hub import load_state_dict
from vfmtok.training.checkpoint import load_checkpoint
from vfmtok.training.generator import GPTTrainConfig, _batches, build_gpt_config, train_gpt
from vfmtok.training.sampler import ResumableSampler
from vfmtok.training.tracker import read_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def make_codes(root, n=96, tokens=16, vocab=64, num_classes=4, num_aug=2, noise=0.0, seed=0):
    """A codes directory whose sequences are a function of the class (plus optional random tokens)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    base = (labels[:, None, None] * 13 + np.arange(num_aug)[None, :, None] * 5 + np.arange(tokens)) % vocab
    noisy = rng.random(base.shape) < noise
    codes = np.where(noisy, rng.integers(0, vocab, base.shape), base).astype(codes_dtype(vocab))
    entries = []
    for k, (s, e) in enumerate(shard_ranges(n, 40)):
        write_shard(shard_path(root, k), Shard(codes[s:e], labels[s:e], np.arange(s, e), np.zeros(0, np.int64)))
        entries.append({"file": shard_path(root, k).name, "start": s, "stop": e, "count": e - s})
    write_manifest(root, {"num_tokens": tokens, "vocab_size": vocab, "num_classes": num_classes,
                          "augmentations": [str(a) for a in range(num_aug)], "shards": entries})
    return root


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    return make_codes(tmp_path_factory.mktemp("codes"), noise=0.3)


def _cfg(codes, **kw):
    base = dict(model="gpt-test", codes=str(codes), val_size=16, global_batch_size=8, total_steps=6, lr=2e-3,
                lr_schedule="cosine", warmup_steps=2, ema_decay=0.9, mixed_precision="none", log_every=1,
                eval_every=3, ckpt_every=3, grad_accum_steps=2)
    return GPTTrainConfig(**{**base, **kw})


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in records]


def test_kill_and_resume_is_bit_identical(codes_dir, tmp_path):
    cfg = _cfg(codes_dir)
    full = train_gpt(cfg, tmp_path / "full", device="cpu", progress=False)
    assert full.step == 6 and full.final == tmp_path / "full" / "final"
    # "killed" two steps after checkpoint 3, then the same call again
    killed = train_gpt(cfg, tmp_path / "resumed", device="cpu", progress=False, stop_after=5)
    assert killed.step == 5 and killed.final is None and not (tmp_path / "resumed" / "final").exists()
    resumed = train_gpt(cfg, tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.step == 6
    for name in ("final/model.safetensors", "checkpoints/step-00000006/model.safetensors",
                 "checkpoints/step-00000006/ema.safetensors"):
        a, b = load_state_dict(tmp_path / "full" / name), load_state_dict(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    opt_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step-00000006")["state"]["optimizer"]
    opt_b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000006")["state"]["optimizer"]
    for k, st in opt_a["state"].items():
        assert all(torch.equal(st[n], opt_b["state"][k][n]) for n in st)
    metrics = _strip(read_metrics(tmp_path / "full"))
    assert metrics == _strip(read_metrics(tmp_path / "resumed"))  # replayed steps replace the lost records
    assert [r["step"] for r in metrics if "val_loss" in r] == [3, 6]
    assert all("val_loss_ema" in r for r in metrics if "val_loss" in r)
    # the export is the EMA, loadable as a model directory, and re-running a finished run does nothing
    gpt = GPT.from_pretrained(tmp_path / "full" / "final")
    assert (gpt.config.vocab_size, gpt.config.block_size, gpt.config.num_classes) == (64, 16, 4)
    ema = load_state_dict(tmp_path / "full" / "checkpoints" / "step-00000006" / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in gpt.state_dict().items())
    again = train_gpt(cfg, tmp_path / "full", device="cpu", progress=False)
    assert again.step == 6 and len(read_metrics(tmp_path / "full")) == len(metrics)


def test_loss_decreases_on_learnable_codes(tmp_path):
    codes = make_codes(tmp_path / "codes", n=64, num_aug=1)  # the class fully determines the sequence
    cfg = _cfg(codes, total_steps=40, lr=3e-3, warmup_steps=5, grad_accum_steps=1, global_batch_size=16,
               log_every=10, eval_every=40, ckpt_every=0, ema=False, model_overrides=("resid_dropout_p=0.0",
                                                                                      "ffn_dropout_p=0.0"))
    result = train_gpt(cfg, tmp_path / "run", device="cpu", progress=False)
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    assert losses[0] > 3.0 and losses[-1] < 0.5 * losses[0] and result.metrics["val_loss"] < 0.5 * math.log(64)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-00000040"]


def test_recipe_and_model_config(codes_dir, tmp_path):
    cfg = _cfg(codes_dir, class_dropout_prob=0.2, model_overrides=("n_layer=1", "dim=32", "n_head=2"))
    gpt_cfg = build_gpt_config(cfg, {"vocab_size": 64, "num_tokens": 16, "num_classes": 4})
    assert (gpt_cfg.vocab_size, gpt_cfg.block_size, gpt_cfg.num_classes) == (64, 16, 4)
    assert (gpt_cfg.n_layer, gpt_cfg.dim, gpt_cfg.class_dropout_prob) == (1, 32, 0.2)
    with pytest.raises(ConfigError):
        build_gpt_config(_cfg(codes_dir, model_overrides=("depth=3",)), {"vocab_size": 64, "num_tokens": 16,
                                                                         "num_classes": 4})
    for bad in ({"lr_schedule": "step"}, {"strategy": "zero"}, {"total_steps": 0, "epochs": 0},
                {"mixed_precision": "fp8"}):
        with pytest.raises(ConfigError):
            _cfg(codes_dir, **bad)
    with pytest.raises(ConfigError, match="divisible"):
        train_gpt(_cfg(codes_dir, global_batch_size=9), tmp_path / "a", device="cpu", progress=False)
    train_gpt(_cfg(codes_dir, total_steps=1, eval_every=0), tmp_path / "b", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="lr changed"):  # a different recipe cannot continue this run
        train_gpt(_cfg(codes_dir, total_steps=1, lr=1e-2), tmp_path / "b", device="cpu", progress=False)
    extended = train_gpt(_cfg(codes_dir, total_steps=2, eval_every=0), tmp_path / "b", device="cpu", progress=False)
    assert extended.step == 2  # ... but a longer one can
    epochs = train_gpt(_cfg(codes_dir, total_steps=0, epochs=1.0, eval_every=0), tmp_path / "c", device="cpu",
                       progress=False)
    assert epochs.step == 80 // 8  # 96 codes - 16 held out = 80 = 10 batches


def test_batches_resume_position_and_reshuffle():
    sampler = ResumableSampler(50, rank=1, world_size=2, seed=3)
    it = _batches(sampler, steps_per_epoch=6, per_rank=4, step=0)
    seq = [next(it) for _ in range(14)]
    assert [e for e, _ in seq] == [0] * 6 + [1] * 6 + [2] * 2
    first = np.concatenate([b for e, b in seq if e == 0])
    assert len(set(first.tolist())) == 24  # no repeats inside an epoch
    assert not np.array_equal(first, np.concatenate([b for e, b in seq if e == 1]))  # reshuffled every epoch
    resumed = _batches(ResumableSampler(50, rank=1, world_size=2, seed=3), 6, 4, step=9)
    for k in range(9, 14):
        e, b = next(resumed)
        assert e == seq[k][0] and np.array_equal(b, seq[k][1])


def test_sample_grid_with_tokenizer(tmp_path):
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.tokenizer.presets import tokenizer_preset

    torch.manual_seed(0)
    VFMTokenizer(tokenizer_preset("tok-test")).save_pretrained(tmp_path / "tok")  # 16 tokens, vocab 64, 32 px
    codes = make_codes(tmp_path / "codes", n=32)
    cfg = _cfg(codes, total_steps=2, tokenizer=str(tmp_path / "tok"), sample_every=2, sample_classes=(0, 2, 9),
               sample_per_class=3, eval_every=0, ckpt_every=0)
    train_gpt(cfg, tmp_path / "run", device="cpu", progress=False)
    from PIL import Image

    grid = Image.open(tmp_path / "run" / "samples" / "step-00000002.png")
    assert grid.size == (3 * 32, 2 * 32)  # classes >= num_classes are dropped; one row per class


def test_separate_validation_codes(codes_dir, tmp_path):
    val = make_codes(tmp_path / "val", n=12, num_aug=1, seed=1)
    result = train_gpt(_cfg(codes_dir, val_codes=str(val), val_size=0, total_steps=3, ckpt_every=0),
                       tmp_path / "run", device="cpu", progress=False)
    assert result.metrics["val_loss"] > 0 and result.step == 3
    other = make_codes(tmp_path / "other", n=12, vocab=128)
    with pytest.raises(ConfigError, match="val_codes"):
        train_gpt(_cfg(codes_dir, val_codes=str(other)), tmp_path / "run2", device="cpu", progress=False)
