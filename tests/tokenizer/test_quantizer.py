"""L2-normalised vector quantizer: fp32 search, straight-through, losses, lookup and codebook statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfmtok.tokenizer.quantizer import (
    VectorQuantizer,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    entropy_loss,
)


@pytest.fixture()
def vq() -> VectorQuantizer:
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, dim=8)
    torch.nn.init.normal_(q.embedding.weight)  # spread the codes (the official init is nearly degenerate)
    return q


def test_nearest_code_is_max_cosine(vq):
    z = torch.randn(3, 10, 8)
    out = vq(z)
    assert out.idx.shape == (3, 10) and out.idx.dtype == torch.int64
    cos = F.normalize(z, dim=-1) @ F.normalize(vq.embedding.weight, dim=-1).T  # (3, 10, K)
    assert torch.equal(out.idx, cos.argmax(-1))
    torch.testing.assert_close(out.z, F.normalize(z, dim=-1))


def test_eval_lookup_equals_z_q(vq):
    vq.eval()
    out = vq(torch.randn(2, 16, 8))
    torch.testing.assert_close(vq.lookup(out.idx), out.z_q, atol=1e-7, rtol=0)
    assert torch.allclose(vq.lookup(out.idx).norm(dim=-1), torch.ones(2, 16))
    # feeding the code vectors back returns the same indices
    assert torch.equal(vq(vq.lookup(out.idx)).idx, out.idx)


def test_fp32_under_bf16_autocast(vq):
    z = torch.randn(4, 32, 8)
    ref = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = vq.distances(z.reshape(-1, 8))
        out = vq(z.bfloat16())
    assert d.dtype == torch.float32
    assert out.z_q.dtype == torch.float32 and out.losses.vq.dtype == torch.float32
    # the bf16 input only rounds z; the search itself ran in fp32, matching the fp32 search on the rounded input
    assert torch.equal(out.idx, vq(z.bfloat16().float()).idx)
    assert (out.idx == ref.idx).float().mean() > 0.9


def test_straight_through_and_losses(vq):
    vq.train()
    z = torch.randn(2, 5, 8, requires_grad=True)
    out = vq(z)
    codes = vq.lookup(out.idx)
    zn = F.normalize(z.detach(), dim=-1)
    torch.testing.assert_close(out.losses.vq, (codes - zn).pow(2).mean())
    torch.testing.assert_close(out.losses.commit, 0.25 * (codes - zn).pow(2).mean())
    assert out.losses.entropy.item() == 0.0
    g = torch.randn_like(out.z_q)
    (out.z_q * g).sum().backward()
    z2 = z.detach().clone().requires_grad_()
    (F.normalize(z2, dim=-1) * g).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)  # identity gradient through the quantisation step
    # the codebook is trained by the vq loss only
    vq.zero_grad()
    out = vq(torch.randn(2, 5, 8))
    out.losses.vq.backward()
    assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().sum() > 0


def test_entropy_loss():
    q = VectorQuantizer(16, 4, entropy_ratio=0.5)
    out = q(torch.randn(2, 8, 4))
    assert out.losses.entropy.ndim == 0 and torch.isfinite(out.losses.entropy)
    # one-hot affinities: zero sample entropy; uniform spread over K codes: average entropy log K
    aff = torch.eye(4) * 100.0
    torch.testing.assert_close(entropy_loss(aff, 1.0), torch.tensor(-math.log(4.0)), atol=1e-4, rtol=0)


def test_codebook_init_unit_rows():
    q = VectorQuantizer(128, 12)
    torch.testing.assert_close(q.embedding.weight.norm(dim=-1), torch.ones(128))


def test_codebook_statistics():
    idx = torch.tensor([[0, 1, 1, 3]])
    assert code_histogram(idx, 5).tolist() == [1, 2, 0, 1, 0]
    assert codebook_usage(idx, 5) == pytest.approx(3 / 5)
    assert codebook_perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    assert codebook_perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1.0)
    assert codebook_perplexity(torch.zeros(0, dtype=torch.long), 8) == 0.0


def test_wrong_width_raises(vq):
    with pytest.raises(ValueError, match="width"):
        vq(torch.randn(1, 2, 7))
