"""GPT model: official equivalence (teacher forcing), RoPE layout, cache modes, save/load, training behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.config import ConfigError
from vfmtok.generator import GPT, GPTConfig, gpt_preset
from vfmtok.generator.gpt import apply_rope, rope_2d_table
from vfmtok.hub import ModelLoadError


def _tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("gpt-test", **overrides))
    torch.nn.init.normal_(gpt.output.weight, std=0.3)  # zero-init head would make every logit 0
    return gpt.eval()


def test_teacher_forced_logits_match_official(official_gpt):
    gpt, io, tol = official_gpt
    with torch.no_grad():
        logits = gpt(io["tokens"][:, :-1], io["labels"])
    assert logits.shape == io["tf_logits"].shape and logits.dtype == torch.float32
    err = (logits - io["tf_logits"]).abs().max().item()
    assert err <= tol["tf_logits"], err
    with torch.no_grad():  # the full 257-position input (last token included) agrees on the shared positions
        full = gpt(io["tokens"], io["labels"])
    assert full.shape[1] == 257
    assert (full[:, :256] - io["tf_logits"]).abs().max().item() <= tol["tf_logits"]


def test_rope_table_layout():
    g, head_dim = 4, 16
    table = rope_2d_table(g, head_dim)
    assert table.shape == (1 + g * g, head_dim // 2, 2) and table.dtype == torch.float32
    assert torch.count_nonzero(table[0]) == 0  # class position: cos = sin = 0 (LlamaGen quirk)
    quarter = head_dim // 4
    freqs = [10000.0 ** (-2 * j / (head_dim // 2)) for j in range(quarter)]
    for k in (0, 3, 6, 15):
        row, col = divmod(k, g)
        for j in range(quarter):
            assert math.isclose(table[1 + k, j, 0].item(), math.cos(row * freqs[j]), abs_tol=1e-6)
            assert math.isclose(table[1 + k, j, 1].item(), math.sin(row * freqs[j]), abs_tol=1e-6)
            assert math.isclose(table[1 + k, quarter + j, 0].item(), math.cos(col * freqs[j]), abs_tol=1e-6)
            assert math.isclose(table[1 + k, quarter + j, 1].item(), math.sin(col * freqs[j]), abs_tol=1e-6)


def test_rope_rotates_interleaved_pairs_and_zeroes_class_position():
    x = torch.randn(1, 3, 2, 8)
    table = rope_2d_table(2, 8)[:3]
    out = apply_rope(x, table)
    assert torch.all(out[:, 0] == 0)  # class token: q and k vanish
    angle = torch.atan2(table[1, :, 1], table[1, :, 0])  # (4,)
    a, b = x[0, 1, 0, 0::2], x[0, 1, 0, 1::2]
    torch.testing.assert_close(out[0, 1, 0, 0::2], a * torch.cos(angle) - b * torch.sin(angle))
    torch.testing.assert_close(out[0, 1, 0, 1::2], b * torch.cos(angle) + a * torch.sin(angle))


def test_state_dict_matches_llamagen_layout():
    gpt = GPT(gpt_preset("gpt-test"))
    keys = list(gpt.state_dict())
    assert len(keys) == 2 + 7 * 2 + 2
    assert keys[:3] == ["cls_embedding.embedding_table.weight", "tok_embeddings.weight",
                        "layers.0.attention.wqkv.weight"]
    assert not any("freqs" in k or "cache" in k for k in keys)
    c = gpt.config
    assert gpt.cls_embedding.embedding_table.weight.shape == (c.num_classes + 1, c.dim)
    assert gpt.layers[0].feed_forward.w1.weight.shape == (c.ffn_hidden, c.dim)
    assert torch.count_nonzero(gpt.output.weight) == 0  # zero-initialised head
    assert 0.015 < gpt.tok_embeddings.weight.std().item() < 0.025
    no_null = GPT(gpt_preset("gpt-test", class_dropout_prob=0.0))
    assert no_null.cls_embedding.embedding_table.weight.shape[0] == c.num_classes


def test_config_validation_and_roundtrip():
    with pytest.raises(ConfigError, match="square"):
        GPTConfig(block_size=60)
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(dim=100, n_head=3)
    with pytest.raises(ConfigError, match="multiple of 4"):
        GPTConfig(dim=36, n_head=2)
    cfg = gpt_preset("gpt-2b")
    assert (cfg.head_dim, cfg.ffn_hidden, cfg.grid_size) == (60, 5120, 16)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert gpt_preset("gpt-3b").ffn_hidden == 8704
    assert GPTConfig(dim=768, ffn_dim_multiplier=1.5).ffn_hidden == 3072


def test_causal_and_shapes():
    gpt = _tiny()
    codes = torch.randint(0, 512, (2, 10))
    labels = torch.tensor([3, 10])  # 10 = null class
    with torch.no_grad():
        a = gpt(codes, labels)
        codes2 = codes.clone()
        codes2[:, 6:] = torch.randint(0, 512, (2, 4))
        b = gpt(codes2, labels)
        empty = gpt(codes[:, :0], labels)
    assert a.shape == (2, 11, 512)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-5)  # position t sees only tokens < t
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    torch.testing.assert_close(empty[:, 0], a[:, 0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        gpt(torch.zeros(1, 65, dtype=torch.long), labels[:1])


@pytest.mark.parametrize("mode", ["prefix", "static", "official"])
def test_cached_decoding_matches_full_forward(mode):
    gpt = _tiny()
    codes = torch.randint(0, 512, (3, 64))
    labels = torch.tensor([0, 5, 10])
    with torch.no_grad():
        full = gpt(codes[:, :-1], labels)  # (3, 64, V)
        cache = gpt.new_cache(3, mode=mode)
        pos = (lambda p: p) if mode == "prefix" else (lambda p: torch.tensor([p]))
        steps = [gpt.prefill(labels, cache, pos(0))]
        for t in range(63):
            steps.append(gpt.decode_step(codes[:, t : t + 1], cache, pos(t + 1)))
    assert cache.max_len == (72 if mode == "official" else 65)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=2e-5)


def test_prefix_cache_multi_token_prefill_at_offset():
    gpt = _tiny()
    codes = torch.randint(0, 512, (2, 12))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        full = gpt(codes, labels)
        cache = gpt.new_cache(2)
        gpt.prefill(labels, cache)
        gpt._forward_cached(gpt.tok_embeddings(codes[:, :5]), cache, 1)
        last = gpt._forward_cached(gpt.tok_embeddings(codes[:, 5:12]), cache, 6)  # 7 new positions at offset 6
    torch.testing.assert_close(last, full[:, 12], rtol=0, atol=2e-5)


def test_save_load_roundtrip(tmp_path):
    gpt = _tiny(vocab_size=100, block_size=16, num_classes=7)
    gpt.save_pretrained(tmp_path / "m")
    loaded = GPT.from_pretrained(tmp_path / "m")
    assert loaded.config == gpt.config and not loaded.training
    codes, labels = torch.randint(0, 100, (2, 16)), torch.tensor([0, 7])
    with torch.no_grad():
        assert torch.equal(gpt(codes, labels), loaded(codes, labels))
    other = GPT(gpt_preset("gpt-test"))
    other.save_pretrained(tmp_path / "o")
    (tmp_path / "m" / "model.safetensors").replace(tmp_path / "m" / "keep.safetensors")
    (tmp_path / "o" / "model.safetensors").replace(tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="shape mismatches"):
        GPT.from_pretrained(tmp_path / "m")


def test_dtype_cast_keeps_fp32_rope():
    gpt = _tiny()
    ref = gpt.freqs_cis.clone()
    gpt.to(torch.bfloat16)
    assert gpt.freqs_cis.dtype == torch.float32 and torch.equal(gpt.freqs_cis, ref)
    assert gpt.tok_embeddings.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = gpt(torch.randint(0, 512, (2, 8)), torch.tensor([1, 2]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_training_mode_dropout_and_loss():
    gpt = _tiny()
    codes, labels = torch.randint(0, 512, (4, 64)), torch.tensor([0, 1, 2, 3])
    gpt.eval()
    with torch.no_grad():
        ref = gpt(codes[:, :-1], labels)
        ref_loss = torch.nn.functional.cross_entropy(ref.reshape(-1, 512), codes.reshape(-1))
        torch.testing.assert_close(gpt.loss(codes, labels), ref_loss)
    gpt.train()
    torch.manual_seed(1)
    loss = gpt.loss(codes, labels)
    loss.backward()
    assert gpt.output.weight.grad is not None and torch.isfinite(loss)
    with torch.no_grad():
        assert not torch.allclose(gpt(codes[:, :-1], labels), ref)  # dropout active in training
    # label dropout: with p close to 1 every label becomes the null class
    drop = GPT(gpt_preset("gpt-test", class_dropout_prob=0.999)).train()
    emb = drop.cls_embedding(torch.tensor([0, 1, 2]))
    null = drop.cls_embedding.embedding_table.weight[10]
    assert torch.equal(emb[:, 0], null.expand(3, -1))
