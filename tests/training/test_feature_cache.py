"""Feature cache: exact contents (both orientations), batch assembly, reuse by fingerprint and rebuilds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from vfmtok.backbones.base import BackboneConfig
from vfmtok.backbones.factory import build_backbone
from vfmtok.training.distributed import DistInfo
from vfmtok.training.feature_cache import FeatureCache, build_feature_cache, images_from_uint8

INFO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class _Images(Dataset):
    def __init__(self, n: int = 5, size: int = 28) -> None:
        g = torch.Generator().manual_seed(0)
        u8 = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.x = images_from_uint8(u8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def _backbone():
    torch.manual_seed(0)
    cfg = BackboneConfig(kind="dinov2", name="tiny", embed_dim=16, depth=2, num_heads=2, pos_embed_size=28,
                         num_register_tokens=0, taps=(0, 1), tap_norm=(False, True), input_size=28)
    return build_backbone(cfg)


def test_contents_match_the_backbone_for_both_views(tmp_path):
    data, net = _Images(), _backbone()
    cache = build_feature_cache(tmp_path / "c", {"k": 1}, data, net, INFO, views=2, dtype="float32", batch_size=2)
    assert len(cache) == 5 and cache.views == 2 and cache.target is None and cache.target_level == 1
    assert torch.equal(images_from_uint8(cache.images), data.x)  # uint8 storage is lossless for uint8 images
    plain, mirrored = net(data.x), net(data.x.flip(-1))
    for i in range(2):
        torch.testing.assert_close(cache.levels[i][:, 0], plain.levels[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(cache.levels[i][:, 1], mirrored.levels[i], rtol=0, atol=1e-5)
    x, feats = cache.batch(torch.tensor([3, 0]), torch.tensor([1, 0]), torch.device("cpu"))
    torch.testing.assert_close(x, torch.stack([data.x[3].flip(-1), data.x[0]]))
    torch.testing.assert_close(feats.levels[0][0], mirrored.levels[0][3], rtol=0, atol=1e-5)
    torch.testing.assert_close(feats.target, feats.levels[1].flatten(2).transpose(1, 2))
    torch.testing.assert_close(feats.target[1], plain.target[0], rtol=0, atol=1e-5)


def test_reused_when_fingerprint_matches_and_rebuilt_otherwise(tmp_path, monkeypatch):
    data, net = _Images(n=3), _backbone()
    first = build_feature_cache(tmp_path, {"weights": "a"}, data, net, INFO, dtype="float16")
    assert first.levels[0].dtype == torch.float16 and first.nbytes > 0

    def boom(*args, **kwargs):
        raise AssertionError("the backbone must not run for a reusable cache")

    monkeypatch.setattr(net, "forward", boom)
    again = build_feature_cache(tmp_path, {"weights": "a"}, data, net, INFO, dtype="float16")
    assert torch.equal(again.levels[1], first.levels[1])
    with pytest.raises(AssertionError, match="must not run"):  # another fingerprint: rebuilt
        build_feature_cache(tmp_path, {"weights": "b"}, data, net, INFO, dtype="float16")


def test_separate_target_and_argument_checks(tmp_path):
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    levels = [torch.randn(2, 1, 3, 2, 2)]
    target = torch.randn(2, 1, 4, 5)
    cache = FeatureCache(images, levels, target, 0)
    _, feats = cache.batch(torch.tensor([1]), torch.tensor([0]), torch.device("cpu"))
    assert torch.equal(feats.target[0], target[1, 0])
    with pytest.raises(ValueError, match="views"):
        build_feature_cache(tmp_path, {}, _Images(), _backbone(), INFO, views=3)
    with pytest.raises(ValueError, match="dtype"):
        build_feature_cache(tmp_path, {}, _Images(), _backbone(), INFO, dtype="bfloat16")
