"""Discriminators: shapes, parameter counts, BatchNormLocal, input policy, and gradient routing through a frozen
feature network (to the input, never to its parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.backbones.base import BackboneConfig, BackboneOutput, FrozenBackbone
from vfmtok.losses.adversarial import hinge_d_loss
from vfmtok.losses.discriminator import (
    BatchNormLocal,
    DinoDiscConfig,
    DinoDiscriminator,
    PatchGANConfig,
    PatchGANDiscriminator,
    SpectralNorm,
    backbone_token_features,
    vit_token_features,
)


class TinyViT(nn.Module):
    """Frozen toy feature network: 8x8 patches, three residual MLP "blocks", tokens after each."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        out = [t]
        for blk in self.blocks:
            t = t + blk(t)
            out.append(t)
        return out


class ToyBackbone(FrozenBackbone):
    """A FrozenBackbone whose forward runs under no_grad, like every real one."""

    def __init__(self) -> None:
        super().__init__(BackboneConfig(input_size=32, patch_size=8, taps=(0, 1), tap_norm=(False, False)))
        self.proj = nn.Conv2d(3, 12, 8, 8)
        self.mix = nn.Conv2d(12, 12, 1)
        self.freeze()

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return (12, 12)

    def extract(self, x: torch.Tensor) -> BackboneOutput:
        a = self.proj(x)
        b = self.mix(a).relu()
        return BackboneOutput(levels=[a, b], target=b.flatten(2).transpose(1, 2))


def test_patchgan_shape_params_and_input_gradient() -> None:
    d = PatchGANDiscriminator(PatchGANConfig())
    assert sum(p.numel() for p in d.parameters()) == 2_765_633  # taming NLayerDiscriminator(3, 64, 3)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits = d(x)
    assert logits.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    logits.mean().backward()
    assert x.grad.abs().sum() > 0
    assert list(d.state_dict())[:2] == ["main.0.weight", "main.0.bias"]  # taming key layout


def test_batchnorm_local_matches_per_group_statistics() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 5) * 3 + 1
    bn = BatchNormLocal(4, virtual_batch=8, eps=1e-6)
    y = bn(x)
    for grp in (slice(0, 8), slice(8, 16)):
        g = x[grp]
        mean = g.mean(dim=(0, 2), keepdim=True)
        var = g.var(dim=(0, 2), unbiased=False, keepdim=True)
        torch.testing.assert_close(y[grp], (g - mean) / torch.sqrt(var + 1e-6))
    torch.testing.assert_close(bn.eval()(x), y)  # no running statistics: eval == train
    # 9 samples -> ceil(9 / 8) = 2 groups of 5 and 4
    z = BatchNormLocal(4, virtual_batch=8)(x[:9])
    torch.testing.assert_close(z[5:], BatchNormLocal(4, virtual_batch=8)(x[5:9]))
    assert y.dtype == torch.float32 and BatchNormLocal(4)(x.bfloat16()).dtype == torch.float32
    assert BatchNormLocal(4)(x.double()).dtype == torch.float64  # a float32 island: at least float32


def test_dino_head_parameter_count_matches_reference() -> None:
    d = DinoDiscriminator(DinoDiscConfig(), lambda x: [])
    assert sum(p.numel() for p in d.parameters()) == 7_386_245  # ~7.39 M for 5 heads at width 384


