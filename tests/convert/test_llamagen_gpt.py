"""Official LlamaGen/VFMTok GPT checkpoint conversion: entry choice, strict key/shape checks, config inference, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from vfmtok.convert.llamagen_gpt import (
    convert_official_gpt,
    gpt_config_from_official_json,
    infer_gpt_config,
    load_official_gpt,
    load_official_gpt_checkpoint,
    strip_prefixes,
)
from vfmtok.config import ConfigError
from vfmtok.generator import GPT, gpt_preset
from vfmtok.hub import ModelLoadError

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "official"


def _official_like(config) -> dict[str, torch.Tensor]:
    """A state dict with official keys and shapes (our GPT's keys are the official ones)."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in GPT(config).state_dict().items()}


def _fixture_or_skip() -> Path:
    if not (FIXTURES / "gpt.pt").is_file():
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    return FIXTURES


def test_fixture_checkpoint_uses_ema_and_matches_logits():
    fx = _fixture_or_skip()
    state, meta = load_official_gpt_checkpoint(fx / "gpt.pt")
    assert meta["entry"] == "ema" and meta["args"]["vocab_size"] == 512
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(fx / "gpt.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], raw["ema"][k]) for k in raw["ema"])
    config = gpt_config_from_official_json(json.loads((fx / "gpt_config.json").read_text()))
    assert (config.dim, config.n_layer, config.n_head, config.vocab_size, config.block_size) == (64, 2, 4, 512, 256)
    gpt = load_official_gpt(fx / "gpt.pt", config)
    io = torch.load(fx / "gpt_io.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        logits = gpt(io["tokens"][:, :-1], io["labels"])
    assert (logits - io["tf_logits"]).abs().max().item() <= 1e-4
    # inferred from shapes + training args: same sizes except the head count, which the weights do not store
    inferred = infer_gpt_config(state, n_head=4, block_size=meta["args"]["latent_size"] ** 2)
    assert inferred == config


def test_entry_order_and_raw_state_dicts(tmp_path):
    cfg = gpt_preset("gpt-test")
    sd = _official_like(cfg)
    decoy = {k: v + 1 for k, v in sd.items()}
    torch.save({"model": decoy, "ema": sd, "steps": 3, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "a.pt")
    state, meta = load_official_gpt_checkpoint(tmp_path / "a.pt")
    assert meta["entry"] == "ema" and meta["args"] == {"lr": 1e-4}
    assert torch.equal(state["norm.weight"], sd["norm.weight"])
    torch.save({"model": decoy}, tmp_path / "b.pt")
    assert load_official_gpt_checkpoint(tmp_path / "b.pt")[1]["entry"] == "model"
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "c.pt")
    state, meta = load_official_gpt_checkpoint(tmp_path / "c.pt")
    assert meta["entry"] is None
    assert list(convert_official_gpt(state, cfg)) == list(sd)
    torch.save({"steps": 1}, tmp_path / "d.pt")
    with pytest.raises(ModelLoadError, match="no state dict"):
        load_official_gpt_checkpoint(tmp_path / "d.pt")
    with pytest.raises(FileNotFoundError):
        load_official_gpt_checkpoint(tmp_path / "missing.pt")


def test_converter_errors_name_keys_and_shapes():
    cfg = gpt_preset("gpt-test")
    sd = _official_like(cfg)
    missing = {k: v for k, v in sd.items() if k != "layers.1.ffn_norm.weight"}
    with pytest.raises(ModelLoadError, match=r"missing keys \(1\).*layers\.1\.ffn_norm\.weight"):
        convert_official_gpt(missing, cfg)
    extra = {**sd, "layers.0.attention.bias": torch.zeros(3)}
    with pytest.raises(ModelLoadError, match=r"unexpected keys \(1\).*attention\.bias"):
        convert_official_gpt(extra, cfg)
    with pytest.raises(ModelLoadError, match="shape mismatches.*tok_embeddings"):
        convert_official_gpt(sd, cfg.replace(vocab_size=1024))
    # derived buffers are dropped on purpose; compile/DDP prefixes are stripped
    noisy = {"_orig_mod." + k: v for k, v in sd.items()}
    noisy["freqs_cis"] = torch.zeros(65, 8, 2)
    noisy["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1, 4, 72, 16)
    out = convert_official_gpt(noisy, cfg)
    assert list(out) == list(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    assert list(strip_prefixes({"module._orig_mod.norm.weight": sd["norm.weight"]})) == ["norm.weight"]


def test_infer_config_from_preset_shapes():
    with torch.device("meta"):
        sd = GPT(gpt_preset("gpt-2b", vocab_size=8192, num_classes=100)).state_dict()
    cfg = infer_gpt_config(sd)
    assert cfg == gpt_preset("gpt-2b", vocab_size=8192, num_classes=100)
    assert list(convert_official_gpt(sd, cfg)) == list(sd)
    with torch.device("meta"):
        sd = GPT(gpt_preset("gpt-test", ffn_dim_multiplier=2.0)).state_dict()
    cfg = infer_gpt_config(sd, n_head=4, block_size=64, num_classes=10)
    assert cfg.ffn_hidden == 512 and cfg.n_head == 4
    with pytest.raises(ModelLoadError, match="missing"):
        infer_gpt_config({"norm.weight": torch.ones(4)})


def test_official_json_config():
    args = {"dim": 64, "n_layer": 2, "n_head": 4, "n_kv_head": None, "vocab_size": 512, "block_size": 64,
            "num_classes": 10, "model_type": "c2i", "cls_token_num": 1, "caption_dim": 2048, "max_seq_len": 2048}
    cfg = gpt_config_from_official_json({"model_args": args})
    assert cfg == gpt_config_from_official_json(args) == gpt_preset("gpt-test")
    with pytest.raises(ConfigError, match="model_type"):
        gpt_config_from_official_json({**args, "model_type": "t2i"})
    with pytest.raises(ConfigError, match="grouped-query"):
        gpt_config_from_official_json({**args, "n_kv_head": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        gpt_config_from_official_json({**args, "n_experts": 8})


def test_convert_cli(tmp_path, capsys):
    from vfmtok.cli.main import main

    cfg = gpt_preset("gpt-test")
    sd = _official_like(cfg)
    torch.save({"ema": sd, "args": argparse.Namespace(latent_size=8, dropout_p=0.05)}, tmp_path / "g.pt")
    (tmp_path / "official.json").write_text(json.dumps({"model_args": {**cfg.to_dict(), "model_type": "c2i"}}))
    assert main(["convert-official-gpt", "--ckpt", str(tmp_path / "g.pt"), "--out", str(tmp_path / "a"),
                 "--config", str(tmp_path / "official.json")]) == 0
    gpt = GPT.from_pretrained(tmp_path / "a")
    assert gpt.config == cfg and torch.equal(gpt.state_dict()["output.weight"], sd["output.weight"])
    assert "entry ema" in capsys.readouterr().out
    # no config: sizes from the shapes, token grid and dropouts from the training args
    assert main(["convert-official-gpt", "--ckpt", str(tmp_path / "g.pt"), "--out", str(tmp_path / "b"),
                 "--n-head", "4"]) == 0
    inferred = GPT.from_pretrained(tmp_path / "b").config
    assert inferred == cfg.replace(resid_dropout_p=0.05, ffn_dropout_p=0.05)
    # a config that does not fit the weights: one line on stderr, exit code 2
    GPT(cfg.replace(dim=32)).config.save(tmp_path / "wrong.json")
    assert main(["convert-official-gpt", "--ckpt", str(tmp_path / "g.pt"), "--out", str(tmp_path / "c"),
                 "--config", str(tmp_path / "wrong.json")]) == 2
    assert "shape mismatches" in capsys.readouterr().err
    assert main(["convert-official-gpt", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "d")]) == 2
