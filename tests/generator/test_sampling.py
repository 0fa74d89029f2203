"""Sampling: official generate() equivalence, KV cache == full recompute, CFG schedules, filtering, labels."""

from __future__ import annotations

import math
import os

import pytest
import torch

from vfmtok.generator import GPT, balanced_labels, cfg_scales, generate, gpt_preset, sample
from vfmtok.generator.fast_decode import FastDecoder
from vfmtok.generator.sampling import apply_cfg, filter_logits, sample_logits
from vfmtok.ops import decode_triton


def _tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("gpt-test", **overrides))
    torch.nn.init.normal_(gpt.output.weight, std=0.3)
    return gpt.eval()


def _forced(tokens: torch.Tensor, record: list):
    def pick(logits: torch.Tensor, step: int) -> torch.Tensor:
        record.append(logits.clone())
        return tokens[:, step]

    return pick


@pytest.mark.parametrize("baseline", [None, "official", "plain"])
def test_generate_logits_match_official(official_gpt, baseline):
    gpt, io, tol = official_gpt
    seen: list = []
    codes = generate(gpt, io["labels"], _forced(io["tokens"], seen), baseline=baseline)
    assert torch.equal(codes, io["tokens"])
    steps = torch.stack(seen, 1)  # (2, 256, V): every step, CFG off
    assert (steps[:, :16] - io["gen_logits"]).abs().max().item() <= tol["gen_logits"]
    assert (steps - io["tf_logits"]).abs().max().item() <= tol["tf_logits"]

    seen.clear()
    generate(gpt, io["labels"], _forced(io["tokens"], seen), cfg_scale=1.5, baseline=baseline)
    guided = torch.stack(seen, 1)[:, :16]
    assert (guided - io["gen_cfg_logits"]).abs().max().item() <= tol["gen_cfg_logits"]


def test_cfg_halves_match_official(official_gpt):
    gpt, io, tol = official_gpt
    labels, tokens = io["labels"], io["tokens"]
    rows = torch.cat([labels, torch.full_like(labels, gpt.config.null_class)])
    with torch.no_grad():
        cache = gpt.new_cache(4)
        out = [gpt.prefill(rows, cache)]
        for t in range(15):
            out.append(gpt.decode_step(torch.cat([tokens[:, t], tokens[:, t]])[:, None], cache, t + 1))
    both = torch.stack(out, 1)  # (4, 16, V)
    cond, uncond = both[:2], both[2:]
    assert (cond - io["gen_cfg_cond_logits"]).abs().max().item() <= tol["gen_cfg_cond_logits"]
    assert (uncond - io["gen_cfg_uncond_logits"]).abs().max().item() <= tol["gen_cfg_uncond_logits"]
    combined = torch.stack([apply_cfg(both[:, s], 1.5) for s in range(16)], 1)
    assert (combined - io["gen_cfg_logits"]).abs().max().item() <= tol["gen_cfg_logits"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.7, top_k=20),
        dict(temperature=1.3, top_p=0.8),
        dict(top_k=50, top_p=0.9, cfg_scale=3.0),
        dict(cfg_scale=2.0, cfg_schedule="power-cosine", cfg_power=2.0, cfg_interval=(4, 30)),
    ],
)
def test_kv_cache_equals_full_recompute(kwargs):
    gpt = _tiny(block_size=36)  # 6 x 6 token grid
    labels = torch.tensor([0, 3, 7, 9])
    runs = {}
    for baseline in (None, "plain", "official"):
        gen = torch.Generator().manual_seed(123)
        runs[baseline] = sample(gpt, labels, generator=gen, baseline=baseline, **kwargs)
    assert runs[None].shape == (4, 36) and runs[None].dtype == torch.long
    assert torch.equal(runs[None], runs["plain"])
    assert torch.equal(runs[None], runs["official"])
    assert len(set(runs[None].flatten().tolist())) > 20  # really sampled, not collapsed


