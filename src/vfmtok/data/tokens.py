"""Pre-extracted tokenizer codes on disk ("code shards") and the dataset the GPT trainer reads.

Layout of a codes directory (written by ``vfmtok extract-codes``)::

    <dir>/shard-00000.npz   one per fixed range of dataset indices [k * shard_size, (k + 1) * shard_size)
    <dir>/shard-00001.npz
    ...
    <dir>/manifest.json     written last; its presence means the extraction is complete and verified

Each shard is an *uncompressed* ``.npz`` (so members can be memory-mapped) holding

- ``codes``: (N, A, T) uint16 when the vocabulary fits (``vocab_size <= 65536``), int32 otherwise; token ids in
  [0, vocab). ``A`` is the number of augmentations per image (1 plain, 2 with ``--flip``, 10 with ``--ten-crop``), in
  the order named by the manifest's ``augmentations``. Readers also accept a 2-D (N, T) array as A = 1.
- ``labels``: (N,) int64 class ids; ``indices``: (N,) int64 dataset indices, increasing;
- ``skipped``: (S,) int64 dataset indices of this shard's range whose image could not be decoded (corrupt files).

Shards are written to a temporary name and renamed into place, so a shard file either exists complete or not at all.
The manifest (JSON) records the tokenizer (name, config, hashes), ``num_tokens``, ``vocab_size``, ``num_classes``,
``class_names``, ``augmentations``, the per-shard index ranges and counts, and the skipped indices.

:class:`CodeDataset` serves ``(codes (T,), label)`` pairs, choosing one augmentation per item from a counter-based hash
of ``(seed, epoch, row)``: the choice depends on nothing else (no global RNG, no worker state), which keeps training
bit-exact across a kill and resume. The LlamaGen code dataset makes the same choice with ``random.randint``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import UnreadableDataError

log = logging.getLogger(__name__)

CODES_FORMAT = "vfmtok-codes"
CODES_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.npz"
_MASK64 = (1 << 64) - 1


class Shard(NamedTuple):
    """One shard's arrays. ``codes``: (N, A, T); ``labels``, ``indices``: (N,) int64; ``skipped``: (S,) int64."""

    codes: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    skipped: np.ndarray