def test_dino_disc_gradients_reach_input_but_not_the_frozen_network() -> None:
    torch.manual_seed(0)
    vit = TinyViT()
    d = DinoDiscriminator(DinoDiscConfig(feature_dims=(16,) * 4, input_size=32, virtual_batch=2), vit)
    assert not any(p.requires_grad for p in vit.parameters())  # frozen on construction
    assert all(k.startswith("heads.") for k in d.state_dict())  # the feature network is not owned
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in d.heads.parameters())
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    logits = d(x)
    assert logits.shape == (4, 4 * 16) and logits.dtype == torch.float32  # 16 tokens per level, 4 levels
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())
    # a discriminator step: real and fake forwards (spectral-norm power iterations in between), one backward
    d.zero_grad()
    hinge_d_loss(d(torch.randn(4, 3, 32, 32)), d(torch.randn(4, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in d.heads.parameters())


def test_dino_disc_checks_the_level_count() -> None:
    d = DinoDiscriminator(DinoDiscConfig(feature_dims=(16,) * 3, input_size=0), TinyViT())
    with pytest.raises(ValueError, match="4 levels"):
        d(torch.randn(2, 3, 32, 32))


def test_input_policy_crop_resize_identity() -> None:
    x = torch.randn(2, 3, 40, 48)
    crop = DinoDiscriminator(DinoDiscConfig(feature_dims=(4,), input_size=32, crop_prob=1.0), lambda v: [])
    y = crop.prepare_input(x)
    assert y.shape == (2, 3, 32, 32)
    hits = [(t, l) for t in range(9) for l in range(17) if torch.equal(x[..., t : t + 32, l : l + 32], y)]
    assert len(hits) == 1  # one crop, shared by the batch
    shrink = DinoDiscriminator(DinoDiscConfig(feature_dims=(4,), input_size=32, crop_prob=0.0), lambda v: [])
    torch.testing.assert_close(shrink.prepare_input(x), F.interpolate(x, size=(32, 32), mode="area"))
    small = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(shrink.prepare_input(small), F.interpolate(small, size=(32, 32), mode="bicubic"))
    assert shrink.prepare_input(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    off = DinoDiscriminator(DinoDiscConfig(feature_dims=(4,), input_size=0), lambda v: [])
    assert off.prepare_input(x) is x


def test_backbone_token_features_bypass_no_grad() -> None:
    bb = ToyBackbone()
    d = DinoDiscriminator(DinoDiscConfig(feature_dims=bb.feature_dims, input_size=0, virtual_batch=8),
                          backbone_token_features(bb))
    x = torch.rand(3, 3, 40, 40, requires_grad=True)  # the backbone resizes to its 32 x 32 input
    logits = d(x * 2 - 1)
    assert logits.shape == (3, 2 * 16)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())


def test_vit_token_features_on_the_dinov2_backbone() -> None:
    dinov2 = pytest.importorskip("vfmtok.backbones.dinov2")
    config = BackboneConfig(embed_dim=32, depth=4, num_heads=2, patch_size=14, input_size=28, pos_embed_size=56,
                            num_register_tokens=4, taps=(3,), tap_norm=(True,))
    vit = dinov2.DinoV2Backbone(config)
    feats = vit_token_features(vit, depths=(1, 3))
    x = (torch.rand(2, 3, 28, 28) * 2 - 1).requires_grad_(True)
    levels = feats(x)
    assert [tuple(t.shape) for t in levels] == [(2, 4, 32)] * 3  # embedding + 2 depths; CLS/registers dropped
    # the first reading is patch tokens (+ positions) plus the CLS token
    tokens = vit.prepare_tokens(vit.preprocess(x))
    torch.testing.assert_close(levels[0], tokens[:, 5:] + tokens[:, :1])
    # official reading: inputs outside [-1, 1] are not clamped (reconstructions are unbounded)
    wide = x.detach() * 3
    t_wide = vit.prepare_tokens(vit.preprocess(wide))  # the VFM path clamps
    assert not torch.allclose(feats(wide)[0], t_wide[:, 5:] + t_wide[:, :1], atol=1e-3)
    d = DinoDiscriminator(DinoDiscConfig(feature_dims=(32,) * 3, input_size=0), feats)
    d(x).mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())
    with pytest.raises(ValueError, match="4 blocks"):
        vit_token_features(vit, depths=(2, 5))


def test_spectral_norm_follows_the_hook_based_update_order() -> None:
    """Same sigma as ``torch.nn.utils.spectral_norm`` (the official heads) from the same u, v, forward after forward
    in training mode, and the same gradient; eval mode uses the stored vectors."""
    torch.manual_seed(0)
    ref = nn.Conv1d(6, 5, 3, padding=1)
    ours = nn.Conv1d(6, 5, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    nn.utils.spectral_norm(ref)  # hook-based: weight_orig, weight_u, weight_v
    nn.utils.parametrize.register_parametrization(ours, "weight", SpectralNorm(ours.weight))
    sn = ours.parametrizations.weight[0]
    sn._u.copy_(ref.weight_u)
    sn._v.copy_(ref.weight_v)  # far from converged: the update order matters
    x = torch.randn(2, 6, 7)
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sn._u, ref.weight_u, rtol=1e-6, atol=1e-6)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.parametrizations.weight.original.grad, ref.weight_orig.grad, rtol=1e-5,
                               atol=1e-6)
    ours.eval()
    u = sn._u.clone()
    ours(x)
    assert torch.equal(sn._u, u)
    assert {"parametrizations.weight.original", "parametrizations.weight.0._u",
            "parametrizations.weight.0._v"} <= set(ours.state_dict())
