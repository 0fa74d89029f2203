"""LlamaGen-compatible class-conditional GPT (the VFMTok AR generator), with a KV cache for fast decoding.

The network follows LlamaGen's ``autoregressive/models/gpt.py`` (FoundationVision/LlamaGen, MIT), which VFMTok uses
unchanged apart from adding a GPT-2B size (reference §3). Re-written here, with the same module names so that
official c2i checkpoints load key for key:

- sequence ``[class embedding, tok_emb(z_0 .. z_{T-1})]``; position 0 is the class token and ``logits[:, t]``
  predicts token ``t`` from the class and tokens ``< t``;
- pre-norm blocks: RMSNorm (computed in fp32) -> fused ``wqkv`` attention with 2-D RoPE -> ``wo``; RMSNorm ->
  SwiGLU ``w2(silu(w1 x) * w3 x)``; final RMSNorm and a bias-free ``output`` head (zero-initialised);
- 2-D RoPE on the ``g x g`` token grid (token k at row k // g, col k % g): the first half of each head's rotary
  pairs rotates with the row, the second half with the column, pairs are interleaved ``(x[2i], x[2i+1])``, and the
  class position gets an all-zero cos/sin table, which zeroes its q and k. That last quirk is LlamaGen's and is
  reproduced exactly, because the released weights were trained with it;
- the class embedding has ``num_classes + 1`` rows; the last row is the null class used for classifier-free
  guidance, and training replaces each label by it with probability ``class_dropout_prob``.

Decoding uses :class:`KVCache`: static per-layer buffers written in place. In the default ``"prefix"`` mode a
step attends over the filled prefix ``[:t+1]`` only (a view; no mask, no copy). ``"static"`` keeps every shape
fixed (full-length buffers plus a boolean mask built from a position tensor) for ``torch.compile``/CUDA graphs,
and ``"official"`` decodes the way LlamaGen's ``generate`` does (full-length mask, K/V copied every step) so
benchmarks can compare against it. The sampling loop itself lives in :mod:`vfmtok.generator.sampling`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigBase, ConfigError
from ..hub import PretrainedMixin

CACHE_MODES = ("prefix", "static", "official")


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is ``>= n``."""
    return n if n % k == 0 else n + k - n % k


@dataclasses.dataclass(frozen=True)
class GPTConfig(ConfigBase):
    """Hyper-parameters of the class-conditional GPT; field names follow LlamaGen's ``ModelArgs``.

    ``block_size`` is the number of image tokens, laid out on a square ``g x g`` grid for the 2-D RoPE. The FFN
    hidden width is ``find_multiple(int(ffn_dim_multiplier * int(2 * 4 * dim / 3)), multiple_of)``.
    """

    vocab_size: int = 16384
    block_size: int = 256
    num_classes: int = 1000
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    class_dropout_prob: float = 0.1
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.block_size, self.num_classes, self.dim, self.n_layer, self.n_head) < 1:
            raise ConfigError(f"GPTConfig: sizes must be positive, got {self}")
        if self.dim % self.n_head:
            raise ConfigError(f"GPTConfig: dim {self.dim} is not divisible by n_head {self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ConfigError(f"GPTConfig: head_dim {self.dim // self.n_head} must be a multiple of 4 (2-D RoPE)")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ConfigError(f"GPTConfig: block_size {self.block_size} must be a square (token grid)")
        for name in ("class_dropout_prob", "token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p",
                     "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def has_null_class(self) -> bool:
        # LlamaGen only allocates the null row when label dropout is on (``num_classes + use_cfg_embedding``).
        return self.class_dropout_prob > 0

    @property
    def null_class(self) -> int:
        """Label of the unconditional (null) class: ``num_classes``."""
        return self.num_classes


def rope_2d_table(grid_size: int, head_dim: int, base: float = 10000.0) -> Tensor:
    """LlamaGen's 2-D RoPE table, float32 on CPU.

    Returns:
        (1 + grid_size**2, head_dim // 2, 2) with ``[..., 0] = cos`` and ``[..., 1] = sin``. Row 0 (the class
        position) is all zeros; row 1 + k is token k at (k // grid_size, k % grid_size). Within a row, the first
        head_dim // 4 pairs rotate with the row index and the next head_dim // 4 with the column index, both with
        frequencies ``base ** (-2j / (head_dim / 2))``.
    """
    half = head_dim // 2
    # Same op order as LlamaGen (float32 exponent, then 1 / base**e) so the table matches it bit for bit.
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, device="cpu").float(), freqs)  # (g, head_dim // 4)
    grid = torch.cat(
        [angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )  # (g, g, head_dim // 2): row angles, then column angles
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)  # (g*g, head_dim // 2, 2)
    return torch.cat([torch.zeros(1, half, 2, device="cpu"), table])


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x`` (B, S, H, Dh) by ``rope`` (S, Dh // 2, 2); computed in fp32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, S, H, Dh/2, 2)
    r = rope.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * r[..., 0] - xs[..., 1] * r[..., 1], xs[..., 1] * r[..., 0] + xs[..., 0] * r[..., 1]], dim=-1
    )
    return out.flatten(3).type_as(x)


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling survivors by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


