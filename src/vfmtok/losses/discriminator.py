"""Discriminators for tokenizer training: PatchGAN and a DINO-feature discriminator.

* :class:`PatchGANDiscriminator` — the pix2pix / taming-transformers ``NLayerDiscriminator`` (Isola et al. 2017;
  Esser et al. 2021): 4x4 convs, LeakyReLU 0.2, BatchNorm, per-patch logits; submodule names (``main.N``) follow the
  taming layout so its checkpoints map key for key.
* :class:`DinoDiscriminator` — the projected-GAN-style discriminator of StyleGAN-T (Sauer et al. 2023) as used by
  VAR's tokenizer recipe and by the official VFMTok trainer (``--disc-type dinogan``): a *frozen* ViT supplies token
  features at several depths and a trainable head per depth turns tokens into per-token logits. Each head is
  spectral-norm Conv1d(k=1) -> BatchNormLocal -> LeakyReLU, a residual block of the same with k=9 circular padding
  scaled by 1/sqrt(2), then a spectral-norm Conv1d to one channel. Official: DINO ViT-S/16 features after the patch
  embedding (+pos) and after blocks 2, 5, 8, 11, each as patch tokens plus the CLS token; 5 heads, about 7.39 M
  trainable parameters; inputs larger than 224 are randomly cropped to 224 with probability 0.5, otherwise
  area-resized to 224.

Here the frozen network is *any* feature function ``features(x) -> [(B, N_i, C_i), ...]`` taking images in [-1, 1]
(it applies its own mean/std): :func:`backbone_token_features` reads a frozen VFM's configured taps, and
:func:`vit_token_features` reproduces the reference reading (embedding + blocks 2, 5, 8, 11, CLS added). The
discriminator does not own that network: it is not a submodule (not in ``parameters()``, ``state_dict()`` or
``.to()``), and the caller moves it to the device. Gradients flow through it to the input image (the generator's
adversarial loss needs them) while its parameters stay frozen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..config import ConfigBase
from ..ops.precision import at_least_fp32

log = logging.getLogger(__name__)

FeatureFn = Callable[[Tensor], Sequence[Tensor]]


# ---------------------------------------------------------------------------------------------------------------------
# PatchGAN
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PatchGANConfig(ConfigBase):
    """taming ``NLayerDiscriminator`` settings (VFMTok's alternative ``--disc-type patchgan``: 3 layers, ndf 64)."""

    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator; ~2.77 M parameters at the defaults.

    Receptive field 70x70 at 3 layers; on a 256x256 input the logit map is 30x30.
    """

    def __init__(self, config: PatchGANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PatchGANConfig()
        ndf = config.ndf
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, config.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < config.n_layers else 1  # the last hidden conv keeps the resolution
            # BatchNorm follows, so these convs carry no bias
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN init, as taming: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, C, H, W) images in [-1, 1] -> (B, 1, h, w) per-patch logits."""
        return self.main(x)


# ---------------------------------------------------------------------------------------------------------------------
# DINO discriminator
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DinoDiscConfig(ConfigBase):
    """Heads and input policy of :class:`DinoDiscriminator`.

    ``feature_dims`` has one entry per feature level (one head each); the official DINO ViT-S/16 gives
    ``(384,) * 5``. ``input_size`` > 0 enables the official input policy (random ``input_size`` crop with probability
    ``crop_prob`` when both sides are larger, else resize to ``input_size``: area when shrinking, bicubic when
    enlarging); 0 passes images through unchanged (e.g. when the feature function resizes on its own).
    """

    feature_dims: tuple[int, ...] = (384, 384, 384, 384, 384)
    kernel_size: int = 9
    virtual_batch: int = 8
    norm_eps: float = 1e-6
    use_spectral_norm: bool = True
    input_size: int = 224
    crop_prob: float = 0.5

    def __post_init__(self) -> None:
        if not self.feature_dims:
            raise ValueError("DinoDiscConfig: feature_dims must name at least one feature level")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"DinoDiscConfig: kernel_size must be odd, got {self.kernel_size}")
        if self.virtual_batch < 1:
            raise ValueError(f"DinoDiscConfig: virtual_batch must be >= 1, got {self.virtual_batch}")


