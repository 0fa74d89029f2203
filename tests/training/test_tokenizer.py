"""Tokenizer trainer: recipe, train_step invariants, exact resume, DDP equivalence and robustness to bad files.

Everything runs the ``tok-test`` preset on 32 px images on the CPU (a few seconds per run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.config import ConfigError
from vfmtok.hub import load_state_dict
from vfmtok.training.tokenizer import (
    OFFICIAL_RECIPE,
    TokenizerTrainConfig,
    TrainParts,
    resolved_recipe,
    train_step,
    train_tokenizer,
)
from vfmtok.training.tokenizer_setup import resolve_model_config
from vfmtok.training.tracker import read_metrics

REPO = Path(__file__).resolve().parents[2]
TEST_YAML = REPO / "configs" / "tokenizer" / "test.yaml"


def _write_images(root: Path, n_per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _write_images(tmp_path_factory.mktemp("images"))


def _recipe(data: Path, **changes) -> TokenizerTrainConfig:
    return TokenizerTrainConfig.load(TEST_YAML).replace(data=str(data), device="cpu", **changes)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run) if "train/loss" in r]


# ------------------------------------------------------------------------------------------------------------- recipe
def test_config_choices_and_cache_refusal():
    with pytest.raises(ConfigError, match="pixel_loss"):
        TokenizerTrainConfig(pixel_loss="l3")
    with pytest.raises(ConfigError, match="crop='random'"):
        TokenizerTrainConfig(cache_features=True, crop="random")
    cfg = TokenizerTrainConfig(cache_features=True, crop="resize", hflip=True)
    assert TokenizerTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_official_yaml_is_the_official_recipe():
    """configs/tokenizer/official.yaml and OFFICIAL_RECIPE record the same released recipe."""
    cfg = TokenizerTrainConfig.load(REPO / "configs" / "tokenizer" / "official.yaml")
    assert cfg.replace(data="") == OFFICIAL_RECIPE
    assert (cfg.optimizer, cfg.schedule, cfg.pixel_loss) == ("adam", "constant", "official_2xmse")
    assert (cfg.batch_size, cfg.disc_start, cfg.disc_weight, cfg.ema_decay) == (16, 20000, 0.5, 0.9999)


def test_resolve_model_config_applies_overrides_and_loss_weights():
    cfg = TokenizerTrainConfig(preset="tok-test", model_overrides=("codebook_size=32",), commit_weight=0.5,
                               entropy_weight=0.1, image_size=48)
    m = resolve_model_config(cfg)
    assert (m.codebook_size, m.commit_beta, m.entropy_ratio, m.image_size) == (32, 0.5, 0.1, 48)
    full = resolved_recipe(cfg)
    assert full.model == m and full.model_overrides == () and resolve_model_config(full) == m
    with pytest.raises(ConfigError, match="commit_weight"):
        resolve_model_config(cfg.replace(model_overrides=("commit_beta=0.3",)))


# --------------------------------------------------------------------------------------------------------- train_step
def _parts(cfg: TokenizerTrainConfig, disc: torch.nn.Module | None = None, sgd: bool = False) -> TrainParts:
    from vfmtok.tokenizer.model import VFMTokenizer
    from vfmtok.training.ema import EMA

    torch.manual_seed(0)
    tok = VFMTokenizer(resolve_model_config(cfg)).train()
    params = [p for p in tok.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr) if sgd else torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr) if disc is not None else None
    return TrainParts(tok, tok, opt, EMA(tok, cfg.ema_decay), None, disc, disc, d_opt)


def test_gradient_accumulation_matches_the_full_batch():
    cfg = TokenizerTrainConfig(preset="tok-test", model_overrides=("dec_attn_dropout=0.0",), lpips_weight=0.0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    one, two = _parts(cfg, sgd=True), _parts(cfg.replace(grad_accum=2), sgd=True)  # SGD: update linear in grad
    t1 = train_step(one, cfg, x, None, 0, 1e-3)
    t2 = train_step(two, cfg.replace(grad_accum=2), x, None, 0, 1e-3)
    assert abs(float(t1["loss"]) - float(t2["loss"])) < 1e-6
    assert torch.equal(t1["code_hist"], t2["code_hist"]) and int(t1["code_hist"].sum()) == 4 * 16
    for p1, p2 in zip(one.tokenizer.parameters(), two.tokenizer.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6)


def test_no_discriminator_compute_before_disc_start():
    from vfmtok.losses.discriminator import PatchGANConfig, PatchGANDiscriminator

    cfg = TokenizerTrainConfig(preset="tok-test", lpips_weight=0.0, disc_type="patchgan", disc_start=2)
    disc = PatchGANDiscriminator(PatchGANConfig(ndf=8, n_layers=2))
    calls = []
    disc.register_forward_hook(lambda *a: calls.append(1))
    parts = _parts(cfg, disc)
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = train_step(parts, cfg, x, None, 0, 1e-4)  # official step 1 < disc_start
    assert not calls and "d_loss" not in out and float(out["g_adv"]) == 0.0
    assert all(torch.equal(before[k], v) for k, v in disc.state_dict().items())
    out = train_step(parts, cfg, x, None, 1, 1e-4)  # official step 2: generator and discriminator terms
    assert len(calls) == 3 and float(out["d_loss"]) > 0 and float(out["g_adv"]) != 0.0
    assert any(not torch.equal(before[k], v) for k, v in disc.state_dict().items())
    assert all(p.requires_grad for p in disc.parameters())


# -------------------------------------------------------------------------------------------------------------- loops
def test_killed_and_resumed_run_is_bit_identical(images, tmp_path):
    """Random crops, flips and decoder dropout on: a run stopped after 3 steps (last checkpoint at 2) and resumed
    ends with exactly the weights of an uninterrupted run."""
    cfg = _recipe(images, crop="random", hflip=True, model_overrides=(), total_steps=5, ckpt_every=2, eval_every=5)
    a = train_tokenizer(cfg, tmp_path / "a", progress=False)
    stopped = train_tokenizer(cfg, tmp_path / "b", stop_after=3, progress=False)
    assert stopped.final is None and stopped.step == 3
    b = train_tokenizer(cfg, tmp_path / "b", progress=False)
    assert a.step == b.step == 5
    wa, wb = load_state_dict(a.final / "model.safetensors"), load_state_dict(b.final / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert a.metrics["val/psnr"] == b.metrics["val/psnr"]
    with pytest.raises(ConfigError, match="lr"):  # the run directory belongs to this recipe
        train_tokenizer(cfg.replace(lr=1e-3), tmp_path / "b", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(images, tmp_path):
    """Same global batch on 1 and 2 gloo processes (torchrun): same per-step losses and final weights."""
    single = train_tokenizer(_recipe(images), tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "vfmtok.cli.main", "train-tokenizer", "--config", str(TEST_YAML),
           f"data={images}", "device=cpu", "--out", str(tmp_path / "two"), "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
    assert max(abs(a - b) for (_, a), (_, b) in zip(one, two)) <= 1e-5
    w1 = load_state_dict(single.final / "model.safetensors")
    w2 = load_state_dict(tmp_path / "two" / "final" / "model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-5


def test_bad_files_are_skipped_and_reported(tmp_path):
    root = _write_images(tmp_path / "data", n_per_class=3)  # 6 good RGB PNGs
    d = root / "class1"
    Image.new("CMYK", (36, 36), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)).save(d / "deep16.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    cfg = _recipe(root, num_val=0, batch_size=5, total_steps=2, log_every=1)  # 10 files: one epoch visits all
    result = train_tokenizer(cfg, tmp_path / "run", progress=False)
    assert result.final is not None and result.metrics["data/skipped_files"] == 2
    assert read_metrics(tmp_path / "run")[-1]["data/skipped_files"] == 2


def test_cached_features_reproduce_live_training(images, tmp_path):
    """float32 feature cache: same losses as running the frozen VFM every step; the cache is reused by a new run."""
    cfg = _recipe(images, total_steps=2, eval_every=0, ckpt_every=0)
    live = train_tokenizer(cfg, tmp_path / "live", progress=False)
    cached_cfg = cfg.replace(cache_features=True, cache_dtype="float32", cache_dir=str(tmp_path / "cache"))
    cached = train_tokenizer(cached_cfg, tmp_path / "cached", progress=False)
    for (_, a), (_, b) in zip(_losses(tmp_path / "live"), _losses(tmp_path / "cached")):
        assert abs(a - b) < 1e-5
    assert live.metrics["train/usage"] == cached.metrics["train/usage"]
    meta = tmp_path / "cache" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    train_tokenizer(cached_cfg, tmp_path / "again", progress=False)
    assert meta.stat().st_mtime_ns == stamp  # fingerprint matched: not rebuilt


def test_train_config_written_and_export_loads(images, tmp_path):
    from vfmtok.tokenizer.model import VFMTokenizer

    cfg = _recipe(images, total_steps=1, eval_every=0)
    result = train_tokenizer(cfg, tmp_path / "run", progress=False)
    saved = TokenizerTrainConfig.load(tmp_path / "run" / "train_config.json")
    assert saved == resolved_recipe(cfg) and saved.model is not None
    tok = VFMTokenizer.from_pretrained(result.final)
    codes = tok.encode(torch.zeros(1, 3, 32, 32))
    assert codes.shape == (1, 16) and dataclasses.asdict(tok.config) == dataclasses.asdict(saved.model)
