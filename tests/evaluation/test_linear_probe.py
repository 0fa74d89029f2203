from __future__ import annotations

import pytest
import torch

from vfmtok.evaluation.linear_probe import linear_probe, tokenizer_probe_features


def _blobs(n_per_class: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.5]])
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), 4, generator=g)
    return x, y


def test_separates_separable_data():
    xtr, ytr = _blobs(30, 0)
    xte, yte = _blobs(20, 1)
    r = linear_probe(xtr, ytr, xte, yte, max_iter=50)
    assert r.top1 == 1.0 and r.train_top1 == 1.0
    assert r.num_train == 90 and r.num_test == 60 and r.num_classes == 3
    assert len(r.val_top1) == 5 and r.weight_decay in dict(r.val_top1)


def test_deterministic():
    xtr, ytr = _blobs(20, 2, spread=2.0)
    xte, yte = _blobs(20, 3, spread=2.0)
    kwargs = dict(weight_decays=(0.0, 0.1), max_iter=20)
    assert linear_probe(xtr, ytr, xte, yte, **kwargs) == linear_probe(xtr, ytr, xte, yte, **kwargs)


def test_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(4)
    xtr, xte = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (300,), generator=g)
    assert linear_probe(xtr, ytr, xte, yte, max_iter=30).top1 < 0.4


def test_input_checks():
    x, y = _blobs(5, 0)
    with pytest.raises(ValueError, match="labels"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match=">= 0"):
        linear_probe(x, torch.full_like(y, -1), x, y)


def test_tokenizer_probe_features_shapes():
    tok_model = pytest.importorskip("vfmtok.tokenizer.model")
    presets = pytest.importorskip("vfmtok.tokenizer.presets")
    torch.manual_seed(0)
    tok = tok_model.VFMTokenizer(presets.tokenizer_preset("tok-test")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = tokenizer_probe_features(tok, x)
    assert f.tokens.shape == (2, tok.config.dim) and f.slots.shape == (2, tok.config.dim)
    # tokens: mean of the post-quant projection of the codes the tokenizer assigns
    expected = tok.post_quant_proj(tok.codes_to_embeddings(tok.encode(x))).mean(1)
    torch.testing.assert_close(f.tokens, expected)