@pytest.mark.parametrize(
    "options",
    [{"fuse": False}, {"fuse": False, "fuse_w13": False}, True, {"compile_mode": "max-autotune-no-cudagraphs"},
     {"fuse": False, "streams": 2}],
    ids=["eager", "eager-unfused-w13", "compiled", "compiled-autotune", "eager-two-row-groups"],
)
def test_fast_path_equals_plain_path(options):
    """The fast decoder (issue 6) gives the plain path's tokens, same seed, fp32 on CPU; also after weight updates."""
    gpt = _tiny(block_size=16)
    labels = torch.tensor([0, 3, 7])
    for kwargs in (dict(temperature=0.7, top_k=20), dict(cfg_scale=3.0, top_p=0.9)):
        plain = sample(gpt, labels, generator=torch.Generator().manual_seed(1), baseline="plain", **kwargs)
        fast = sample(gpt, labels, generator=torch.Generator().manual_seed(1), compile=options, **kwargs)
        assert torch.equal(plain, fast), kwargs
        assert len(set(fast.flatten().tolist())) > 10
    with torch.no_grad():  # the cached decoder must see in-place weight updates (fused w1/w3 re-copied)
        for layer in gpt.layers:
            layer.feed_forward.w3.weight.mul_(1.5)
    plain = sample(gpt, labels, generator=torch.Generator().manual_seed(2), cfg_scale=3.0, baseline="plain")
    fast = sample(gpt, labels, generator=torch.Generator().manual_seed(2), cfg_scale=3.0, compile=options)
    assert torch.equal(plain, fast)