def codes_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype for token ids in [0, vocab_size): uint16 when it fits, int32 otherwise."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def shard_path(root: str | os.PathLike, k: int) -> Path:
    return Path(root) / SHARD_PATTERN.format(k)


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[int, int]]:
    """The fixed dataset-index range ``[start, stop)`` of every shard."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def write_shard(path: str | os.PathLike, shard: Shard) -> Path:
    """Write ``shard`` atomically: an uncompressed ``.npz`` under a temporary name in the same directory, fsync'd,
    then renamed to ``path``."""
    path = Path(path)
    n = len(shard.labels)
    if shard.codes.ndim != 3 or shard.codes.shape[0] != n or len(shard.indices) != n:
        raise ValueError(
            f"write_shard: inconsistent shapes codes {shard.codes.shape}, labels {shard.labels.shape}, "
            f"indices {shard.indices.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                codes=np.ascontiguousarray(shard.codes),
                labels=np.asarray(shard.labels, dtype=np.int64),
                indices=np.asarray(shard.indices, dtype=np.int64),
                skipped=np.asarray(shard.skipped, dtype=np.int64),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _memmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of a zip file; None if it is compressed."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # fixed part of the local file header: name and extra-field lengths at bytes 26..29
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_shard(path: str | os.PathLike, mmap: bool = False) -> Shard:
    """Read a shard; with ``mmap=True`` the ``codes`` array is memory-mapped instead of loaded."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, indices, skipped = data["labels"], data["indices"], data["skipped"]
            codes = None
            if mmap:
                with zipfile.ZipFile(path) as zf:
                    codes = _memmap_member(path, zf, "codes.npy")
            if codes is None:
                codes = data["codes"]
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, npy-header and key errors of a damaged shard come in many types
        raise UnreadableDataError(f"{path}: truncated or corrupt code shard ({type(e).__name__}: {e}); delete it and "
                                  "re-run `vfmtok extract-codes` with the same arguments to rewrite it") from None
    if codes.ndim == 2:
        codes = codes[:, None, :]
    return Shard(codes, labels, indices, skipped)


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (it marks the directory complete, so it is always written last)."""
    path = Path(root) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": CODES_FORMAT, "version": CODES_VERSION, **manifest}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: not a codes directory, or its extraction is unfinished (re-run `vfmtok extract-codes` "
            "with the same arguments to resume it)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableDataError(f"{path}: damaged codes manifest ({type(e).__name__}: {e}); delete it and re-run "
                                  "`vfmtok extract-codes` with the same arguments to write it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CODES_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UnreadableDataError(f"{path}: not a vfmtok codes manifest (format {found!r})")
    return manifest


def augmentation_choice(seed: int, epoch: int, rows: np.ndarray, num_aug: int) -> np.ndarray:
    """Augmentation id in [0, num_aug) for each row: SplitMix64 of (seed, epoch, row), a pure function of its inputs."""
    rows = np.asarray(rows, dtype=np.uint64)
    if num_aug == 1:
        return np.zeros(rows.shape, dtype=np.int64)
    key = ((int(seed) & 0xFFFFFFFF) << 32 | (int(epoch) & 0xFFFFFFFF)) * 0x9E3779B97F4A7C15 & _MASK64
    with np.errstate(over="ignore"):
        z = rows * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(num_aug)).astype(np.int64)


class CodeDataset(Dataset):
    """Map-style dataset over a finished codes directory.

    Rows are the images in shard order (increasing dataset index, corrupt files excluded). ``dataset[row]`` returns
    ``(codes, label)``: ``codes`` (T,) int64 in [0, vocab), ``label`` () int64 in [0, num_classes). With ``augment``
    the augmentation is chosen per item from ``(seed, epoch, row)`` (see :func:`augmentation_choice`); without it the
    first augmentation (the plain centre crop) is always used. :meth:`get_batch` is the vectorised form the
    trainer uses.

    Args:
        root: the codes directory (must hold ``manifest.json``).
        seed: seed of the augmentation choice.
        augment: pick a random augmentation per item (training) or always augmentation 0 (evaluation).
        mmap: memory-map the code arrays (default) instead of loading them into memory.
    """

    def __init__(self, root: str | os.PathLike, seed: int = 0, augment: bool = True, mmap: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.seed, self.augment, self.mmap = seed, augment, mmap
        self.epoch = 0
        self.num_tokens = int(self.manifest["num_tokens"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.num_classes = int(self.manifest["num_classes"])
        self.num_augmentations = len(self.manifest["augmentations"])
        self._files = [self.root / s["file"] for s in self.manifest["shards"]]
        counts = np.array([int(s["count"]) for s in self.manifest["shards"]], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._shards: list[Shard] | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps themselves
        state = dict(self.__dict__)
        state["_shards"] = None
        return state

    def _open(self) -> list[Shard]:
        if self._shards is None:
            shards = [read_shard(f, mmap=self.mmap) for f in self._files]
            for f, sh, want in zip(self._files, shards, np.diff(self._offsets)):
                if len(sh.labels) != want or sh.codes.shape[1:] != (self.num_augmentations, self.num_tokens):
                    raise UnreadableDataError(
                        f"{f}: holds codes {tuple(sh.codes.shape)}, manifest says "
                        f"({want}, {self.num_augmentations}, {self.num_tokens})"
                    )
            self._shards = shards
        return self._shards

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation choice ``__getitem__`` uses."""
        self.epoch = epoch

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class id of every row."""
        return np.concatenate([s.labels for s in self._open()]) if len(self) else np.zeros(0, np.int64)

    @property
    def indices(self) -> np.ndarray:
        """(N,) int64 dataset index of every row."""
        return np.concatenate([s.indices for s in self._open()]) if len(self) else np.zeros(0, np.int64)

    def get_batch(self, rows: np.ndarray | list[int], epoch: int | None = None, aug: int | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Codes and labels of ``rows``.

        Args:
            rows: (B,) row numbers in [0, len(self)).
            epoch: epoch of the augmentation choice (default: the one set by :meth:`set_epoch`).
            aug: force this augmentation id for every row (overrides ``augment``).

        Returns:
            ``codes`` (B, T) int64 in [0, vocab) and ``labels`` (B,) int64.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"CodeDataset: row out of range [0, {n})")
        if aug is not None:
            augs = np.full(rows.shape, aug, dtype=np.int64)
        elif self.augment:
            augs = augmentation_choice(self.seed, self.epoch if epoch is None else epoch, rows, self.num_augmentations)
        else:
            augs = np.zeros(rows.shape, dtype=np.int64)
        shards = self._open()
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        codes = np.empty((rows.size, self.num_tokens), dtype=np.int64)
        labels = np.empty(rows.size, dtype=np.int64)
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            local = rows[sel] - self._offsets[k]
            codes[sel] = shards[k].codes[local, augs[sel]]
            labels[sel] = shards[k].labels[local]
        return torch.from_numpy(codes), torch.from_numpy(labels)

    def __getitem__(self, row: int) -> tuple[Tensor, Tensor]:
        codes, labels = self.get_batch([int(row)])
        return codes[0], labels[0]

    def holdout(self, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split the rows into sorted (train_rows, val_rows), ``val_size`` rows held out by a seeded permutation."""
        n = len(self)
        if not 0 <= val_size < n:
            raise UnreadableDataError(f"{self.root}: val_size must be in [0, {n}) for its {n} rows, got {val_size}")
        perm = np.random.default_rng(seed).permutation(n)
        return np.sort(perm[val_size:]), np.sort(perm[:val_size])


