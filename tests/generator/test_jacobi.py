"""Speculative Jacobi decoding: the window forward, greedy equality, and the exact sequence distribution.

The distribution tests enumerate every sequence of a tiny GPT (vocab 5, 2 x 2 tokens: 625 sequences) with
teacher-forced forward passes, draw many samples as one large batch, and run a chi-square goodness-of-fit test of
the sample counts against the exact probabilities. The plain sampler and the Jacobi sampler must pass it (with CFG,
temperature and top-k too); a Jacobi sampler with a wrong acceptance rule must fail it by a wide margin.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import stats

from vfmtok.generator import GPT, gpt_preset, sample
from vfmtok.generator import jacobi
from vfmtok.generator.jacobi import WindowDecoder, token_probs
from vfmtok.generator.sampling import apply_cfg, cfg_scales

VOCAB, TOKENS, LABEL, NUM = 5, 4, 3, 10_000


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    """A GPT whose next-token distributions are far from uniform and depend strongly on the context."""
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("gpt-test", vocab_size=VOCAB, block_size=TOKENS, dim=16, n_head=2, multiple_of=16))
    # token entropies 0.8 (first) and 1.5 nats (others); the next-token distribution moves by ~0.1 per token with
    # the context, so drafts drawn from stale distributions are often wrong
    torch.nn.init.normal_(gpt.output.weight, std=0.2)
    return gpt.eval()


def exact_distribution(gpt: GPT, scale: float, **sampling) -> torch.Tensor:
    """Probability of every sequence (VOCAB**TOKENS,) in ``itertools.product`` order, by teacher forcing."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=TOKENS)))  # (M, T)
    with torch.no_grad():
        logits = gpt(seqs[:, :-1], torch.full((len(seqs),), LABEL))  # (M, T, V)
        if scale != 1.0:
            null = gpt(seqs[:, :-1], torch.full((len(seqs),), gpt.config.null_class))
            logits = apply_cfg(torch.cat([logits, null]), cfg_scales(TOKENS, scale)[None, :, None])
    probs = token_probs(logits.flatten(0, 1), **sampling).view(len(seqs), TOKENS, VOCAB)
    return probs.double().gather(-1, seqs[..., None]).squeeze(-1).prod(dim=-1)  # (M,)


def goodness_of_fit(codes: torch.Tensor, exact: torch.Tensor) -> float:
    """Chi-square p-value of the sequences ``codes`` (N, T) against ``exact``; cells expected < 5 are pooled."""
    index = (codes * VOCAB ** torch.arange(TOKENS - 1, -1, -1)).sum(dim=1)  # product order: first token major
    counts = torch.bincount(index, minlength=VOCAB**TOKENS).double()
    assert counts[exact == 0].sum() == 0, "a sequence of probability 0 was sampled"
    expected = exact * len(codes)
    big, small = expected >= 5, (expected > 0) & (expected < 5)
    observed, wanted = counts[big], expected[big]
    if small.any():
        observed = torch.cat([observed, counts[small].sum()[None]])
        wanted = torch.cat([wanted, expected[small].sum()[None]])
    wanted = wanted * observed.sum() / wanted.sum()  # exact sums to 1 up to float64 rounding
    return float(stats.chisquare(observed.numpy(), wanted.numpy()).pvalue)


