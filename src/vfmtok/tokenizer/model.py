"""VFMTok tokenizer: frozen VFM -> region-adaptive encoder -> L2-normalised VQ -> token decoder -> pixels + features.

``encoder_type="cnn"`` swaps the frozen VFM and its region-adaptive encoder for a VQGAN-style CNN trained from scratch
on pixels (:mod:`vfmtok.tokenizer.cnn_encoder`; ablation (d) of issue 8): same quantizer and decoders, no backbone, no
semantic reconstruction.

VFMTok (Zheng et al., "Vision Foundation Models as Effective Visual Tokenizers for Autoregressive Image Generation",
arXiv 2507.08441). Re-implemented from the paper and a reading of the official code (CVMI-Lab/VFMTok @ 828c780);
numerically checked against outputs of the official modules (tests/convert/test_official_vfmtok.py).

Usage::

    tok = VFMTokenizer.from_pretrained("path/to/dir")   # config.json + model.safetensors (backbone included)
    codes = tok.encode(x)          # x: (B, 3, H, W) float in [-1, 1] -> (B, L) int64
    x_rec = tok.decode(codes)      # -> (B, 3, S, S) float, same scale as x, unclamped (S = config.image_size)
    u8 = tok.decode_uint8(codes, size=256)   # (B, 256, 256, 3) uint8, the official gFID conversion
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import BackboneConfig, BackboneOutput
from ..config import ConfigBase, ConfigError
from ..hub import PretrainedMixin
from .cnn_encoder import CNNEncoder
from .decoder import TokenDecoder
from .encoder import EncoderRegions, RegionEncoder
from .pixel_decoder import PixelDecoder
from .quantizer import QuantizerOutput, VectorQuantizer


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(ConfigBase):
    """Every hyper-parameter of a VFMTok tokenizer. Defaults are the released model (``official`` preset).

    Widths of the VFM levels and of the semantic target, and the VFM patch grid, are read from the built backbone.
    With ``encoder_type="cnn"`` the ``backbone`` and the region-encoder fields (``quantization``, ``enc_*``,
    ``encoder_init``) are ignored and the ``cnn_*`` fields apply.
    """

    preset: str = ""  # name of the preset this config came from (informational)
    notes: str = ""
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    image_size: int = 336  # tokenizer input / output resolution (square)
    dim: int = 512  # encoder, decoder-transformer and z_channels width
    encoder_type: str = "vfm"  # "vfm": region-adaptive encoder on the frozen VFM (VFMTok); "cnn": VQGAN-style CNN
    # --- CNN encoder (encoder_type="cnn" only): len(cnn_ch_mult) - 1 stride-2 downsamplings, image_size -> anchor_grid
    cnn_ch: int = 128
    cnn_ch_mult: tuple[int, ...] = (1, 1, 1)
    cnn_res_blocks: int = 2
    # --- region-adaptive encoder ---
    quantization: str = "deformable"  # "deformable" (VFMTok) | "grid" (ablation: pooled fixed grid, no anchors)
    anchor_grid: int = 16  # g: g * g tokens (8 -> 64, 12 -> 144, 16 -> 256)
    enc_depth: int = 6
    enc_heads: int = 8  # deformable and self-attention heads (hard-coded 8 in the official code)
    enc_points: int = 4
    enc_ffn_dim: int = 1024  # official rule: min(4 * dim, 1024)
    enc_dropout: float = 0.0  # the official YAML's 0.1 never reached the encoder layers
    enc_causal: bool = True  # causal self-attention over the anchors (official)
    encoder_init: str = "official"  # "official" keeps the released no-op-xavier bug; "xavier" fixes it
    # --- quantizer ---
    codebook_size: int = 16384
    codebook_dim: int = 12
    commit_beta: float = 0.25
    entropy_ratio: float = 0.0
    entropy_temperature: float = 0.01
    # --- decoder transformer ---
    dec_depth: int = 6
    dec_heads: int = 8
    dec_mlp_dim: int = 2048  # SwiGLU hidden = (int(2/3 * mlp) + 7) // 8 * 8
    dec_attn_dropout: float = 0.1
    dec_registers: int = 4
    pixel_patch: int = 16  # pixel-query grid = image_size // pixel_patch (21 at 336)
    pixel_pos_resize: str = "official"  # "official": scale_factor=(g+0.1)/G bicubic quirk; "size": size=(g, g)
    # --- convolutional pixel decoder ---
    pix_ch: int = 128
    pix_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    pix_res_blocks: int = 2
    pix_dropout: float = 0.0

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"TokenizerConfig: {msg}")

        if self.encoder_type not in ("vfm", "cnn"):
            raise bad(f"encoder_type must be 'vfm' or 'cnn', got {self.encoder_type!r}")
        if self.encoder_type == "cnn":
            self._check_cnn(bad)
        if self.quantization not in ("deformable", "grid"):
            raise bad(f"quantization must be 'deformable' or 'grid', got {self.quantization!r}")
        if self.pixel_pos_resize not in ("official", "size"):
            raise bad(f"pixel_pos_resize must be 'official' or 'size', got {self.pixel_pos_resize!r}")
        if self.encoder_init not in ("official", "xavier"):
            raise bad(f"encoder_init must be 'official' or 'xavier', got {self.encoder_init!r}")
        if self.pixel_patch != 2 ** (len(self.pix_ch_mult) - 1):
            want = 2 ** (len(self.pix_ch_mult) - 1)
            raise bad(f"pixel_patch {self.pixel_patch} must be 2**(len(pix_ch_mult) - 1) = {want}")
        if self.image_size % self.pixel_patch:
            raise bad(f"image_size {self.image_size} is not a multiple of pixel_patch {self.pixel_patch}")
        for name, heads in (("enc_heads", self.enc_heads), ("dec_heads", self.dec_heads)):
            if self.dim % heads:
                raise bad(f"dim {self.dim} is not divisible by {name} {heads}")
        if any((self.pix_ch * m) % 32 for m in self.pix_ch_mult):
            raise bad("pixel-decoder widths pix_ch * pix_ch_mult must be multiples of 32 (GroupNorm)")
        if self.anchor_grid < 1 or self.codebook_size < 1:
            raise bad("anchor_grid and codebook_size must be positive")

    def _check_cnn(self, bad: Callable[[str], ConfigError]) -> None:
        if self.cnn_ch < 1 or not self.cnn_ch_mult or any(m < 1 for m in self.cnn_ch_mult):
            raise bad(f"cnn_ch ({self.cnn_ch}) and every cnn_ch_mult entry ({self.cnn_ch_mult}) must be positive")
        if any((self.cnn_ch * m) % 32 for m in (1, *self.cnn_ch_mult)):
            raise bad(f"CNN-encoder widths cnn_ch ({self.cnn_ch}) and cnn_ch * cnn_ch_mult {self.cnn_ch_mult} must "
                      "be multiples of 32 (GroupNorm)")
        if self.cnn_res_blocks < 1:
            raise bad(f"cnn_res_blocks must be >= 1, got {self.cnn_res_blocks}")
        factor = 2 ** (len(self.cnn_ch_mult) - 1)
        if self.image_size != self.anchor_grid * factor:
            want = self.image_size / max(self.anchor_grid, 1)
            raise bad(f"encoder_type='cnn': len(cnn_ch_mult) - 1 = {len(self.cnn_ch_mult) - 1} stride-2 "
                      f"downsamplings map image_size {self.image_size} to {self.image_size / factor:g}, not "
                      f"anchor_grid {self.anchor_grid} (needs a factor of {want:g}; cnn_ch_mult sets it)")

    @property
    def num_tokens(self) -> int:
        """Tokens per image, ``anchor_grid ** 2``."""
        return self.anchor_grid * self.anchor_grid

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of the token raster: token k sits at (k // g, k % g)."""
        return (self.anchor_grid, self.anchor_grid)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    @property
    def pixel_grid(self) -> int:
        return self.image_size // self.pixel_patch