# ---------------------------------------------------------------------------------------------------- extraction
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "none": ("center",),
    "flip": ("center", "center-flip"),
    # torchvision TenCrop order: five_crop(img) then five_crop(hflip(img)) (so "top-left-flip" is the top-left
    # crop of the mirrored image, i.e. the mirrored top-right crop).
    "ten-crop": ("top-left", "top-right", "bottom-left", "bottom-right", "center",
                 "top-left-flip", "top-right-flip", "bottom-left-flip", "bottom-right-flip", "center-flip"),
}
TEN_CROP_RANGE = 1.1  # LlamaGen's --crop-range: ten crops of size S from a centre crop of int(S * 1.1)


def augment_views(x: Tensor, mode: str, size: int) -> Tensor:
    """The stored augmentations of a batch.

    Args:
        x: (B, 3, H, W) images in [-1, 1]; H = W = ``size`` for ``"none"`` / ``"flip"``, larger for ``"ten-crop"``
            (LlamaGen uses H = W = int(size * 1.1)).
        mode: ``"none"``, ``"flip"`` (image, horizontally mirrored image) or ``"ten-crop"`` (torchvision
            ``TenCrop(size)``: four corners and the centre, then the same five crops of the mirrored image; the centre
            crop starts at ``round((H - size) / 2)``).

    Returns:
        (B, A, 3, size, size) in the order of ``AUGMENTATIONS[mode]``.
    """
    if mode == "none":
        return x[:, None]
    if mode == "flip":
        return torch.stack([x, x.flip(-1)], dim=1)
    if mode != "ten-crop":
        raise ValueError(f"unknown augmentation mode {mode!r}; choose from {sorted(AUGMENTATIONS)}")
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"ten-crop: images of {h}x{w} are smaller than the crop size {size}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))

    def five(img: Tensor) -> list[Tensor]:
        return [img[..., :size, :size], img[..., :size, w - size:], img[..., h - size:, :size],
                img[..., h - size:, w - size:], img[..., top:top + size, left:left + size]]

    return torch.stack(five(x) + five(x.flip(-1)), dim=1)