def draw_codes(gpt: GPT, method: str, scale: float, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.full((NUM,), LABEL)
    return sample(gpt, labels, cfg_scale=scale, method=method, generator=torch.Generator().manual_seed(seed),
                  return_steps=True, **kwargs)


CASES = {
    "plain": dict(scale=1.0, sampling={}),
    "cfg": dict(scale=2.5, sampling={}),
    "topk-temperature": dict(scale=1.0, sampling=dict(top_k=3, temperature=0.8)),
    "cfg-topp": dict(scale=1.5, sampling=dict(top_p=0.8, temperature=1.3)),
}


@pytest.mark.parametrize(
    "method,window,case",
    [("ar", 1, "cfg-topp"), ("ar", 1, "topk-temperature"), ("jacobi", 2, "cfg")]
    + [("jacobi", 4, case) for case in CASES],  # window 4: the whole sequence in every pass
)
def test_sequence_distribution_is_exact(tiny_gpt, method, window, case):
    scale, sampling = CASES[case]["scale"], CASES[case]["sampling"]
    exact = exact_distribution(tiny_gpt, scale, **sampling)
    assert abs(exact.sum().item() - 1) < 1e-6
    codes, steps = draw_codes(tiny_gpt, method, scale, window=window, **sampling)
    assert goodness_of_fit(codes, exact) > 1e-3
    if method == "jacobi":  # the model is far from its drafts, but several tokens per pass still happen
        assert steps.max() <= TOKENS and steps.float().mean() < TOKENS


@pytest.mark.parametrize("bias", ["always-accept", "no-residual"])
def test_biased_acceptance_rule_fails(tiny_gpt, monkeypatch, bias):
    """The test has the power to see a wrong rule: accept every draft, or redraw a rejected token from p (no
    residual). Both give p-values far below any threshold."""
    if bias == "always-accept":
        monkeypatch.setattr(jacobi, "accept_probability", lambda p, q: torch.ones_like(p))
    else:
        monkeypatch.setattr(jacobi, "residual", lambda p, q: p)
    exact = exact_distribution(tiny_gpt, 2.5)
    codes, _ = draw_codes(tiny_gpt, "jacobi", 2.5, window=4)
    assert goodness_of_fit(codes, exact) < 1e-12


def test_window_forward_matches_teacher_forcing():
    """Per-row positions: each row's window sees its own cached prefix, same logits as the full forward."""
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("gpt-test", block_size=16)).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.3)
    labels, codes = torch.tensor([0, 3, 7]), torch.randint(0, 512, (3, 16))
    with torch.no_grad():
        ref = gpt(codes, labels)  # (3, 17, V)
        dec = WindowDecoder(gpt, 3, 24)
        first = dec.forward(gpt.cls_embedding(labels), torch.zeros(3, dtype=torch.long), 1)
        torch.testing.assert_close(first[:, 0], ref[:, 0], rtol=0, atol=1e-5)
        dec.forward(gpt.tok_embeddings(codes[:, :10]), torch.ones(3, dtype=torch.long), 11)  # fill the prefix
        start = torch.tensor([2, 5, 9])  # windows at different places, overwriting stale slots after them
        tokens = start[:, None] + torch.arange(4)  # token indices (3, 4)
        out = dec.forward(gpt.tok_embeddings(codes.gather(1, tokens)), start + 1, int(start.max()) + 5)
    torch.testing.assert_close(out, ref.gather(1, (tokens + 1)[..., None].expand(-1, -1, 512)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [1, 2, 5, 64])
def test_greedy_jacobi_equals_greedy_decoding(window):
    torch.manual_seed(1)
    gpt = GPT(gpt_preset("gpt-test", block_size=16)).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.3)
    labels = torch.tensor([1, 4, 6, 9])
    for scale in (1.0, 3.0):
        greedy = sample(gpt, labels, temperature=0, cfg_scale=scale)
        codes, steps = sample(gpt, labels, temperature=0, cfg_scale=scale, method="jacobi", window=window,
                              return_steps=True)
        assert torch.equal(codes, greedy)
        assert steps.shape == (4,) and bool((steps >= 1).all()) and bool((steps <= 16).all())
        if window == 1:
            assert steps.tolist() == [16] * 4


def test_rows_advance_at_their_own_pace_and_arguments_are_checked():
    torch.manual_seed(2)
    gpt = GPT(gpt_preset("gpt-test", block_size=16)).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.3)
    labels = torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    codes, steps = sample(gpt, labels, method="jacobi", window=6, top_k=4, generator=gen, return_steps=True)
    assert codes.shape == (10, 16) and codes.dtype == torch.long and int(codes.max()) < 512
    assert len(set(steps.tolist())) > 1  # not every row needed the same number of passes
    _, ar_steps = sample(gpt, labels, return_steps=True)
    assert ar_steps.tolist() == [16] * 10
    with pytest.raises(ValueError, match="method"):
        sample(gpt, labels, method="lookahead")
    with pytest.raises(ValueError, match="window"):
        sample(gpt, labels, method="jacobi", window=0)
    with pytest.raises(ValueError, match="compile"):
        sample(gpt, labels, method="jacobi", compile=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_distribution_and_greedy(tiny_gpt):
    """The same sampler on CUDA: the exact distribution (CFG, top-p, temperature) and greedy == greedy decoding."""
    gpt = GPT(tiny_gpt.config).cuda().eval()
    gpt.load_state_dict(tiny_gpt.state_dict())
    scale, sampling = CASES["cfg-topp"]["scale"], CASES["cfg-topp"]["sampling"]
    labels = torch.full((NUM,), LABEL, device="cuda")
    codes, steps = sample(gpt, labels, cfg_scale=scale, method="jacobi", window=4, return_steps=True,
                          generator=torch.Generator("cuda").manual_seed(0), **sampling)
    assert codes.is_cuda and steps.float().mean() < TOKENS
    assert goodness_of_fit(codes.cpu(), exact_distribution(tiny_gpt, scale, **sampling)) > 1e-3
    torch.manual_seed(1)
    big = GPT(gpt_preset("gpt-test", block_size=64)).cuda().eval()
    torch.nn.init.normal_(big.output.weight, std=0.3)
    labels = torch.tensor([1, 4, 6, 9], device="cuda")
    greedy = sample(big, labels, temperature=0, cfg_scale=2.0)
    assert torch.equal(sample(big, labels, temperature=0, cfg_scale=2.0, method="jacobi", window=16), greedy)