class TokenizerOutput(NamedTuple):
    """Result of :meth:`VFMTokenizer.forward`.

    ``x_rec``: (B, 3, S, S) reconstruction, unclamped. ``feats_rec``: (B, G*G, D_t) predicted VFM target tokens
    (training mode, or when asked) else None. ``feats``: (B, G*G, D_t) the frozen VFM's target tokens (no grad); None
    (as is ``feats_rec``) for ``encoder_type="cnn"``, which has no VFM.
    ``z``: (B, L, e) L2-normalised latents. ``z_q``: (B, L, e) straight-through quantised latents. ``idx``: (B, L)
    int64. ``vq_loss`` / ``commit_loss`` (already x beta) / ``entropy_loss`` (already x ratio): float32 scalars.
    """

    x_rec: Tensor
    feats_rec: Tensor | None
    feats: Tensor | None
    z: Tensor
    z_q: Tensor
    idx: Tensor
    vq_loss: Tensor
    commit_loss: Tensor
    entropy_loss: Tensor


class VFMTokenizer(nn.Module, PretrainedMixin):
    """The VFMTok image tokenizer. Built from a :class:`TokenizerConfig` alone; weights arrive via ``from_pretrained``
    / ``load_state_dict`` (the frozen backbone's weights are part of the state dict under ``backbone.``).

    With ``config.encoder_type == "cnn"`` there is no backbone (``self.backbone is None``): ``encoder`` is a
    :class:`CNNEncoder` on the pixels, the token decoder has no semantic pass, and every backbone-only method
    (``backbone_features``, ``encode_features``, ``decode_semantic``, ``regions``) raises a ``ValueError`` saying so.
    """

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        from ..backbones.factory import build_backbone

        self.config = config
        self.encoder: RegionEncoder | CNNEncoder
        if config.encoder_type == "cnn":
            self.backbone = None
            self.encoder = CNNEncoder(config.dim, config.cnn_ch, config.cnn_ch_mult, config.cnn_res_blocks)
            # no VFM grid: the decoder's position table covers the pixel grid itself (no resize), no semantic head
            vfm_grid, target_dim = config.pixel_grid, 0
        else:
            self.backbone = build_backbone(config.backbone)
            vfm_grid, target_dim = self.backbone.grid[0], self.backbone.target_dim
            self.encoder = RegionEncoder(
                self.backbone.feature_dims, config.dim, config.enc_depth, config.enc_heads, config.enc_points,
                config.enc_ffn_dim, config.anchor_grid, config.quantization, config.enc_dropout, config.enc_causal,
                config.encoder_init,
            )
        self.quant_proj = nn.Linear(config.dim, config.codebook_dim)
        self.quantizer = VectorQuantizer(
            config.codebook_size, config.codebook_dim, config.commit_beta, config.entropy_ratio,
            config.entropy_temperature,
        )
        self.post_quant_proj = nn.Linear(config.codebook_dim, config.dim)
        self.token_decoder = TokenDecoder(
            config.dim, config.num_tokens, vfm_grid, config.pixel_grid, target_dim, config.dec_depth,
            config.dec_heads, config.dec_mlp_dim, config.dec_attn_dropout, config.dec_registers,
            config.pixel_pos_resize,
        )
        self.pixel_decoder = PixelDecoder(
            config.dim, config.pix_ch, config.pix_ch_mult, config.pix_res_blocks, config.pix_dropout
        )

    # ------------------------------------------------------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------------------------------------------------------
    def _check_images(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return x

    @property
    def has_backbone(self) -> bool:
        """False for ``encoder_type="cnn"`` (no frozen VFM)."""
        return self.backbone is not None

    def _require_backbone(self, what: str) -> None:
        if self.backbone is None:
            raise ValueError(f"{what} needs the frozen VFM, but this tokenizer has encoder_type='cnn' (no backbone)")

    def backbone_features(self, images: Tensor) -> BackboneOutput:
        """(B, 3, H, W) in [-1, 1] -> the frozen VFM's :class:`BackboneOutput` (cacheable for training)."""
        self._require_backbone("backbone_features")
        return self.backbone(self._check_images(images))

    def encode_features(self, features: BackboneOutput) -> Tensor:
        """Precomputed backbone output -> slots (B, L, dim), the encoder output before the quantizer."""
        self._require_backbone("encode_features")
        return self.encoder(features.levels)

    def encode_slots(self, images: Tensor) -> Tensor:
        """``images``: (B, 3, H, W) float in [-1, 1] -> slots (B, L, dim), the encoder output before the quantizer.

        VFM encoder: any H, W (the backbone resizes to its input size). CNN encoder: H = W = ``config.image_size``.
        """
        if self.backbone is not None:
            return self.encode_features(self.backbone_features(images))
        x = self._check_images(images)
        s = self.config.image_size
        if tuple(x.shape[-2:]) != (s, s):
            raise ValueError(f"encoder_type='cnn' encodes images of exactly {s} x {s}, got {tuple(x.shape[-2:])}")
        return self.encoder(x)  # (B, g*g, dim)

    def quantize(self, slots: Tensor) -> QuantizerOutput:
        """Slots (B, L, dim) -> :class:`QuantizerOutput` (z, z_q, idx, losses), all float32."""
        return self.quantizer(self.quant_proj(slots))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """``images``: (B, 3, H, W) float in [-1, 1] -> codes (B, L) int64 in [0, K). Runs without grad."""
        return self.quantize(self.encode_slots(images)).idx

    # ------------------------------------------------------------------------------------------------------------------
    # decoding
    # ------------------------------------------------------------------------------------------------------------------
    def codes_to_embeddings(self, codes: Tensor) -> Tensor:
        """``codes``: (B, L) int64 -> (B, L, e) float32 unit-norm code vectors."""
        self._check_codes(codes)
        return self.quantizer.lookup(codes)

    def post_quant_embeddings(self, codes: Tensor) -> Tensor:
        """``codes``: (B, L) -> (B, L, dim) token embeddings after the post-quant projection (the decoder's memory
        before its position term; mean-pool them for a linear probe)."""
        return self.post_quant_proj(self.codes_to_embeddings(codes))

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Quantised latents (B, L, e) -> image (B, 3, S, S), unclamped."""
        return self.pixel_decoder(self.token_decoder.forward_pixels(self.post_quant_proj(z_q)))

    def decode(self, codes: Tensor) -> Tensor:
        """``codes``: (B, L) int64 -> (B, 3, S, S) float on the input scale ([-1, 1] nominal), unclamped."""
        return self.decode_latents(self.codes_to_embeddings(codes))

    def decode_semantic(self, codes: Tensor) -> Tensor:
        """``codes``: (B, L) -> (B, G*G, D_t) predicted VFM target tokens (the semantic pass; deterministic in eval)."""
        self._require_backbone("the semantic reconstruction (decode_semantic)")
        return self.token_decoder.forward_semantic(self.post_quant_embeddings(codes))

    @torch.no_grad()
    def decode_uint8(self, codes: Tensor, size: int | None = 256) -> Tensor:
        """Official gFID conversion: decode, bicubic resize (align_corners=False, no antialias) to ``size`` when it
        differs from the image size, ``x * 127.5 + 128``, clamp to [0, 255], truncate.

        Returns:
            (B, size, size, 3) uint8 (``size=None`` keeps the tokenizer's resolution).
        """
        x = self.decode(codes)
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def _check_codes(self, codes: Tensor) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.config.num_tokens:
            raise ValueError(f"expected codes of shape (B, {self.config.num_tokens}), got {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")

    # ------------------------------------------------------------------------------------------------------------------
    # training forward and introspection
    # ------------------------------------------------------------------------------------------------------------------
    def forward(
        self, images: Tensor, features: BackboneOutput | None = None, return_semantic: bool | None = None
    ) -> TokenizerOutput:
        """Full pass for training and evaluation.

        Args:
            images: (B, 3, H, W) float in [-1, 1] (VFM: only used by the backbone; pass ``features`` to skip it).
            features: optional precomputed :class:`BackboneOutput` of these images (feature caching; VFM only).
            return_semantic: run the semantic pass; default: in training mode only (as officially). Never for
                ``encoder_type="cnn"`` (asking for it raises).

        In training mode the decoder receives the straight-through ``z_q``; in eval mode it decodes the code rows of
        ``idx``, exactly as the official ``forward`` does.
        """
        if self.backbone is None:
            if features is not None:
                raise ValueError("encoder_type='cnn' has no backbone features: pass the images only (features=None)")
            if return_semantic:
                self._require_backbone("the semantic reconstruction (return_semantic=True)")
            feats, slots = None, self.encode_slots(images)
        else:
            feats = features if features is not None else self.backbone_features(images)
            slots = self.encode_features(feats)
        q = self.quantize(slots)
        h = self.post_quant_proj(q.z_q if self.training else self.quantizer.lookup(q.idx))  # (B, L, dim)
        x_rec = self.pixel_decoder(self.token_decoder.forward_pixels(h))
        semantic = (self.training if return_semantic is None else return_semantic) and feats is not None
        feats_rec = self.token_decoder.forward_semantic(h) if semantic else None
        l = q.losses
        target = feats.target if feats is not None else None
        return TokenizerOutput(x_rec, feats_rec, target, q.z, q.z_q, q.idx, l.vq, l.commit, l.entropy)

    @torch.no_grad()
    def regions(self, images: Tensor) -> EncoderRegions:
        """Deformable sampling locations (image-normalised (x, y) in [0, 1]) and attention weights of every encoder
        layer, token, head, level and point; see :class:`EncoderRegions`."""
        self._require_backbone("regions (deformable sampling locations)")
        return self.encoder.regions(self.backbone_features(images).levels)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the frozen backbone."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def train(self, mode: bool = True) -> VFMTokenizer:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.train(False)  # frozen for good
        return self