def extract_shards(
    dataset: Dataset,
    encode: Callable[[Tensor], Tensor],
    out: str | os.PathLike,
    *,
    image_size: int,
    num_tokens: int,
    vocab_size: int,
    mode: str = "none",
    shard_size: int = 1000,
    batch_size: int = 64,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    max_shards: int | None = None,
    progress: bool = False,
) -> list[int]:
    """Encode this rank's unfinished shards (shard k belongs to rank ``k % world_size``) and write each atomically.

    ``dataset`` yields :class:`vfmtok.data.ImageSample` items (image in [-1, 1], label, index actually returned,
    skipped flag); an item whose returned index differs from the requested one was an unreadable file and is recorded
    in the shard's ``skipped`` list instead of being encoded. Finished shards are skipped and stale temporary files of
    this rank's shards removed, so a run killed at any moment resumes without losing or duplicating an image.

    Args:
        encode: (N, 3, S, S) float in [-1, 1] on ``device`` -> (N, T) integer codes in [0, vocab_size),
            T = ``num_tokens``; S = ``image_size``.
        mode: augmentations stored per image, a key of :data:`AUGMENTATIONS` (see :func:`augment_views`).
        max_shards: stop after writing this many shards (resume later with the same arguments).

    Returns:
        The shard numbers written by this call.
    """
    from torch.utils.data import DataLoader

    from .datasets import collate_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(len(dataset), shard_size)
    mine = [k for k in range(len(ranges)) if k % world_size == rank]
    for k in mine:  # temporaries of a killed run (other ranks clean their own)
        for stale in out.glob(f".{shard_path(out, k).name}.*.tmp"):
            stale.unlink(missing_ok=True)
    todo = [k for k in mine if not shard_path(out, k).exists()][: max_shards if max_shards is not None else None]
    if not todo:
        return []
    batches = [list(range(s, min(s + batch_size, ranges[k][1]))) for k in todo
               for s in range(ranges[k][0], ranges[k][1], batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_images, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    dtype = codes_dtype(vocab_size)
    it = iter(loader)
    from tqdm import tqdm

    bar = tqdm(total=sum(r - s for s, r in (ranges[k] for k in todo)), disable=not progress, unit="img")
    for k in todo:
        start, stop = ranges[k]
        parts: dict[str, list] = {"codes": [], "labels": [], "indices": [], "skipped": []}
        for s in range(start, stop, batch_size):
            batch = next(it)
            requested = torch.arange(s, min(s + batch_size, stop))
            ok = batch.index == requested  # a replaced (unreadable) item comes back with another index
            parts["skipped"].append(requested[~ok].numpy())
            if bool(ok.any()):
                x = augment_views(batch.image[ok].to(device, non_blocking=True), mode, image_size)  # (b, A, 3, S, S)
                codes = encode(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)  # (b, A, T)
                parts["codes"].append(codes.cpu().numpy().astype(dtype))
                parts["labels"].append(batch.label[ok].numpy())
                parts["indices"].append(requested[ok].numpy())
            bar.update(len(requested))
        num_aug = len(AUGMENTATIONS[mode])
        codes = np.concatenate(parts["codes"]) if parts["codes"] else np.zeros((0, num_aug, num_tokens), dtype)
        labels, indices, skipped = (np.concatenate(parts[n]).astype(np.int64) if parts[n] else np.zeros(0, np.int64)
                                    for n in ("labels", "indices", "skipped"))
        write_shard(shard_path(out, k), Shard(codes, labels, indices, skipped))
        log.info("wrote %s (%d images, %d skipped)", shard_path(out, k).name, len(codes), len(skipped))
    bar.close()
    return todo


def verify_shards(out: str | os.PathLike, num_images: int, shard_size: int, num_aug: int, num_tokens: int,
                  vocab_size: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Check that every dataset index appears exactly once, encoded or skipped, in the shard of its range.

    Returns:
        (shard entries for the manifest, all skipped indices). Raises ``ValueError`` naming the first problem
        (``FileNotFoundError`` listing missing shards when the extraction is unfinished).
    """
    out = Path(out)
    ranges = shard_ranges(num_images, shard_size)
    missing = [shard_path(out, k).name for k in range(len(ranges)) if not shard_path(out, k).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(ranges)} shards are not written yet (first: {missing[0]}); "
                                "re-run the same command to finish the extraction")
    entries, skipped = [], []
    for k, (start, stop) in enumerate(ranges):
        path = shard_path(out, k)
        sh = read_shard(path, mmap=True)
        seen = np.sort(np.concatenate([sh.indices, sh.skipped]))
        if not np.array_equal(seen, np.arange(start, stop)):
            raise UnreadableDataError(f"{path}: does not cover dataset indices [{start}, {stop}) exactly once")
        if len(sh.indices) and (sh.codes.shape[1:] != (num_aug, num_tokens) or int(sh.codes.max()) >= vocab_size):
            raise UnreadableDataError(f"{path}: codes {tuple(sh.codes.shape)} (max {int(sh.codes.max())}) do not match "
                             f"({num_aug}, {num_tokens}) tokens in a vocabulary of {vocab_size}")
        entries.append({"file": path.name, "start": start, "stop": stop, "count": int(len(sh.indices)),
                        "skipped": int(len(sh.skipped))})
        skipped += sh.skipped.tolist()
    return entries, skipped