class BatchNormLocal(nn.Module):
    """Batch norm over "virtual" sub-batches, no running statistics (StyleGAN-T / VAR).

    The batch is split into ``G = ceil(B / virtual_batch)`` groups; each group is normalised with its own mean and
    (biased) variance over (samples, tokens), per channel. It therefore behaves identically in train and eval mode and
    never syncs across ranks. When ``G`` divides ``B`` the groups are equal, as in the reference; otherwise they
    differ in size by at most one (the reference would fail on such batches). Computed in float32.
    """

    def __init__(self, num_features: int, virtual_batch: int = 8, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.virtual_batch, self.eps = virtual_batch, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def _normalize(self, x: Tensor) -> Tensor:
        # x: (G, b, C, N); statistics over samples and tokens of each group
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, C, N) -> (B, C, N) float32 (float64 stays float64)."""
        b, c, n = x.shape
        x = at_least_fp32(x)
        groups = math.ceil(b / self.virtual_batch)
        if b % groups == 0:
            x = self._normalize(x.view(groups, b // groups, c, n)).view(b, c, n)
        else:
            x = torch.cat([self._normalize(part.unsqueeze(0)).squeeze(0) for part in x.tensor_split(groups)], dim=0)
        if self.weight is not None:
            x = x * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        return x


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) * (1.0 / math.sqrt(2.0))  # keeps unit variance for independent branches


class SpectralNorm(nn.Module):
    """Spectral normalisation ``W / sigma(W)`` as a parametrization, with the update order of the hook-based
    ``torch.nn.utils.spectral_norm`` that the official discriminator uses.

    In training mode every access runs ``n_power_iterations`` of ``v <- normalize(W^T u)``, ``u <- normalize(W v)``
    (in place, no gradient) and then ``sigma = u . W v``; in eval mode ``sigma`` uses the stored vectors. (torch's
    ``parametrizations.spectral_norm`` updates ``u`` first, then ``v``: the same fixed point, but a different
    ``sigma`` until the vectors have converged.) ``W`` is the weight flattened to (out, -1). State: buffers ``_u``
    (out,) and ``_v`` (in * k,), so the keys are those of ``parametrizations.spectral_norm``
    (``parametrizations.weight.0._u`` / ``._v``).
    """

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        self.n_power_iterations, self.eps = n_power_iterations, eps
        mat = weight.detach().flatten(1)
        self.register_buffer("_u", F.normalize(mat.new_empty(mat.shape[0]).normal_(0, 1), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(mat.new_empty(mat.shape[1]).normal_(0, 1), dim=0, eps=eps))
        self._power_iteration(mat, 15)  # start near the fixed point (initialisation only)

    @torch.no_grad()
    def _power_iteration(self, mat: Tensor, n: int) -> None:
        for _ in range(n):
            self._v.copy_(F.normalize(torch.mv(mat.t(), self._u), dim=0, eps=self.eps))
            self._u.copy_(F.normalize(torch.mv(mat, self._v), dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        mat = weight.flatten(1)
        if self.training:
            self._power_iteration(mat.detach(), self.n_power_iterations)
            u, v = self._u.clone(), self._v.clone()  # the in-place updates of the next access must not touch the graph
        else:
            u, v = self._u, self._v
        sigma = torch.dot(u, torch.mv(mat, v))
        return weight / sigma


def _conv1d(c_in: int, c_out: int, kernel: int, sn: bool) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular")
    if sn:
        parametrize.register_parametrization(conv, "weight", SpectralNorm(conv.weight))
    return conv


def _block(c: int, kernel: int, cfg: DinoDiscConfig) -> nn.Sequential:
    return nn.Sequential(_conv1d(c, c, kernel, cfg.use_spectral_norm),
                         BatchNormLocal(c, cfg.virtual_batch, cfg.norm_eps), nn.LeakyReLU(0.2))


class DinoDiscriminator(nn.Module):
    """Frozen-feature discriminator with per-token logits.

    Args:
        config: heads and input policy.
        features: frozen feature function, images (B, 3, S, S) in [-1, 1] -> list of ``len(config.feature_dims)``
            token tensors (B, N_i, C_i) with ``C_i = config.feature_dims[i]``. It must not run under ``no_grad``.
            If it is an ``nn.Module``, its parameters are set to ``requires_grad=False``.
    """

    def __init__(self, config: DinoDiscConfig, features: FeatureFn) -> None:
        super().__init__()
        self.config = config
        if isinstance(features, nn.Module) and any(p.requires_grad for p in features.parameters()):
            log.info("DinoDiscriminator: freezing the parameters of the feature network")
            features.requires_grad_(False)
        # a tuple hides the frozen network from parameters()/state_dict()/.to(): the discriminator does not own it
        self._features: tuple[FeatureFn] = (features,)
        self.heads = nn.ModuleList(
            nn.Sequential(_block(c, 1, config), _Residual(_block(c, config.kernel_size, config)),
                          _conv1d(c, 1, 1, config.use_spectral_norm))
            for c in config.feature_dims
        )

    def prepare_input(self, x: Tensor) -> Tensor:
        """Official input policy: (B, 3, H, W) -> (B, 3, S, S), S = ``config.input_size`` (identity when S is 0).

        One crop offset is shared by the whole batch; randomness comes from torch's global generator.
        """
        s = self.config.input_size
        if s <= 0:
            return x
        h, w = x.shape[-2:]
        if h > s and w > s and torch.rand(()).item() < self.config.crop_prob:
            top = int(torch.randint(0, h - s + 1, ()).item())
            left = int(torch.randint(0, w - s + 1, ()).item())
            return x[..., top : top + s, left : left + s]
        if (h, w) != (s, s):
            return F.interpolate(x, size=(s, s), mode="area" if h > s else "bicubic")
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, 3, H, W) images in [-1, 1] -> (B, sum_i N_i) float32 per-token logits, levels concatenated
        (float64 for a float64 discriminator and input)."""
        feats = self._features[0](self.prepare_input(at_least_fp32(x)))
        if len(feats) != len(self.heads):
            raise ValueError(f"DinoDiscriminator: the feature function returned {len(feats)} levels, the config has "
                             f"{len(self.heads)} heads (feature_dims={self.config.feature_dims})")
        b = x.shape[0]
        # (B, N_i) each
        logits = [head(at_least_fp32(f).transpose(1, 2)).view(b, -1) for head, f in zip(self.heads, feats)]
        return torch.cat(logits, dim=1)