@dataclasses.dataclass
class KVCache:
    """Preallocated key/value buffers for incremental decoding, shared by all layers.

    Attributes:
        k, v: (n_layer, B, H, S_max, Dh) in the model dtype, written in place at the decoded positions.
        mode: ``"prefix"`` (attend over the filled prefix; positions are Python ints), ``"static"`` (fixed shapes;
            positions are int64 tensors, full-length attention under a mask) or ``"official"`` (LlamaGen's
            full-length boolean mask and per-step K/V copy).
        causal_mask: (B, S_max, S_max) bool, only for ``"official"``.
    """

    k: Tensor
    v: Tensor
    mode: str = "prefix"
    causal_mask: Tensor | None = None
    slots: Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise ValueError(f"unknown KV-cache mode {self.mode!r}; expected one of {CACHE_MODES}")
        self.slots = torch.arange(self.max_len, device=self.k.device)  # (S_max,) for the static mask

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, pos: int | Tensor, mask: Tensor | None) -> Tensor:
        """Write ``k``/``v`` at ``pos`` for ``layer`` and attend ``q`` over the cached keys.

        Args:
            q, k, v: (B, H, S, Dh) for the S new positions.
            pos: first new position (``"prefix"``) or the (S,) int64 positions (other modes).
            mask: (S, S_max) or (B, 1, S, S_max) bool attention mask for the non-prefix modes.

        Returns:
            (B, H, S, Dh) attention output.
        """
        kc, vc = self.k[layer], self.v[layer]
        if self.mode == "prefix":
            s = q.shape[2]
            end = pos + s
            kc[:, :, pos:end].copy_(k)
            vc[:, :, pos:end].copy_(v)
            keys, values = kc[:, :, :end], vc[:, :, :end]  # views of the filled prefix: no copy, no mask
            if s == 1:
                return F.scaled_dot_product_attention(q, keys, values)
            if pos == 0:
                return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            allowed = torch.ones(s, end, dtype=torch.bool, device=q.device).tril(pos)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        if self.mode == "static":
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)
        kc[:, :, pos] = k
        vc[:, :, pos] = v
        # LlamaGen copies the whole cache every step (``repeat_interleave`` by n_head // n_kv_head = 1).
        keys, values = kc.repeat_interleave(1, dim=1), vc.repeat_interleave(1, dim=1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / rms(x) * weight`` over the last dim, normalised in fp32 and cast back to x's dtype (LlamaGen)."""
    xf = x.float()
    return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x) * weight


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, normalised in fp32 and cast back (LlamaGen)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``, no biases."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden
        self.w1 = nn.Linear(config.dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(config.dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, config.dim, bias=False)  # down
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head self-attention with fused ``wqkv`` ([q; k; v] rows) and 2-D RoPE on q and k."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.dim, self.n_head, self.head_dim = config.dim, config.n_head, config.head_dim
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(
        self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int | Tensor = 0, mask: Tensor | None = None
    ) -> Tensor:
        b, s, _ = x.shape
        qkv = self.wqkv(x)  # (B, S, 3D): [q; k; v]
        # q and k are rotated in one call (same per-element arithmetic as rotating each; fewer kernel launches)
        qk = apply_rope(qkv[..., : 2 * self.dim].view(b, s, 2 * self.n_head, self.head_dim), rope)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, H, S, Dh) each
        v = qkv[..., 2 * self.dim :].view(b, s, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, Dh)
        if cache is None:
            dropout = self.attn_dropout_p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            out = cache.attend(self.layer_idx, q, k, v, pos, mask)
        out = out.transpose(1, 2).reshape(b, s, self.dim)  # (B, S, D)
        return self.resid_dropout(self.wo(out))


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, drop_path: float) -> None:
        super().__init__()
        self.attention = Attention(config, layer_idx)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path = drop_path

    def forward(
        self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int | Tensor = 0, mask: Tensor | None = None
    ) -> Tensor:
        attn = self.attention(self.attention_norm(x), rope, cache, pos, mask)
        h = x + _drop_path(attn, self.drop_path, self.training)
        return h + _drop_path(self.feed_forward(self.ffn_norm(h)), self.drop_path, self.training)


