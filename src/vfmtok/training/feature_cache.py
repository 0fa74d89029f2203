"""Precomputed frozen-VFM features for tokenizer training.

The backbone is frozen, so when the training transform is deterministic its output for an image never changes. The
cache computes it once: the (centre-cropped) images as uint8 plus every tapped level, for ``views`` = 1 (the image) or
2 (the image and its horizontal mirror, so random flips stay possible without a backbone forward). Training then
reads batches straight from memory and skips the VFM forward, which dominates the step cost of the official recipe
(a ViT-L/14 at 336 for a 73 M-parameter tokenizer).

On disk (``<cache_dir>/``): ``images.npy`` (N, 3, S, S) uint8, ``level{i}.npy`` (N, V, D_i, h, w) float16 (or
float32), optionally ``target.npy`` (N, V, h*w, D_t) when the semantic target is not one of the levels, and
``meta.json`` written last, holding the fingerprint (backbone config and weights source, data path, image size,
dataset length, views, dtype) that decides whether a cache can be reused. Under torchrun every rank computes a
contiguous slice of the rows into the shared memory-mapped files; rank 0 creates them and writes ``meta.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..backbones.base import BackboneOutput, FrozenBackbone
from .distributed import DistInfo, all_reduce_sum, barrier

log = logging.getLogger(__name__)

_DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32)}
META = "meta.json"


def _to_uint8(x: Tensor) -> Tensor:
    """(B, 3, S, S) float in [-1, 1] -> uint8 with the exact inverse of ``u8 / 127.5 - 1``."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def images_from_uint8(x: Tensor) -> Tensor:
    """uint8 (B, 3, S, S) -> float32 (B, 3, S, S) in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


class FeatureCache:
    """In-memory cache: ``images`` (N, 3, S, S) uint8, ``levels[i]`` (N, V, D_i, h, w), ``target`` (N, V, h*w, D_t)
    or None when the target is ``levels[target_level]`` flattened (the DINOv2 case)."""

    def __init__(self, images: Tensor, levels: list[Tensor], target: Tensor | None, target_level: int,
                 skipped: int = 0) -> None:
        self.images, self.levels, self.target, self.target_level = images, levels, target, target_level
        self.skipped = skipped  # unreadable files met (and replaced by the dataset) while the cache was built

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def views(self) -> int:
        return self.levels[0].shape[1]

    @property
    def nbytes(self) -> int:
        tensors = [self.images, *self.levels] + ([self.target] if self.target is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device) -> FeatureCache:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FeatureCache(move(self.images), [move(t) for t in self.levels], move(self.target), self.target_level,
                            self.skipped)

    def batch(self, idx: Tensor, view: Tensor, device: torch.device) -> tuple[Tensor, BackboneOutput]:
        """Rows ``idx`` (B,) int64 with views ``view`` (B,) in [0, V) -> (images (B, 3, S, S) float32 in [-1, 1],
        :class:`BackboneOutput` with float32 levels / target) on ``device``. View 1 is the mirrored image."""
        src = self.images.device
        i, v = idx.to(src), view.to(src)
        x = images_from_uint8(self.images[i].to(device, non_blocking=True))  # (B, 3, S, S)
        flip = view.to(device).bool().view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        levels = [lvl[i, v].to(device, non_blocking=True).float() for lvl in self.levels]  # each (B, D, h, w)
        if self.target is not None:
            target = self.target[i, v].to(device, non_blocking=True).float()  # (B, h*w, D_t)
        else:
            target = levels[self.target_level].flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        return x, BackboneOutput(levels=levels, target=target)


def _backbone_views(backbone: FrozenBackbone, x: Tensor, views: int) -> list[BackboneOutput]:
    outs = [backbone(x)]
    if views == 2:
        outs.append(backbone(x.flip(-1)))
    return outs


def _target_level(out: BackboneOutput) -> int | None:
    """Index of the level the target is taken from, or None if the target is none of them."""
    for i, lvl in enumerate(out.levels):
        flat = lvl.flatten(2).transpose(1, 2)
        if flat.shape == out.target.shape and torch.equal(flat, out.target):
            return i
    return None


def build_feature_cache(
    cache_dir: str | os.PathLike,
    fingerprint: dict[str, Any],
    dataset: Dataset,
    backbone: FrozenBackbone,
    info: DistInfo,
    views: int = 1,
    dtype: str = "float16",
    batch_size: int = 64,
    workers: int = 0,
    collate_fn: Any = None,
    autocast_dtype: torch.dtype | None = None,
) -> FeatureCache:
    """Load the cache in ``cache_dir`` if its fingerprint matches, else compute it (all ranks share the work).

    Args:
        dataset: map-style dataset whose items hold a deterministic ``image`` (3, S, S) float in [-1, 1] (a dict or
            an object with that field), read in order through ``collate_fn``.
        backbone: the frozen VFM, already on ``info.device``.
        views: 1 (as is) or 2 (also the horizontal mirror).
        dtype: storage type of the features, ``"float16"`` or ``"float32"``.
        autocast_dtype: run the backbone under CUDA autocast with this dtype (None: the backbone's own precision).

    Returns:
        The :class:`FeatureCache`, memory-mapped from ``cache_dir`` (CPU).
    """
    if views not in (1, 2):
        raise ValueError(f"feature cache: views must be 1 or 2, got {views}")
    if dtype not in _DTYPES:
        raise ValueError(f"feature cache: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    root = Path(cache_dir)
    fingerprint = {**fingerprint, "views": views, "dtype": dtype, "num_samples": len(dataset)}
    if not _matches(root, fingerprint):
        if info.is_main and root.exists():
            log.info("feature cache %s is stale or incomplete; rebuilding", root)
            shutil.rmtree(root)
        barrier()
        _compute(root, fingerprint, dataset, backbone, info, views, dtype, batch_size, workers, collate_fn,
                 autocast_dtype)
    barrier()
    return _load(root)


def _matches(root: Path, fingerprint: dict[str, Any]) -> bool:
    meta = root / META
    if not meta.exists():
        return False
    return json.loads(meta.read_text()).get("fingerprint") == json.loads(json.dumps(fingerprint))


def _compute(root: Path, fingerprint: dict[str, Any], dataset: Dataset, backbone: FrozenBackbone, info: DistInfo,
             views: int, dtype: str, batch_size: int, workers: int, collate_fn: Any,
             autocast_dtype: torch.dtype | None) -> None:
    n = len(dataset)
    np_dtype, torch_dtype = _DTYPES[dtype]
    first = _image_of(dataset[0])[None].to(info.device)
    with _autocast(info.device, autocast_dtype):
        probe = backbone(first)
    target_level = _target_level(probe)
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"images": ((n, *first.shape[1:]), np.uint8)}
    for i, lvl in enumerate(probe.levels):
        shapes[f"level{i}"] = ((n, views, *lvl.shape[1:]), np_dtype)
    if target_level is None:
        shapes["target"] = ((n, views, *probe.target.shape[1:]), np_dtype)
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for name, (shape, dt) in shapes.items():
            np.lib.format.open_memmap(root / f"{name}.npy", mode="w+", dtype=dt, shape=shape).flush()
    barrier()
    arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r+") for name in shapes}
    lo, hi = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
    loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn, generator=torch.Generator())
    row, skipped = lo, 0
    total_gb = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes.values()) / 1e9
    log.info("feature cache: computing %d images x %d view(s) (%.2f GB) into %s", n, views, total_gb, root)
    t0 = time.perf_counter()
    for batch in loader:
        x = _image_of(batch).to(info.device, non_blocking=True)
        with _autocast(info.device, autocast_dtype):
            outs = _backbone_views(backbone, x, views)
        b = x.shape[0]
        skipped += int(getattr(batch, "skipped", 0))
        arrays["images"][row : row + b] = _to_uint8(x).cpu().numpy()
        for v, out in enumerate(outs):  # convert on the device: half the transfer, no numpy cast
            for i, lvl in enumerate(out.levels):
                arrays[f"level{i}"][row : row + b, v] = lvl.to(torch_dtype).cpu().numpy()
            if target_level is None:
                arrays["target"][row : row + b, v] = out.target.to(torch_dtype).cpu().numpy()
        row += b
    if row != hi:
        raise RuntimeError(f"feature cache: rank {info.rank} wrote {row - lo} rows, expected {hi - lo}")
    for a in arrays.values():
        a.flush()
    del arrays
    skipped = int(all_reduce_sum(torch.tensor(skipped, device=info.device)))
    barrier()
    if info.is_main:
        meta = {"fingerprint": fingerprint, "target_level": target_level, "levels": len(probe.levels),
                "skipped": skipped}
        tmp = root / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, root / META)
        log.info("feature cache: built in %.1f s (%d unreadable files replaced)", time.perf_counter() - t0, skipped)


def _load(root: Path) -> FeatureCache:
    t0 = time.perf_counter()
    meta = json.loads((root / META).read_text())
    # copy-on-write memory maps: the pages live once in the OS page cache, shared by every rank of the host
    read = lambda name: torch.from_numpy(np.load(root / f"{name}.npy", mmap_mode="c"))  # noqa: E731
    levels = [read(f"level{i}") for i in range(meta["levels"])]
    target = read("target") if meta["target_level"] is None else None
    cache = FeatureCache(read("images"), levels, target, meta["target_level"] or 0, meta.get("skipped", 0))
    log.info("feature cache: %d images, %d view(s), %.2f GB loaded from %s in %.1f s", len(cache), cache.views,
             cache.nbytes / 1e9, root, time.perf_counter() - t0)
    return cache


def _image_of(item: Any) -> Tensor:
    return item["image"] if isinstance(item, dict) else item.image


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None and device.type == "cuda")