def backbone_token_features(backbone: nn.Module) -> FeatureFn:
    """Feature function over a :class:`vfmtok.backbones.base.FrozenBackbone`, *with* gradients to the input.

    ``FrozenBackbone.forward`` runs under ``no_grad``; this calls ``backbone.extract(backbone.preprocess(x))``
    directly, so the input receives gradients while the (frozen, eval-mode) parameters do not. Each tapped level
    (B, D, h, w) becomes (B, h*w, D) tokens. Use ``DinoDiscConfig(feature_dims=backbone.feature_dims,
    input_size=0)`` since the backbone resizes to its own input size.
    """

    def features(x: Tensor) -> list[Tensor]:
        out = backbone.extract(backbone.preprocess(x))
        return [level.flatten(2).transpose(1, 2) for level in out.levels]  # (B, D, h, w) -> (B, h*w, D)

    return features


def vit_token_features(vit: nn.Module, depths: Sequence[int] = (2, 5, 8, 11), include_embedding: bool = True,
                       add_cls: bool = True) -> FeatureFn:
    """The official DINO-discriminator reading over a ViT backbone, *with* gradients to the input.

    Reads the tokens after the patch embedding (+ position embedding) when ``include_embedding`` and after each
    0-indexed block in ``depths``; each reading keeps the patch tokens and, with ``add_cls``, adds the CLS token to
    every one of them (as the reference does). Blocks after the last depth are not run. Gives
    ``len(depths) + include_embedding`` levels of (B, h*w, D).

    The images are normalised as the reference does, ``x * (0.5 / std) + (0.5 - mean) / std`` on the *unclamped*
    input (reconstructions outside [-1, 1] keep their values and gradients), and are not resized here: the
    discriminator's input policy (:meth:`DinoDiscriminator.prepare_input`) brings them to the ViT's size.

    ``vit`` is duck-typed: ``config.mean`` / ``config.std``, ``prepare_tokens(x) -> (B, P + h*w, D)`` with the CLS
    token first, ``blocks`` and ``num_prefix_tokens`` = P; e.g. :class:`vfmtok.backbones.dinov2.DinoV2Backbone`.
    """
    wanted, last = set(depths), max(depths)
    if last >= len(vit.blocks):
        raise ValueError(f"vit_token_features: depth {last} requested from a ViT with {len(vit.blocks)} blocks")
    mean, std = torch.tensor(vit.config.mean), torch.tensor(vit.config.std)
    scale, shift = (0.5 / std).view(1, 3, 1, 1), ((0.5 - mean) / std).view(1, 3, 1, 1)

    def features(x: Tensor) -> list[Tensor]:
        x = scale.to(x.device) * at_least_fp32(x) + shift.to(x.device)
        t = vit.prepare_tokens(x)  # (B, P + h*w, D)
        k = vit.num_prefix_tokens

        def read(tokens: Tensor) -> Tensor:
            patches = tokens[:, k:]  # (B, h*w, D)
            return patches + tokens[:, :1] if add_cls else patches

        out = [read(t)] if include_embedding else []
        for i, blk in enumerate(vit.blocks):
            t = blk(t)
            if i in wanted:
                out.append(read(t))
            if i == last:
                break
        return out

    return features