class LabelEmbedder(nn.Module):
    """Class embedding table with label dropout for classifier-free guidance (row ``num_classes`` = null)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_classes = config.num_classes
        self.dropout_prob = config.class_dropout_prob
        self.embedding_table = nn.Embedding(config.num_classes + int(config.has_null_class), config.dim)

    def forward(self, labels: Tensor) -> Tensor:
        """labels: (B,) int64 in [0, num_classes] -> (B, 1, D); labels are dropped to null in training."""
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)


class GPT(nn.Module, PretrainedMixin):
    """Class-conditional LlamaGen GPT over tokenizer codes.

    Example:
        >>> gpt = GPT.from_pretrained(path)            # dir with config.json + model.safetensors
        >>> logits = gpt(codes, labels)                # (B, T+1, vocab): logits[:, t] predicts codes[:, t]
    """

    config_class: ClassVar[type[ConfigBase]] = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding = LabelEmbedder(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        rates = torch.linspace(0, config.drop_path_rate, config.n_layer, device="cpu").tolist()
        self.layers = nn.ModuleList(TransformerBlock(config, i, rates[i]) for i in range(config.n_layer))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Not in the state dict (LlamaGen keeps it as a plain attribute); kept float32 by ``_apply`` below.
        self.register_buffer("freqs_cis", self._rope_table().to(self.output.weight.device), persistent=False)
        self.initialize_weights()

    def _rope_table(self) -> Tensor:
        c = self.config
        return rope_2d_table(c.grid_size, c.head_dim, c.rope_base)

    def initialize_weights(self) -> None:
        """LlamaGen init: every Linear and Embedding ~ N(0, initializer_range), norms 1, output head zero."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)
        # ``.to(dtype)`` / ``.half()`` would round the RoPE table; LlamaGen applies it in fp32 whatever the weights.
        if self.freqs_cis.dtype != torch.float32:
            self.freqs_cis = self._rope_table().to(self.freqs_cis.device)
        return self

    @property
    def num_tokens(self) -> int:
        return self.config.block_size

    # ------------------------------------------------------------------ full-sequence forward (training, plain)
    def forward(self, codes: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            codes: (B, T) int64 code indices in [0, vocab_size), T <= block_size (T may be 0).
            labels: (B,) int64 class labels in [0, num_classes]; ``num_classes`` is the null class.

        Returns:
            (B, T + 1, vocab_size) float32 logits; ``logits[:, t]`` predicts ``codes[:, t]`` from the class and
            ``codes[:, :t]`` (position T predicts the token after the last one given).
        """
        b, t = codes.shape
        if t > self.config.block_size:
            raise ValueError(f"got {t} tokens, the model holds at most block_size={self.config.block_size}")
        h = torch.cat([self.cls_embedding(labels), self.tok_embeddings(codes)], dim=1)  # (B, T+1, D)
        h = self.tok_dropout(h)
        rope = self.freqs_cis[: t + 1]  # (T+1, Dh/2, 2)
        for layer in self.layers:
            h = layer(h, rope)
        return self.output(self.norm(h)).float()  # (B, T+1, V)

    def loss(self, codes: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy of ``codes`` (B, T) given ``labels`` (B,) (LlamaGen's training loss)."""
        logits = self(codes[:, :-1], labels)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))

    # ------------------------------------------------------------------ KV-cached decoding
    def new_cache(
        self, batch_size: int, max_len: int | None = None, mode: str = "prefix", dtype: torch.dtype | None = None
    ) -> KVCache:
        """Allocate a :class:`KVCache` on the model's device.

        Args:
            batch_size: rows decoded together (2x the samples under CFG).
            max_len: positions to hold; default ``1 + block_size`` (``"official"`` rounds up to a multiple of 8
                as LlamaGen's ``setup_caches`` does).
            mode: ``"prefix"``, ``"static"`` or ``"official"`` (see :class:`KVCache`).
            dtype: cache dtype; default the embedding dtype.
        """
        c = self.config
        max_len = max_len or 1 + c.block_size
        if mode == "official":
            max_len = find_multiple(max_len, 8)
        weight = self.tok_embeddings.weight
        shape = (c.n_layer, batch_size, c.n_head, max_len, c.head_dim)
        k = torch.zeros(shape, dtype=dtype or weight.dtype, device=weight.device)
        v = torch.zeros_like(k)
        mask = None
        if mode == "official":
            mask = torch.ones(max_len, max_len, dtype=torch.bool, device=weight.device).tril()
            mask = mask.unsqueeze(0).repeat(batch_size, 1, 1)  # (B, S_max, S_max), as LlamaGen builds it
        return KVCache(k, v, mode=mode, causal_mask=mask)

    def prefill(self, labels: Tensor, cache: KVCache, pos: int | Tensor = 0) -> Tensor:
        """Run the class position through the cache.

        Args:
            labels: (B,) int64 class labels (null class allowed); B must equal ``cache.batch_size``.
            pos: 0, or the (1,) int64 position tensor holding 0 for the ``"static"``/``"official"`` modes.

        Returns:
            (B, vocab_size) float32 logits for the first image token.
        """
        return self._forward_cached(self.cls_embedding(labels), cache, pos)

    def decode_step(self, codes: Tensor, cache: KVCache, pos: int | Tensor) -> Tensor:
        """Feed one token per row at position ``pos`` (token ``t`` sits at position ``t + 1``).

        Args:
            codes: (B, 1) int64 code indices.
            pos: Python int (``"prefix"``) or (1,) int64 tensor on the model device (other modes).

        Returns:
            (B, vocab_size) float32 logits for the next token.
        """
        return self._forward_cached(self.tok_embeddings(codes), cache, pos)

    def _forward_cached(self, h: Tensor, cache: KVCache, pos: int | Tensor) -> Tensor:
        s = h.shape[1]
        mask = None
        if cache.mode == "prefix":
            rope = self.freqs_cis[pos : pos + s]  # (S, Dh/2, 2)
        else:
            rope = self.freqs_cis.index_select(0, pos)  # (S, Dh/2, 2)
            if cache.mode == "static":
                mask = cache.slots[None, :] <= pos[:, None]  # (S, S_max)
            else:
                mask = cache.causal_mask[: h.shape[0], None, pos]  # (B, 1, S, S_max)
        h = self.tok_dropout(h)
        for layer in self.layers:
            h = layer(h, rope, cache, pos, mask)
        return self.output(self.norm(h[:, -1])).float()  # (B, V)