@pytest.mark.skipif(not decode_triton.triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs triton and TRITON_INTERPRET=1 (the Triton kernels on CPU)")
def test_triton_kernels_path_equals_plain_path():
    """kernels='triton' (five Triton kernels per layer, for batch 1 on CUDA) gives the plain path's tokens in fp32."""
    gpt = _tiny(block_size=16)
    for labels, kwargs in ((torch.tensor([4]), dict(temperature=0.7, top_k=20)),
                           (torch.tensor([0, 3]), dict(cfg_scale=3.0, top_p=0.9))):
        plain = sample(gpt, labels, generator=torch.Generator().manual_seed(1), baseline="plain", **kwargs)
        fast = sample(gpt, labels, generator=torch.Generator().manual_seed(1), compile={"kernels": "triton"}, **kwargs)
        assert torch.equal(plain, fast), kwargs
        assert len(set(fast.flatten().tolist())) > 5


@pytest.mark.skipif(not decode_triton.triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs triton and TRITON_INTERPRET=1 (the Triton kernels on CPU)")
def test_split_attention_path_equals_plain_path():
    """attn_backend='triton' (the flash-decoding kernel between the layer halves) gives the plain path's tokens in
    fp32, CFG rows included."""
    gpt = _tiny(block_size=16)
    labels = torch.tensor([0, 3])
    kwargs = dict(cfg_scale=3.0, top_p=0.9)
    plain = sample(gpt, labels, generator=torch.Generator().manual_seed(1), baseline="plain", **kwargs)
    fast = sample(gpt, labels, generator=torch.Generator().manual_seed(1),
                  compile={"fuse": False, "attn_backend": "triton"}, **kwargs)
    assert torch.equal(plain, fast)
    assert len(set(fast.flatten().tolist())) > 5


def test_auto_kernels_fall_back_to_torch_when_triton_fails(monkeypatch, caplog):
    """kernels='auto' on a GPU where the Triton kernels fail (simulated): a warning, then the PyTorch path's tokens."""
    from vfmtok.generator import fast_decode

    def broken(*args, **kwargs):
        raise RuntimeError("simulated: PTX assembly failed")

    monkeypatch.setattr(fast_decode, "_auto_kernels", lambda weight, rows: "triton")
    monkeypatch.setattr(decode_triton, "norm_qkv_rope", broken)
    gpt = _tiny(block_size=16)
    labels = torch.tensor([2])
    with caplog.at_level("WARNING", logger="vfmtok.generator.fast_decode"):
        fast = sample(gpt, labels, generator=torch.Generator().manual_seed(4), compile={"fuse": False}, top_k=20)
    assert "falls back to 'torch'" in caplog.text and "PTX assembly failed" in caplog.text
    plain = sample(gpt, labels, generator=torch.Generator().manual_seed(4), baseline="plain", top_k=20)
    assert torch.equal(fast, plain)
    with pytest.raises(RuntimeError, match="simulated"):  # an explicit kernels='triton' does not hide the failure
        FastDecoder(gpt, 1, kernels="triton").prefill(labels)


def test_triton_kernels_option_is_checked():
    gpt = _tiny(block_size=16)
    with pytest.raises(ValueError, match="kernels"):
        FastDecoder(gpt, 2, kernels="cutlass")
    with pytest.raises(ValueError, match="at most"):
        FastDecoder(gpt, decode_triton.MAX_ROWS + 1, kernels="triton")
    assert FastDecoder(gpt, 1, fuse=False).kernels == "torch"  # "auto" on CPU: the PyTorch path
    assert FastDecoder(gpt, 1, fuse=False).attn_backend is None  # "auto" on CPU: SDPA
    with pytest.raises(ValueError, match="streams"):
        FastDecoder(gpt, 2, fuse=False, streams=3)


def test_official_baseline_compiled_matches_eager():
    gpt = _tiny(block_size=16)
    labels = torch.tensor([2, 5])
    eager = sample(gpt, labels, generator=torch.Generator().manual_seed(3), baseline="official", cfg_scale=2.0)
    compiled = sample(gpt, labels, generator=torch.Generator().manual_seed(3), baseline="official", cfg_scale=2.0,
                      compile=True)
    assert torch.equal(eager, compiled)


def test_same_generator_state_same_codes():
    gpt = _tiny(block_size=16)
    labels = torch.tensor([1, 2, 3])
    first = sample(gpt, labels, generator=torch.Generator().manual_seed(7), cfg_scale=2.0)
    assert torch.equal(first, sample(gpt, labels, generator=torch.Generator().manual_seed(7), cfg_scale=2.0))
    assert not torch.equal(first, sample(gpt, labels, generator=torch.Generator().manual_seed(8), cfg_scale=2.0))


def test_sample_restores_mode_and_checks_arguments():
    gpt = _tiny().train()
    codes = sample(gpt, torch.tensor([1]), temperature=0)  # greedy
    assert gpt.training and codes.shape == (1, 64)
    with torch.no_grad():
        first = gpt.eval()(codes[:, :0], torch.tensor([1]))[:, -1]
    assert codes[0, 0] == first.argmax()
    with pytest.raises(ValueError, match="top_p"):
        sample(gpt, torch.tensor([1]), top_p=0.0)
    with pytest.raises(ValueError, match="baseline"):
        sample(gpt, torch.tensor([1]), baseline="fast")
    with pytest.raises(ValueError, match="compile"):
        sample(gpt, torch.tensor([1]), compile=True, baseline="plain")
    with pytest.raises(ValueError, match="fast-decoder options"):
        sample(gpt, torch.tensor([1]), compile={"fusion": True})
    with pytest.raises(ValueError, match="compile_mode"):
        sample(gpt, torch.tensor([1]), compile={"compile_mode": "reduce-overhead"})
    with pytest.raises(ValueError, match="attn_backend"):
        sample(gpt, torch.tensor([1]), compile={"attn_backend": "fast"})
    with pytest.raises(ValueError, match="null class"):
        sample(_tiny(class_dropout_prob=0.0), torch.tensor([1]), cfg_scale=2.0)


def test_cfg_scales_schedules():
    n, s = 8, 3.0
    assert torch.equal(cfg_scales(n, s), torch.full((n,), s))
    lin = cfg_scales(n, s, "linear")
    assert lin[0] == 1.0 and torch.allclose(lin, 1 + 2 * torch.arange(n) / n)
    pc = cfg_scales(n, s, "power-cosine", power=2.0)
    r = torch.arange(n, dtype=torch.float64) / n
    assert torch.allclose(pc.double(), 1 + 2 * (1 - torch.cos(math.pi * r**2)) / 2, atol=1e-6)
    assert bool((pc[1:] >= pc[:-1]).all()) and pc[0] == 1.0
    win = cfg_scales(n, s, interval=(2, 5))
    assert win.tolist() == [1, 1, 3, 3, 3, 1, 1, 1]
    assert cfg_scales(n, s, interval=(6, None)).tolist() == [1] * 6 + [3, 3]
    with pytest.raises(ValueError, match="schedule"):
        cfg_scales(n, s, "cosine")


def test_cfg_interval_outside_uses_conditional_logits():
    gpt = _tiny()
    labels = torch.tensor([2, 4])
    tokens = torch.randint(0, 512, (2, 64))
    plain: list = []
    generate(gpt, labels, _forced(tokens, plain))
    guided: list = []
    generate(gpt, labels, _forced(tokens, guided), cfg_scale=4.0, cfg_interval=(10, 20))
    for t in (0, 9, 20, 63):
        torch.testing.assert_close(guided[t], plain[t], rtol=0, atol=1e-5)
    assert not torch.allclose(guided[15], plain[15])


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, 3.0], [0.5, 0.4, 0.3, 0.2, 0.1]])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0]).tolist() == [True, False, True, True, False]
    assert torch.isfinite(top2[1]).tolist() == [True, True, False, False, False]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    nucleus = filter_logits(probs.log(), top_p=0.7)  # keeps 0.5 and the token that crosses 0.7
    assert torch.isfinite(nucleus).tolist() == [[True, True, False, False]]
    tiny = filter_logits(probs.log(), top_p=0.1)  # always keeps the most likely token
    assert torch.isfinite(tiny).tolist() == [[True, False, False, False]]
    assert torch.equal(filter_logits(logits), logits)


