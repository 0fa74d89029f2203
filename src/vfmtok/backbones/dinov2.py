"""vfmtok's own DINOv2 ViT: a frozen feature extractor that loads the official checkpoints strictly.

DINOv2 (Oquab et al., arXiv 2304.07193) and "Vision Transformers Need Registers" (Darcet et al., arXiv 2309.16588).
The module tree mirrors the official ``DinoVisionTransformer`` (facebookresearch/dinov2, Apache-2.0) with
``block_chunks=0`` so that ``state_dict()`` has exactly the key layout of the released
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files::

    cls_token (1,1,D)  pos_embed (1,1+G*G,D)  [register_tokens (1,R,D)]  mask_token (1,D)
    patch_embed.proj.{weight (D,3,P,P), bias}
    blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}   (MLP FFN, ViT-S/B/L)
    blocks.N.{..., mlp.w12, mlp.w3, ...}                                                  (SwiGLU FFN, ViT-g)
    norm.{weight, bias}

The position-table interpolation follows the copy of DINOv2 vendored by VFMTok (CVMI-Lab/VFMTok 828c780,
``DinoVisionTransformer.interpolate_pos_encoding``): computed in float32, bicubic, ``antialias`` from the config and
always a ``scale_factor`` of ``(grid + interpolate_offset) / sqrt(N)``. (Upstream DINOv2 now passes ``size=`` when the
offset is 0; the two agree to float rounding.) Registers get no position embedding; the token layout is
``[CLS, registers, patches]``. All code here is written for vfmtok; nothing is copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hub import PretrainedMixin
from ..ops.precision import at_least_fp32
from .base import BackboneConfig, BackboneOutput, FrozenBackbone

__all__ = ["DinoV2Backbone", "swiglu_hidden_dim"]


def swiglu_hidden_dim(embed_dim: int, mlp_ratio: float) -> int:
    """Hidden width of DINOv2's ``SwiGLUFFNFused``: 2/3 of the MLP width, rounded up to a multiple of 8.

    ViT-g/14: ``int(1536 * 4) = 6144`` -> ``int(6144 * 2 / 3) = 4096`` -> 4096 (so ``mlp.w12`` is (8192, 1536)).
    """
    hidden = int(embed_dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> D-dim tokens (a strided conv; official ``PatchEmbed`` with no norm)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, H/P * W/P, D), row-major over the patch grid."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection (rows ordered [q; k; v], heads as (h c))."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, heads, c)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, c)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as the official q * c**-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma`` (CaiT); official init value 1.0 for every released DINOv2."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf by default; ``approximate="tanh"`` for DINO v1 ViTs) -> fc2."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class SwiGLUFFN(nn.Module):
    """ViT-g's FFN: packed ``w12`` holds [gate; up] along the output dim, ``silu(gate) * up`` then ``w3``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        d = config.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=config.ln_eps)
        self.attn = Attention(d, config.num_heads, config.qkv_bias)
        self.ls1 = LayerScale(d) if config.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=config.ln_eps)
        if config.ffn == "mlp":
            act = "tanh" if config.mlp_act == "gelu_tanh" else "none"
            self.mlp: nn.Module = Mlp(d, int(d * config.mlp_ratio), act)
        elif config.ffn == "swiglu":
            self.mlp = SwiGLUFFN(d, swiglu_hidden_dim(d, config.mlp_ratio))
        else:
            raise ValueError(f"BackboneConfig.ffn must be 'mlp' or 'swiglu', got {config.ffn!r}")
        self.ls2 = LayerScale(d) if config.layerscale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2Backbone(PretrainedMixin, FrozenBackbone):
    """Frozen DINOv2 ViT-{S,B,L,g}/14 with or without registers, tapped at ``config.taps``.

    Built from ``config`` alone (random init, frozen); weights arrive through :meth:`load_pretrained_state_dict`
    (official layout, strict). Only blocks up to the last tap run.

    Example::

        backbone = DinoV2Backbone(BACKBONE_PRESETS["dinov2-l14-reg4"])
        backbone.load_pretrained_state_dict(load_official_dinov2("dinov2_vitl14_reg4_pretrain.pth"))
        levels, target = backbone(x)  # x: (B, 3, H, W) in [-1, 1] -> 4 x (B, 1024, 24, 24), (B, 576, 1024)
    """

    config_class = BackboneConfig

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        if config.kind != "dinov2":
            raise ValueError(f"DinoV2Backbone needs BackboneConfig.kind == 'dinov2', got {config.kind!r}")
        if config.pos_embed_size % config.patch_size:
            raise ValueError(f"pos_embed_size {config.pos_embed_size} is not a multiple of patch {config.patch_size}")
        self.taps = tuple(self._normalise_tap(t, config.depth) for t in config.taps)
        d = config.embed_dim
        g = config.pos_embed_size // config.patch_size
        # Registration order follows the official module so state_dict() lists keys in the released order.
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, d))
        r = config.num_register_tokens
        self.register_tokens = nn.Parameter(torch.zeros(1, r, d)) if r else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.ln_eps)
        # Only used by iBOT masked training; kept so the official checkpoints load with strict=True.
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self._init_weights()
        self.freeze()

    @staticmethod
    def _normalise_tap(tap: int, depth: int) -> int:
        t = tap + depth if tap < 0 else tap
        if not 0 <= t < depth:
            raise ValueError(f"tap {tap} is out of range for a {depth}-block ViT")
        return t

    def _init_weights(self) -> None:
        """Official DINOv2 init (matters only for tests and structure checks; real weights are always loaded)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- properties -----------------------------------------------------------------------------------------------
    @property
    def feature_dims(self) -> tuple[int, ...]:
        return (self.config.embed_dim,) * len(self.taps)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS + registers (unless the config overrides it)."""
        if self.config.num_prefix_tokens is not None:
            return self.config.num_prefix_tokens
        return 1 + self.config.num_register_tokens

    # -- tokens ---------------------------------------------------------------------------------------------------
    def interpolate_pos_encoding(self, h: int, w: int) -> Tensor:
        """Position table for an ``h x w`` patch grid -> (1, 1 + h*w, D) float32 (float64 for a float64 table; or the
        stored table untouched).

        Same semantics as the official code: no resampling when the grid is the stored one; otherwise the patch
        part is resampled in float32 with ``scale_factor = (h + offset) / sqrt(N), (w + offset) / sqrt(N)``
        (bicubic, align_corners=False, antialias per config). The CLS entry passes through.
        """
        n = self.pos_embed.shape[1] - 1
        if h == w and h * w == n:
            return self.pos_embed
        m = math.isqrt(n)
        if m * m != n:
            raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
        pos = at_least_fp32(self.pos_embed)
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        d = patch_pos.shape[-1]
        off = self.config.interpolate_offset
        scale = ((h + off) / math.sqrt(n), (w + off) / math.sqrt(n))
        grid = patch_pos.reshape(1, m, m, d).permute(0, 3, 1, 2)  # (1, D, m, m)
        grid = F.interpolate(
            grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=self.config.interpolate_antialias
        )  # (1, D, h, w)
        if tuple(grid.shape[-2:]) != (h, w):
            raise ValueError(
                f"position-embedding resize gave a {tuple(grid.shape[-2:])} grid, expected {(h, w)}; "
                f"choose interpolate_offset > 0 to avoid the floating-point truncation"
            )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, d)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Preprocessed (B, 3, H, W) -> (B, 1 + R + h*w, D) tokens ``[CLS, registers, patches]`` with positions."""
        b, _, hh, ww = x.shape
        p = self.config.patch_size
        if hh % p or ww % p:
            raise ValueError(f"input size {(hh, ww)} is not a multiple of the patch size {p}")
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))  # (B, h*w, D)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1 + h*w, D)
        x = x + self.interpolate_pos_encoding(hh // p, ww // p).to(x.dtype)
        if self.register_tokens is not None:  # registers are inserted after the position embedding: none of their own
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_tokens(self, x: Tensor) -> list[Tensor]:
        """Preprocessed (B, 3, H, W) -> one (B, 1 + R + h*w, D) token tensor per tap, in tap order.

        Taps with ``tap_norm`` get the final LayerNorm; the others are the raw residual stream after that block.
        Blocks after the last tap are skipped.
        """
        x = self.prepare_tokens(x)
        taps, last = set(self.taps), max(self.taps)
        raw: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in taps:
                raw[i] = x
            if i == last:
                break
        return [self.norm(raw[t]) if norm else raw[t] for t, norm in zip(self.taps, self.config.tap_norm)]

    def extract(self, x: Tensor) -> BackboneOutput:
        """Preprocessed (B, 3, H, W) -> ``BackboneOutput``.

        ``levels``: one (B, D, h, w) map per tap (h = H / P); ``target``: (B, h*w, D) patch tokens of
        ``taps[target_tap]``, token j = patch (j // w, j % w). Prefix tokens (CLS, registers) are dropped.
        """
        h, w = x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size
        k = self.num_prefix_tokens
        patches = [t[:, k:] for t in self.forward_tokens(x)]  # each (B, h*w, D)
        levels = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in patches]  # each (B, D, h, w)
        return BackboneOutput(levels=levels, target=patches[self.config.target_tap])
