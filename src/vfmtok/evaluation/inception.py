"""Inception-v3 as used for FID, rebuilt in PyTorch, with weights from a user-supplied file.

The network is the TensorFlow ``inception-2015-12-05`` graph (``classify_image_graph_def.pb``) that the TF FID code
and the ADM evaluator run, in the layout of pytorch-fid's port: torchvision-style module names (``Conv2d_1a_3x3``,
``Mixed_5b`` ... ``Mixed_7c``, ``fc``) with the FID-specific differences of that graph:

* the average-pool branch of the A, C and E blocks excludes the zero padding from the mean (TF ``avg_pool``
  semantics, ``count_include_pad=False``);
* the last E block (``Mixed_7c``) pools its fourth branch with a 3x3 *max* pool instead of an average pool;
* 1008 output classes and no auxiliary classifier.

Weights are never downloaded. Pass the path of ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release,
:data:`FID_WEIGHTS_URL`); torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` is written with the same
key names by its converter and should load too. Architecture written from the public descriptions of pytorch-fid (mseitzer/pytorch-fid, Apache-2.0) and
torchvision's Inception3 (BSD-3); no code copied.

Outputs (see :class:`InceptionExtractor`): ``pool`` = pool_3 (N, 2048); ``logits`` = pool_3 @ fc.weight^T **without**
the bias (N, 1008), which is what the ADM evaluator and torch-fidelity feed to the Inception Score; ``spatial`` = the
first 7 channels of ``mixed_6/conv`` (= ``Mixed_6d.branch1x1`` after BN+ReLU, 17x17 at 299 input) flattened in HWC
order to (N, 2023), ADM's sFID feature.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureExtractor, Features, to_float255

log = logging.getLogger(__name__)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
INCEPTION_EXTRACTOR_NAME = "inception-v3-fid"
SPATIAL_CHANNELS = 7


class FIDWeightsNotFoundError(FileNotFoundError):
    """The Inception FID weights file is missing; the message says where to get it."""


def _missing_weights_message(path: str | os.PathLike | None) -> str:
    where = f"not found at {path}" if path else "not given"
    return (
        f"Inception FID weights {where}. vfmtok never downloads weights: fetch {FID_WEIGHTS_NAME} once from "
        f"{FID_WEIGHTS_URL} (pytorch-fid's release; torch-fidelity's weights-inception-2015-12-05-6726825d.pth also "
        f"works) and pass its path with --fid-weights."
    )


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF value) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **conv_kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv_kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TF's average pool divides by the number of valid (non-padding) inputs
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1. Out: 224 + pool_features channels."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2. Out: 480 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions. Out: 768 channels."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward_with_branch1x1(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (block output (B, 768, h, w), the 1x1 branch (B, 192, h, w) = TF ``mixed_N/conv``)."""
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1), b1

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_branch1x1(x)[0]


class InceptionD(nn.Module):
    """17 -> 8 reduction. Out: 512 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 convolutions. Out: 2048 channels.

    ``max_pool=True`` is the FID graph's quirk in its last block (``Mixed_7c``): the pool branch uses a max pool.
    """

    def __init__(self, c_in: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 trunk + 1008-way classifier. Parameter names match pytorch-fid's weight file.

    ``forward`` takes (B, 3, 299, 299) already normalised to the network's range (about [-1, 1]) and returns
    ``(pool (B, 2048), spatial (B, 192, h, w) of Mixed_6d.branch1x1)``; ``fc`` is applied by the caller.
    """

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # (B, 768, 17, 17)
        x, spatial = self.Mixed_6d.forward_with_branch1x1(x)  # spatial: (B, 192, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))  # (B, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # (B, 2048) = pool_3
        return pool, spatial


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """Bilinear resize with TF1 ``resize_bilinear(align_corners=False)`` semantics (no half-pixel centres).

    Output pixel i samples the input at ``i * in / out`` (not ``(i + 0.5) * in / out - 0.5`` as torch does), which is
    what the FID graph's ``ResizeBilinear`` node computes. ``x``: (B, C, H, W) float -> (B, C, size, size).
    """

    def axis(n_in: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(size, device=device, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype)

    h0, h1, wh = axis(x.shape[-2], x.device)
    w0, w1, ww = axis(x.shape[-1], x.device)
    rows = x[..., h0, :] * (1 - wh)[:, None] + x[..., h1, :] * wh[:, None]  # (B, C, size, W)
    return rows[..., w0] * (1 - ww) + rows[..., w1] * ww  # (B, C, size, size)


class InceptionExtractor(FeatureExtractor):
    """FID features from :class:`FIDInceptionV3`.

    Args:
        network: the loaded network (see :func:`load_fid_inception`).
        resize: ``"tf1"`` (default) reproduces the FID graph's input path: float pixels in [0, 255], TF1 bilinear
            resize to 299, then ``(x - 128) / 128``. ``"pytorch-fid"`` reproduces pytorch-fid: pixels / 255,
            ``F.interpolate(bilinear, align_corners=False)`` to 299, then ``2x - 1``. ``tf1`` is the closer to the ADM
            evaluator behind the published numbers (sampling positions and normalisation as the TF graph).
    """

    name = INCEPTION_EXTRACTOR_NAME
    input_size = 299

    def __init__(self, network: FIDInceptionV3, resize: str = "tf1") -> None:
        super().__init__()
        if resize not in ("tf1", "pytorch-fid"):
            raise ValueError(f"resize must be 'tf1' or 'pytorch-fid', got {resize!r}")
        self.network = network.eval().requires_grad_(False)
        self.resize = resize

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> (B, 3, 299, 299) network input."""
        x = to_float255(images)  # (B, 3, H, W) in [0, 255]
        if self.resize == "tf1":
            if x.shape[-2:] != (self.input_size, self.input_size):
                x = resize_bilinear_tf1(x, self.input_size)
            return (x - 128.0) / 128.0
        x = x / 255.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    @torch.no_grad()
    def forward(self, images: Tensor) -> Features:
        x = self.preprocess(images).to(self.network.fc.weight.dtype)
        pool, spatial = self.network(x)  # (B, 2048), (B, 192, 17, 17)
        logits = pool @ self.network.fc.weight.T  # (B, 1008): no bias, as ADM / torch-fidelity compute IS
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # (B, 17*17*7) in HWC order
        return Features(pool=pool.float(), logits=logits.float(), spatial=spatial.float())


def load_fid_inception(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the pytorch-fid / torch-fidelity weight file at ``path``.

    Raises :class:`FIDWeightsNotFoundError` (a ``FileNotFoundError``) with the download URL when the file is absent,
    and ``vfmtok.hub.ModelLoadError`` naming missing / unexpected keys or shape mismatches. ``num_batches_tracked``
    buffers are optional (pytorch-fid's file has none).
    """
    from ..hub import ModelLoadError, check_state_dict, torch_load_weights

    if path is None or not Path(path).is_file():
        raise FIDWeightsNotFoundError(_missing_weights_message(path))
    state = torch_load_weights(path, "Inception FID weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    net = FIDInceptionV3()
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_state_dict(expected, got, f"Inception FID weights {path}")
    net.load_state_dict(got, strict=False)
    log.info("loaded Inception FID weights from %s", path)
    return net.to(device).eval().requires_grad_(False)


def build_inception_extractor(
    path: str | os.PathLike | None, device: str | torch.device = "cpu", resize: str = "tf1"
) -> InceptionExtractor:
    """:func:`load_fid_inception` + :class:`InceptionExtractor` in one call."""
    return InceptionExtractor(load_fid_inception(path, device=device), resize=resize).to(device)
