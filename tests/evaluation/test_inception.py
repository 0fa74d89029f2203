from __future__ import annotations

import pytest
import torch

from vfmtok.evaluation.inception import (
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    FIDWeightsNotFoundError,
    InceptionExtractor,
    build_inception_extractor,
    load_fid_inception,
    resize_bilinear_tf1,
)
from vfmtok.hub import ModelLoadError


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A randomly initialised full-size FID Inception saved in pytorch-fid's format (no num_batches_tracked)."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # He init keeps activations alive through 94 layers (torch's default init lets them
        if isinstance(m, torch.nn.Conv2d):  # vanish), and non-trivial BN statistics make the loaded values matter
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(net.fc.weight, std=0.05)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path, state


def test_file_format_keys_match_pytorch_fid_layout(weights_file):
    _, state = weights_file
    assert len(state) == 472  # 94 conv/bn layers x 5 + fc weight and bias
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var", "Mixed_6d.branch1x1.conv.weight",
                "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight", "fc.bias"):
        assert key in state
    assert tuple(state["fc.weight"].shape) == (1008, 2048)


def test_end_to_end_from_file(weights_file):
    path, state = weights_file
    ex = build_inception_extractor(path)
    key = "Mixed_6e.branch7x7_2.bn.running_var"
    torch.testing.assert_close(ex.network.state_dict()[key], state[key])
    u8 = torch.randint(0, 256, (2, 48, 40, 3), dtype=torch.uint8)
    f = ex(u8)
    assert f.pool.shape == (2, 2048) and f.logits.shape == (2, 1008) and f.spatial.shape == (2, 17 * 17 * 7)
    assert bool((f.pool >= 0).all())  # post-ReLU average
    assert float(f.pool.std(0).mean()) > 1e-3 and float(f.spatial.std(0).mean()) > 1e-3  # features depend on input
    torch.testing.assert_close(f.logits, f.pool @ state["fc.weight"].T, rtol=1e-4, atol=1e-4)  # unbiased logits
    # the same images as float [-1, 1] NCHW reach the network identically (one forward pass keeps the test fast)
    x = u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(ex.preprocess(x), ex.preprocess(u8), rtol=0, atol=1e-5)
    tf1 = ex.preprocess(u8)
    assert tf1.shape == (2, 3, 299, 299) and float(tf1.min()) >= -1.0 and float(tf1.max()) <= 127 / 128
    fid_mode = InceptionExtractor(ex.network, resize="pytorch-fid").preprocess(u8)
    assert fid_mode.shape == (2, 3, 299, 299) and float(fid_mode.abs().max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="resize"):
        InceptionExtractor(ex.network, resize="nearest")


def test_missing_weights_error_names_the_release(tmp_path):
    with pytest.raises(FIDWeightsNotFoundError) as e:
        load_fid_inception(tmp_path / "nope.pth")
    assert FID_WEIGHTS_URL in str(e.value) and "--fid-weights" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(FIDWeightsNotFoundError, match="not given"):
        load_fid_inception(None)


def test_wrong_file_is_a_load_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    with pytest.raises(ModelLoadError, match="missing keys"):
        load_fid_inception(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_fid_inception(tmp_path / "junk.pth")


def test_tf1_resize_semantics():
    x = torch.tensor([[[[0.0, 10.0]]]])  # (1, 1, 1, 2)
    up = resize_bilinear_tf1(x.expand(1, 1, 2, 2).contiguous(), 4)
    # TF1 (no half-pixel centres): out[i] samples in[i * 2 / 4] -> 0, 5, 10, 10 (edge clamped)
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))
    same = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(resize_bilinear_tf1(same, 6), same)