def test_sample_logits_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1, 0.0]))[None].expand(20000, -1)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_logits(logits, generator=gen), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.015)
    top1 = sample_logits(logits[:100], top_k=1, generator=gen)
    assert torch.all(top1 == 0)
    hot = sample_logits(logits, temperature=2.0, generator=gen)  # flatter: more mass on the tail
    assert (hot == 2).float().mean() > 0.15


def test_balanced_labels():
    labels = balanced_labels(2500, 1000, seed=3)
    counts = torch.bincount(labels, minlength=1000)
    assert labels.shape == (2500,) and counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 500
    assert torch.equal(torch.sort(labels[:1000]).values, torch.arange(1000))
    assert torch.equal(labels, balanced_labels(2500, 1000, seed=3))
    assert not torch.equal(labels, balanced_labels(2500, 1000, seed=4))
    sub = balanced_labels(9, 10, seed=0, classes=[2, 5, 7])
    assert sorted(sub.tolist()) == [2, 2, 2, 5, 5, 5, 7, 7, 7]
    with pytest.raises(ValueError, match="classes"):
        balanced_labels(4, 10, classes=[3, 12])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "compile", [True, {"fuse": False}, {"kernels": "triton"}, {"attn_backend": "triton"},
                {"attn_backend": "triton", "streams": 2}],
    ids=["fused", "graphs-only", "triton-kernels", "split-attention", "split-attention-two-streams"],
)
def test_cuda_graph_paths_match_eager(compile):
    """fp32 on CUDA: same tokens as the eager path (the Triton kernels: PDL launches inside the captured graphs)."""
    options = compile if isinstance(compile, dict) else {}
    if "triton" in (options.get("kernels"), options.get("attn_backend")) and not decode_triton.triton_available():
        pytest.skip("triton is not installed")
    gpt = _tiny().cuda()
    labels = torch.tensor([0, 3, 7, 9], device="cuda")
    kwargs = dict(cfg_scale=2.0, top_k=40, temperature=0.9)
    eager = sample(gpt, labels, generator=torch.Generator("cuda").manual_seed(5), **kwargs)
    graphed = sample(gpt, labels, generator=torch.Generator("cuda").manual_seed(5), compile=compile, **kwargs)
    assert torch.equal(eager, graphed)
    again = sample(gpt, labels, generator=torch.Generator("cuda").manual_seed(5), compile=compile, **kwargs)
    assert torch.equal(again, graphed)
    plain = sample(gpt, labels[:3], generator=torch.Generator("cuda").manual_seed(6), **kwargs)
    assert torch.equal(plain, sample(gpt, labels[:3], generator=torch.Generator("cuda").manual_seed(6),
                                     compile=compile, **kwargs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not decode_triton.triton_available(),
                    reason="needs CUDA and triton")
@pytest.mark.parametrize("options", [{"attn_backend": "triton"}, {"attn_backend": "triton", "kernels": "torch"}],
                         ids=["default-kernels", "torch-kernels"])
def test_split_attention_fast_path_equals_plain_path_on_cuda(options):
    """fp32 on CUDA: the fast path with the flash-decoding attention (8 rows, and 2 rows under CFG where
    kernels='auto' takes the small-batch kernels unless told otherwise) gives the plain path's tokens."""
    gpt = _tiny().cuda()
    for labels, kwargs in ((torch.arange(8, device="cuda"), dict(top_k=40, temperature=0.9)),
                           (torch.tensor([1], device="cuda"), dict(cfg_scale=2.0, top_p=0.9))):
        plain = sample(gpt, labels, generator=torch.Generator("cuda").manual_seed(7), baseline="plain", **kwargs)
        fast = sample(gpt, labels, generator=torch.Generator("cuda").manual_seed(7), compile=options, **kwargs)
        assert torch.equal(plain, fast), kwargs
