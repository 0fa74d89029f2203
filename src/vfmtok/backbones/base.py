"""The frozen vision-foundation-model interface every tokenizer consumes.

A backbone maps images in [-1, 1] to a list of tapped feature maps (the "levels" the region-adaptive encoder
samples) plus the semantic target the decoder's feature head reconstructs. It is frozen for good: parameters never
require grad, ``train()`` keeps it in eval mode, and the forward runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ConfigBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneConfig(ConfigBase):
    """Which frozen VFM to build and what to tap from it.

    ``kind`` selects the implementation: ``"dinov2"`` is vfmtok's own DINOv2 ViT (loads the official
    ``dinov2_vit*14[_reg4]_pretrain.pth`` state dicts strictly); ``"timm"`` and ``"hf"`` wrap a timm or Hugging Face
    transformers model named by ``name`` (optional extras). The tap spec is declarative: ``taps`` are 0-indexed block
    indices, ``tap_norm[i]`` says whether the final norm is applied to tap i, ``num_prefix_tokens`` (None: derived from
    the model) are dropped, and ``target_tap`` picks which tap is the semantic target.
    """

    kind: str = "dinov2"
    name: str = "dinov2_vitl14_reg4"
    # --- vfmtok's own DINOv2 ViT (kind == "dinov2") ---
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu" (ViT-g/14)
    mlp_act: str = "gelu"  # "mlp" FFN activation: "gelu" (exact, DINOv2) | "gelu_tanh" (DINO v1 ViT as timm builds it)
    patch_size: int = 14
    pos_embed_size: int = 518  # image size the position table was trained at (37 x 37 patches)
    num_register_tokens: int = 4
    layerscale: bool = True
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    # --- taps ---
    taps: tuple[int, ...] = (5, 11, 17, 23)
    tap_norm: tuple[bool, ...] = (False, False, False, True)
    target_tap: int = -1
    num_prefix_tokens: int | None = None
    # --- preprocessing (inputs arrive in [-1, 1]) ---
    input_size: int = 336
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # --- adapters: JSON of the wrapped library's own config, so a model can be rebuilt offline without downloads ---
    library_config: str = ""

    def __post_init__(self) -> None:
        if self.mlp_act not in ("gelu", "gelu_tanh"):
            raise ValueError(f"BackboneConfig.mlp_act must be 'gelu' or 'gelu_tanh', got {self.mlp_act!r}")
        if len(self.tap_norm) != len(self.taps):
            raise ValueError(f"BackboneConfig: tap_norm has {len(self.tap_norm)} entries, taps has {len(self.taps)}")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"BackboneConfig: input_size {self.input_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid at ``input_size``."""
        g = self.input_size // self.patch_size
        return (g, g)


class BackboneOutput(NamedTuple):
    """``levels``: list of (B, D_i, h_i, w_i) float feature maps, one per tap, in tap order.
    ``target``: (B, h*w, D_t) patch tokens of the semantic target (row-major: token j = patch (j // w, j % w))."""

    levels: list[Tensor]
    target: Tensor


class FrozenBackbone(nn.Module, abc.ABC):
    """Base class. Subclasses implement :meth:`extract` on preprocessed images."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    # -- frozen for good ---------------------------------------------------------------------------------------
    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:  # the backbone never trains, whatever `mode` says
        return super().train(False)

    # -- interface ---------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def feature_dims(self) -> tuple[int, ...]:
        """Channel width of each tapped level."""

    @property
    def target_dim(self) -> int:
        return self.feature_dims[self.config.target_tap]

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    def preprocess(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised with the backbone's mean/std, S = ``input_size``.

        Matches the official wrapper: bicubic antialiased resize (align_corners=True) when the size differs, clamp
        to [-1, 1], map to [0, 1], then (x - mean) / std.
        """
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = nn.functional.interpolate(x, size=(s, s), mode="bicubic", align_corners=True, antialias=True)
        x = x.clamp(-1.0, 1.0).add(1.0).div(2.0)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    @abc.abstractmethod
    def extract(self, x: Tensor) -> BackboneOutput:
        """Preprocessed images -> :class:`BackboneOutput`. Implemented by subclasses."""

    def forward(self, x: Tensor) -> BackboneOutput:
        """``x``: (B, 3, H, W) float in [-1, 1] -> :class:`BackboneOutput` (no grad, eval mode)."""
        if self.training:
            super().train(False)
        with torch.no_grad():
            return self.extract(self.preprocess(x))
