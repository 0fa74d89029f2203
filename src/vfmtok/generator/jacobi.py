"""Speculative Jacobi decoding (SJD, arXiv 2410.01699): several tokens per forward pass, the sampler's distribution.

One-token-per-step decoding streams the weights once per token. SJD keeps a window of ``K`` tokens per row and runs
them through the GPT in one forward pass (KV cache over the accepted prefix), which verifies every draft in the
window at once and proposes the next drafts. Per row and per iteration, with ``a`` the index of the window's first
token (the *anchor*, an exact sample of token ``a`` given the accepted codes ``z_<a``):

1. forward the window ``w_0 .. w_{K-1}`` (tokens ``a .. a+K-1``) at positions ``a+1 .. a+K``; output ``i`` is the
   distribution ``p_i`` of token ``a+i+1`` given ``z_<a, w_0 .. w_i``, processed exactly as the plain sampler does
   (CFG mix of the ``[cond; null]`` logits, temperature, top-k, top-p);
2. the anchor is kept; draft ``w_j`` (``j >= 1``), drawn earlier from a distribution ``q_j``, is accepted with
   probability ``min(1, p_{j-1}(w_j) / q_j(w_j))``, left to right, stopping at the first rejection;
3. the next anchor is drawn from the residual ``normalize(max(0, p_{j-1} - q_j))`` at the first rejection ``j``, or
   from ``p_{K-1}`` when every draft was accepted; the other window slots are re-drafted from this pass's outputs,
   shifted to their tokens (slots past the last output use ``p_{K-1}``), and their ``q`` remembered.

Why the output distribution is exactly the autoregressive one: when ``w_j`` is verified, every earlier window token
has been accepted, so ``p_{j-1}`` is the model's true conditional of token ``a+j`` given its (accepted) prefix, and
``w_j`` was drawn from ``q_j`` with fresh randomness that nothing before it in this verification depended on. That
is one step of speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with ``q_j`` as the draft model:
``P(token = x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) residual(x) = min(q(x), p(x)) +
max(0, p(x) - q(x)) = p(x)``. The anchor is such a token (accepted or residual-drawn) or a draw from the full
conditional, so it is exact too; every draft is verified at most once and then discarded or accepted. Each
iteration therefore fixes at least one token, and a window of ``K = 1`` is plain decoding, one token per pass.
The distribution test (``tests/generator/test_jacobi.py``) checks this by enumeration on a tiny GPT.

Rows of a batch advance at their own pace: each row's window sits at its own positions (per-row RoPE rows, K/V
written at per-row slots, a per-row causal mask), so the batch stays one forward pass per iteration; a finished row
rides along until the slowest row is done and its outputs are ignored. The window's K/V at rejected positions is
overwritten by the next window, which starts at the new anchor. Eager module path on CPU and CUDA (the fused
one-token decoder of :mod:`vfmtok.generator.fast_decode` is not used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .gpt import GPT, apply_rope
from .logits import apply_cfg, filter_logits


# ---------------------------------------------------------------------------------------------------- distributions
def token_probs(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The distribution the plain sampler draws from, as probabilities.

    Same arithmetic as :func:`~vfmtok.generator.logits.sample_logits`: float32, ``/ temperature`` (floored at
    1e-5; skipped at 1), top-k and top-p filtering, softmax. ``temperature <= 0`` (greedy) gives the one-hot of the
    argmax.

    Args:
        logits: (N, V) float.

    Returns:
        (N, V) float32 probabilities (rows sum to 1; filtered tokens are exactly 0).
    """
    if temperature <= 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-5)
    return filter_logits(logits, top_k, top_p).softmax(dim=-1)


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One categorical draw per row of ``probs`` (..., V) -> (...) int64, by the exponential race ``argmax(p / E)``
    (as the plain sampler draws)."""
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race.clamp_min(torch.finfo(race.dtype).tiny)).argmax(dim=-1)


def accept_probability(p: Tensor, q: Tensor) -> Tensor:
    """Speculative-sampling acceptance ``min(1, p(x) / q(x))`` of drafts ``x ~ q``, from ``p = p(x)`` and ``q = q(x)``
    (same shapes; ``q > 0`` since ``x`` was drawn from ``q``)."""
    return (p / q).clamp(max=1.0)


def residual(p: Tensor, q: Tensor) -> Tensor:
    """Where a rejected token is redrawn from: ``normalize(max(0, p - q))`` over the last dim (..., V).

    Rows where ``p <= q`` everywhere (then a rejection has probability 0; only rounding gets here) fall back to
    ``p``.
    """
    r = (p - q).clamp_min(0.0)
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(torch.finfo(r.dtype).tiny), p)


# ---------------------------------------------------------------------------------------------------- window decoder
class WindowDecoder:
    """KV-cached forward of ``S`` tokens per row, each row at its own positions.

    The cache holds ``max_len`` positions per row; a call writes the new K/V at positions ``start[r] .. start[r]+S-1``
    of row ``r`` and attends each new position over the row's keys at positions ``<=`` its own. Positions past the
    model's last one (``block_size``) only occur for tokens past the end of the sequence; they reuse the last RoPE
    row and their outputs are meaningless (callers ignore them).
    """

    def __init__(self, gpt: GPT, rows: int, max_len: int) -> None:
        c = gpt.config
        weight = gpt.tok_embeddings.weight
        self.gpt, self.rows, self.max_len = gpt, rows, max_len
        shape = (c.n_layer, rows, c.n_head, max_len, c.head_dim)
        self.k = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.v = torch.zeros_like(self.k)
        self.slots = torch.arange(max_len, device=weight.device)  # (S_max,)

    def forward(self, h: Tensor, start: Tensor, end: int) -> Tensor:
        """Run embedded inputs through the GPT.

        Args:
            h: (R, S, D) input embeddings (class embedding at position 0, token embeddings after).
            start: (R,) int64 position of each row's first input; ``start + S <= max_len``.
            end: Python int, ``> max(start + S - 1)`` over the rows whose outputs are used: keys at positions
                ``>= end`` are not read.

        Returns:
            (R, S, V) float32 logits; output ``s`` of row ``r`` predicts the token after position ``start[r] + s``.
        """
        gpt, c = self.gpt, self.gpt.config
        r, s, _ = h.shape
        hd, nh = c.head_dim, c.n_head
        pos = start[:, None] + self.slots[:s]  # (R, S)
        rope = gpt.freqs_cis[pos.clamp(max=c.block_size)].flatten(0, 1)  # (R*S, Dh/2, 2)
        allowed = (self.slots[:end] <= pos[..., None])[:, None]  # (R, 1, S, end)
        slots = pos[:, None, :, None].expand(r, nh, s, hd)  # (R, H, S, Dh) cache index along the position axis
        for i, layer in enumerate(gpt.layers):
            attn = layer.attention
            qkv = attn.wqkv(layer.attention_norm(h))  # (R, S, 3D)
            # RoPE per (row, position): rows and positions flattened into one sequence axis of apply_rope
            qk = apply_rope(qkv[..., : 2 * c.dim].reshape(1, r * s, 2 * nh, hd), rope).view(r, s, 2 * nh, hd)
            q, k = qk.transpose(1, 2).split(nh, dim=1)  # (R, H, S, Dh) each
            v = qkv[..., 2 * c.dim :].view(r, s, nh, hd).transpose(1, 2)  # (R, H, S, Dh)
            kc, vc = self.k[i], self.v[i]  # (R, H, S_max, Dh)
            kc.scatter_(2, slots, k)  # row r's new keys/values at its own positions
            vc.scatter_(2, slots, v)
            out = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end], attn_mask=allowed)
            h = h + attn.wo(out.transpose(1, 2).reshape(r, s, c.dim))
            h = h + layer.feed_forward(layer.ffn_norm(h))
        return gpt.output(gpt.norm(h)).float()  # (R, S, V)


# ---------------------------------------------------------------------------------------------------- sampler
@torch.no_grad()
def jacobi_sample(
    gpt: GPT,
    labels: Tensor,
    *,
    window: int = 16,
    scales: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Speculative Jacobi sampling of ``block_size`` tokens per label (see the module docstring).

    Called through :func:`vfmtok.generator.sampling.sample` with ``method="jacobi"``, which checks the arguments.

    Args:
        labels: (B,) int64 class labels in [0, num_classes].
        window: K >= 1 tokens per row per forward pass (K = 1: plain decoding).
        scales: (block_size,) float32 guidance scale per token (:func:`~vfmtok.generator.logits.cfg_scales`);
            any scale != 1 doubles the rows to ``[cond; null]``.
        temperature, top_k, top_p, generator: as :func:`~vfmtok.generator.sampling.sample`.

    Returns:
        codes: (B, block_size) int64 in [0, vocab_size) on the model's device.
        steps: (B,) int64 forward passes each row needed (the class prefill included; plain decoding: block_size).
    """

    n, v_size = gpt.num_tokens, gpt.config.vocab_size
    k_win = min(window, n)  # slots past the sequence's end are never verified
    device = gpt.tok_embeddings.weight.device
    labels = labels.to(device=device, dtype=torch.long)
    b = labels.shape[0]
    use_cfg = bool((scales != 1).any())
    rows = torch.cat([labels, torch.full_like(labels, gpt.config.null_class)]) if use_cfg else labels
    # scale of token t; tokens past the end (window slots beyond the sequence) get 1, their outputs are unused
    token_scale = torch.cat([scales.float(), torch.ones(2 * k_win + 1)]).to(device)

    def probs_of(logits: Tensor, token: Tensor) -> Tensor:
        """(R, S, V) logits predicting tokens ``token`` (B, S) -> (B, S, V) sampling distributions."""
        if use_cfg:
            logits = apply_cfg(logits, token_scale[token][..., None])  # (B, S, V)
        p = token_probs(logits.flatten(0, 1), temperature=temperature, top_k=top_k, top_p=top_p)
        return p.view(b, -1, v_size)

    def both(x: Tensor) -> Tensor:  # per-sample tensor -> per-row ([cond; null] rows share the window)
        return torch.cat([x, x]) if use_cfg else x

    was_training = gpt.training
    gpt.eval()
    try:
        # window slots reach position (n - 2 + K) + K: the farthest anchor of an unfinished row plus its window
        dec = WindowDecoder(gpt, rows.shape[0], n + 2 * k_win)
        slot = torch.arange(k_win, device=device)  # (K,)
        codes = torch.zeros(b, n + 2 * k_win, dtype=torch.long, device=device)  # tail: scratch for window writes
        start0 = torch.zeros(rows.shape[0], dtype=torch.long, device=device)
        p0 = probs_of(dec.forward(gpt.cls_embedding(rows), start0, 1), torch.zeros(b, 1, dtype=torch.long,
                                                                                    device=device))  # (B, 1, V)
        q = p0.expand(b, k_win, v_size).contiguous()  # (B, K, V): q[:, 0] is the anchor's exact conditional
        win = draw(q, generator)  # (B, K)
        a = torch.zeros(b, dtype=torch.long, device=device)  # anchor index per row
        steps = torch.ones(b, dtype=torch.long, device=device)  # the prefill
        codes[:, :k_win] = win
        while True:
            active = a < n - 1  # a row is done once its anchor is the last token (or past it)
            any_active, far = torch.stack([active.any().long(), torch.where(active, a, 0).max()]).tolist()
            if not any_active:
                break
            logits = dec.forward(gpt.tok_embeddings(both(win)), both(a + 1), far + k_win + 1)  # (R, K, V)
            p = probs_of(logits, a[:, None] + 1 + slot)  # (B, K, V): p[:, i] is token a + i + 1's distribution
            kept = torch.ones_like(a)  # window tokens kept per row (the anchor, then accepted drafts)
            if k_win > 1:
                drafts = win[:, 1:, None]  # (B, K-1, 1)
                p_x = p[:, :-1].gather(-1, drafts).squeeze(-1)  # (B, K-1)
                q_x = q[:, 1:].gather(-1, drafts).squeeze(-1)
                u = torch.rand(p_x.shape, device=device, generator=generator)
                ok = (u < accept_probability(p_x, q_x)) | (a[:, None] + 1 + slot[:-1] >= n)  # past the end: no check
                kept = kept + ok.long().cumprod(dim=1).sum(dim=1)  # (B,) in [1, K]
            # next anchor: token a + kept, from output kept - 1; residual if the draft there was rejected
            p_next = p.gather(1, (kept - 1)[:, None, None].expand(b, 1, v_size)).squeeze(1)  # (B, V)
            q_rej = q.gather(1, kept.clamp(max=k_win - 1)[:, None, None].expand(b, 1, v_size)).squeeze(1)
            anchor_dist = torch.where((kept < k_win)[:, None], residual(p_next, q_rej), p_next)
            # slot i >= 1 of the new window is token a + kept + i, predicted by output kept + i - 1 (or the last)
            src = (kept[:, None] + slot[1:] - 1).clamp(max=k_win - 1)  # (B, K-1)
            q_new = torch.cat([anchor_dist[:, None], p.gather(1, src[..., None].expand(-1, -1, v_size))], dim=1)
            win_new = draw(q_new, generator)  # (B, K); slot 0 is the new anchor
            a = torch.where(active, a + kept, a)  # finished rows stay where they are
            # the new window goes to codes[a : a + K]; tokens kept from this window are already in place
            at = a[:, None] + slot  # (B, K)
            codes.scatter_(1, at, torch.where(active[:, None], win_new, codes.gather(1, at)))
            steps += active.long()
            win = torch.where(active[:, None], win_new, win)
            q = torch.where(active[:, None, None], q_new, q)
    finally:
        gpt.train(was_training)
    return codes[:, :n], steps
