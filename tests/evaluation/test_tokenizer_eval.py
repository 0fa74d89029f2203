from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vfmtok.backbones.base import BackboneConfig
from vfmtok.evaluation.features import VFMExtractor
from vfmtok.evaluation.images import EvalBatch
from vfmtok.evaluation.tokenizer_eval import TokenizerEvalSettings, evaluate_tokenizer, format_tokenizer_report


class _IdentityTokenizer(nn.Module):
    """Perfect reconstruction: decode returns the last encoded batch; image i of a batch gets code i (all tokens)."""

    class config:  # noqa: N801 - mimics TokenizerConfig's attribute access
        codebook_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self._stash: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._stash = x
        return torch.arange(x.shape[0])[:, None].expand(-1, 4)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._stash


def _batches(n: int, size: int, seed: int = 0) -> list[EvalBatch]:
    g = np.random.default_rng(seed)
    out = []
    for start in range(0, n, 4):
        b = min(4, n - start)
        u8 = g.integers(0, 256, (b, size, size, 3)).astype(np.uint8)
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out.append(EvalBatch(x=x, u8=u8, label=torch.zeros(b, dtype=torch.int64)))
    return out


@pytest.fixture(scope="module")
def vfm() -> VFMExtractor:
    from vfmtok.backbones.factory import build_backbone

    config = BackboneConfig(kind="dinov2", name="dinov2-test", embed_dim=16, depth=1, num_heads=2, patch_size=14,
                            pos_embed_size=28, num_register_tokens=0, taps=(0,), tap_norm=(True,), input_size=28)
    torch.manual_seed(0)
    return VFMExtractor(build_backbone(config), name="dinov2-test-28", spatial_channels=3)


def test_perfect_reconstruction(vfm):
    settings = TokenizerEvalSettings(eval_size=24)
    r = evaluate_tokenizer(_IdentityTokenizer(), _batches(10, 32), [vfm], settings=settings)
    assert r["num_images"] == 10 and r["psnr_identical_images"] == 10 and r["psnr"] == float("inf")
    assert r["ssim"] == pytest.approx(1.0) and r["ssim_official_protocol"] == pytest.approx(1.0)
    assert r["lpips_vgg"] is None
    assert r["codebook"]["used"] == 4 and r["codebook"]["total"] == 40  # codes 0..3 in every batch of 4
    d = r["distribution"]["dinov2-test-28"]
    assert d["metric"] == "FD_dinov2-test-28"
    assert abs(d["reconstruction"]) < 1e-6
    assert d["down4_up"] > d["down2_up"] > 1e-4  # the ladder orders the known degradations
    assert abs(d["spatial"]["reconstruction"]) < 1e-6 and d["spatial"]["metric"] == "sFD_dinov2-test-28"
    md = format_tokenizer_report({"metrics": r})
    assert "rFD_dinov2-test-28" in md and "codebook usage" in md


def test_real_tokenizer_runs():
    tok_model = pytest.importorskip("vfmtok.tokenizer.model")
    presets = pytest.importorskip("vfmtok.tokenizer.presets")
    torch.manual_seed(0)
    tok = tok_model.VFMTokenizer(presets.tokenizer_preset("tok-test")).eval()
    r = evaluate_tokenizer(tok, _batches(3, 32), settings=TokenizerEvalSettings(eval_size=None))
    assert r["num_images"] == 3 and 0 < r["psnr"] < 60 and -1 <= r["ssim"] < 1
    assert 0 < r["codebook"]["usage"] <= 1 and r["distribution"] == {}
    with pytest.raises(ValueError, match="no images"):
        evaluate_tokenizer(tok, [])


def test_extractor_without_usable_logits_reports_a_note_not_a_score():
    """An extractor that withholds its logits (EfficientNet-Lite0 with a zero classifier): no Inception Score in the
    report (it would be exactly 1.0 whatever the images), the reason instead."""
    from vfmtok.evaluation.efficientnet import EfficientNetExtractor, EfficientNetLite0

    torch.manual_seed(0)
    net = EfficientNetLite0()
    with torch.no_grad():
        net._fc.weight.zero_()
        net._fc.bias.zero_()
    extractor = EfficientNetExtractor(net)
    extractor.input_size = 64  # small inputs keep the test fast
    settings = TokenizerEvalSettings(eval_size=None, ladder=())
    r = evaluate_tokenizer(_IdentityTokenizer(), _batches(3, 32), [extractor], settings=settings)
    d = r["distribution"]["efficientnet-lite0"]
    assert "inception_score" not in d and "all zero" in d["inception_score_note"]
    assert abs(d["reconstruction"]) < 1e-6
    assert "rIS_efficientnet-lite0 | not computed" in format_tokenizer_report({"metrics": r})


def test_several_lpips_networks_are_reported_by_name() -> None:
    from vfmtok.losses.lpips import LPIPS

    torch.manual_seed(0)
    nets = {"vgg": LPIPS("vgg"), "alex": LPIPS("alex")}
    tok = _IdentityTokenizer()
    r = evaluate_tokenizer(tok, _batches(3, 32), lpips=nets, settings=TokenizerEvalSettings(eval_size=None))
    assert r["lpips_vgg"] == 0.0 and r["lpips_alex"] == 0.0  # perfect reconstruction
    only_alex = evaluate_tokenizer(tok, _batches(3, 32), lpips=nets["alex"],
                                   settings=TokenizerEvalSettings(eval_size=None))
    assert only_alex["lpips_vgg"] is None and only_alex["lpips_alex"] == 0.0
    text = format_tokenizer_report({"metrics": r})
    assert "| LPIPS-VGG | 0.0000 |" in text and "| LPIPS-AlexNet | 0.0000 |" in text
