"""Image datasets that never die on a bad file: class folders, flat folders and webdataset-style tar shards.

Every dataset here is map-style (exact resume through a sampler that skips already-seen positions) and yields
:class:`ImageSample` ``(image, label, index, skipped)``; :func:`collate_images` stacks them into an
:class:`ImageBatch` and sums ``skipped``.

Bad files (corrupt, truncated, zero-byte, undecodable, unreadable label) are found lazily, when an item is first
read: it is logged as a warning and replaced *deterministically* by the next readable index (``i+1, i+2, ...``,
wrapping). The sample's ``skipped`` is 1 when the requested item itself was bad, so summing ``batch.skipped`` over an
epoch counts the bad files among the visited indices exactly once each, with any number of DataLoader workers (the
count travels inside the batch rather than in per-worker state). ``index`` is the index actually returned.

Augmentation randomness for item ``i`` comes from ``numpy.random.default_rng((seed, epoch, i))``: a sample's crop
and flip are a function of (seed, epoch, requested index) only, independent of workers, batch and resume point.
Call :meth:`ImageDataset.set_epoch` each epoch *before* creating the DataLoader iterator (with
``persistent_workers=True`` the workers keep the epoch they were started with).

A missing path raises ``FileNotFoundError`` and a path without images :class:`NoImagesError` (a
``FileNotFoundError`` and a ``ValueError``), both naming the path, at construction time. Data that turns out unreadable
when read (every file tried is corrupt) raises :class:`UnreadableDataError` naming the files. Every warning names the
file it is about, including the warnings PIL gives while decoding (e.g. corrupt EXIF data, decompression bombs).
"""

from __future__ import annotations

import abc
import io
import logging
import os
import posixpath
import re
import tarfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm")
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
UNLABELED = -1  # label of images without a class (flat folders, tar samples without ``.cls``)
_BAD_LABEL = -2  # a ``.cls`` member that could not be parsed: the sample counts as unreadable

Transform = Callable[[Image.Image, np.random.Generator], Tensor]


class NoImagesError(FileNotFoundError, ValueError):
    """A dataset path that exists but holds no usable images."""


class UnreadableDataError(ValueError):
    """Every image tried in a row was unreadable: the data is corrupt (or not images at all)."""


class ImageSample(NamedTuple):
    """One item: ``image`` (3, S, S) float in [-1, 1]; ``label`` int (-1: unlabelled); ``index`` of the file
    returned; ``skipped`` 1 if the requested file was unreadable and replaced, else 0."""

    image: Tensor
    label: int
    index: int
    skipped: int


class ImageBatch(NamedTuple):
    """``image`` (B, 3, S, S) float in [-1, 1]; ``label`` (B,) int64; ``index`` (B,) int64; ``skipped`` int: the
    number of unreadable files replaced in this batch."""

    image: Tensor
    label: Tensor
    index: Tensor
    skipped: int


def collate_images(samples: Sequence[ImageSample]) -> ImageBatch:
    """Stack :class:`ImageSample` items into an :class:`ImageBatch` (use as the DataLoader ``collate_fn``)."""
    return ImageBatch(
        image=torch.stack([s.image for s in samples]),
        label=torch.tensor([s.label for s in samples], dtype=torch.int64),
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
        skipped=int(sum(s.skipped for s in samples)),
    )


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """Encoded image bytes -> fully decoded 8-bit RGB image (see :func:`vfmtok.data.transforms.to_rgb`).

    ``name`` (the file the bytes came from) is used in the error and in the warnings PIL gives while decoding,
    which are logged as ``<name>: <warning>`` instead of naming an in-memory buffer.

    Raises:
        ValueError: empty data.
        OSError / PIL errors: corrupt, truncated or unsupported data (truncated images are never half-loaded).
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()  # decode now: truncation and corruption surface here, not later inside a transform
            rgb = to_rgb(img)
        except Image.UnidentifiedImageError:
            raise Image.UnidentifiedImageError(f"not an image format PIL can identify ({len(data)} bytes)") from None
    for w in caught:
        log.warning("%s: %s", name, _without_buffer(str(w.message)))
    return rgb


def _without_buffer(text: str) -> str:
    """PIL messages quote the file object (``<_io.BytesIO object at 0x...>``): drop it, the caller names the file."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text)


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(f"data path not found: {root}")
    if not root.is_dir():
        raise NoImagesError(f"expected a directory of images, got a file: {root}")


def _scan_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """All image files under ``root`` (recursive, following links, hidden entries skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if _is_image(f, extensions)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImageDataset(Dataset[ImageSample], abc.ABC):
    """Base class: lazy validation with deterministic replacement, and per-item seeded augmentation.

    Subclasses implement ``__len__``, :meth:`read_bytes`, :meth:`label_of` and :meth:`describe`.

    Args:
        transform: ``transform(img, rng) -> (3, S, S)`` tensor, e.g. :class:`vfmtok.data.transforms.ImageTransform`.
        seed: augmentation seed (>= 0).
        max_retries: how many consecutive unreadable files are tolerated before giving up with an
            :class:`UnreadableDataError`.
    """

    def __init__(self, transform: Transform, seed: int = 0, max_retries: int = 64) -> None:
        if seed < 0 or max_retries < 1:
            raise ValueError(f"need seed >= 0 and max_retries >= 1, got seed={seed}, max_retries={max_retries}")
        self.transform = transform
        self.seed, self.epoch, self.max_retries = seed, 0, max_retries
        self._bad: set[int] = set()
        self._last_error = "none recorded in this process"

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items, unreadable ones included."""

    @abc.abstractmethod
    def read_bytes(self, i: int) -> bytes:
        """Encoded bytes of item ``i``; raises on I/O errors or an unreadable label."""

    @abc.abstractmethod
    def label_of(self, i: int) -> int:
        """Class index of item ``i`` (``UNLABELED`` if none)."""

    @abc.abstractmethod
    def describe(self, i: int) -> str:
        """Human-readable location of item ``i`` (for warnings)."""

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of this epoch."""
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        """Label of every item (no file is read)."""
        return [self.label_of(i) for i in range(len(self))]

    @property
    def bad_indices(self) -> list[int]:
        """Unreadable items found so far *in this process* (workers keep their own; use ``batch.skipped``)."""
        return sorted(self._bad)

    def load_image(self, i: int) -> Image.Image:
        """Decoded RGB image of item ``i``; raises if it is unreadable."""
        return decode_image(self.read_bytes(i), self.describe(i))

    def _try_load(self, j: int) -> Image.Image | None:
        if j in self._bad:
            return None
        try:
            return self.load_image(j)
        except Exception as e:  # noqa: BLE001 - any decode failure of one file must not end the run
            self._bad.add(j)
            log.warning("skipping unreadable image %s: %s: %s", self.describe(j), type(e).__name__,
                        _without_buffer(str(e)))
            self._last_error = f"{type(e).__name__}: {_without_buffer(str(e))}"
            return None

    def __getitem__(self, i: int) -> ImageSample:
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        for attempt in range(min(self.max_retries, n)):
            j = (i + attempt) % n
            img = self._try_load(j)
            if img is not None:
                rng = np.random.default_rng((self.seed, self.epoch, i))  # keyed by the requested index
                return ImageSample(self.transform(img, rng), self.label_of(j), j, int(attempt > 0))
        tried = min(self.max_retries, n)
        what = f"all {n} images" if tried == n else f"{tried} images in a row"
        raise UnreadableDataError(f"{what} unreadable, from {self.describe(i)} to {self.describe((i + tried - 1) % n)} "
                                  f"(last error: {self._last_error}); the data looks corrupt or "
                                  "is not images")


class ImageFolderDataset(ImageDataset):
    """``root/<class>/**/<image>``: class names are the sorted sub-folder names, labels their positions.

    Attributes:
        classes: sorted class names (folders without images keep their index, with a warning).
        class_to_idx: name -> label.
        samples: ``(path, label)`` per item, sorted by class then relative path.
    """

    def __init__(self, root: str | os.PathLike, transform: Transform, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 seed: int = 0, max_retries: int = 64) -> None:
        super().__init__(transform, seed, max_retries)
        self.root = Path(root)
        _require_dir(self.root)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise NoImagesError(f"no class sub-folders in {self.root} (expected root/<class>/<image>)")
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            files = _scan_images(self.root / c, extensions)
            if not files:
                log.warning("class folder without images: %s", self.root / c)
            self.samples += [(p, self.class_to_idx[c]) for p in files]
        if not self.samples:
            raise NoImagesError(f"no images found under {self.root} (extensions {', '.join(extensions)})")

    def __len__(self) -> int:
        return len(self.samples)

    def read_bytes(self, i: int) -> bytes:
        return self.samples[i][0].read_bytes()

    def label_of(self, i: int) -> int:
        return self.samples[i][1]

    def describe(self, i: int) -> str:
        return str(self.samples[i][0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class FlatFolderDataset(ImageDataset):
    """Every image under ``root`` (recursive), sorted by relative path; all labels are ``UNLABELED`` (-1), so a
    class-conditional model fails loudly instead of silently training on class 0."""

    def __init__(self, root: str | os.PathLike, transform: Transform, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 seed: int = 0, max_retries: int = 64) -> None:
        super().__init__(transform, seed, max_retries)
        self.root = Path(root)
        _require_dir(self.root)
        self.files = _scan_images(self.root, extensions)
        if not self.files:
            raise NoImagesError(f"no images found under {self.root} (extensions {', '.join(extensions)})")

    def __len__(self) -> int:
        return len(self.files)

    def read_bytes(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def label_of(self, i: int) -> int:
        return UNLABELED

    def describe(self, i: int) -> str:
        return str(self.files[i])


class TarShardDataset(ImageDataset):
    """webdataset-style plain ``.tar`` shards, map-style over an index of member offsets.

    Members are grouped by key = directory + basename up to the first dot (``a/0001.jpg`` and ``a/0001.cls`` form
    sample ``a/0001``); a sample needs one image member (the first one with an image extension) and may have a
    ``.cls`` / ``.cls.txt`` member holding an integer label (else ``UNLABELED``). Indexing reads every member header
    once (and the tiny ``.cls`` payloads); afterwards each item is one ``seek`` + ``read``. Each worker process opens
    its own file handles. A truncated shard keeps the samples indexed before the damage (with a warning); members
    that are cut short are counted as unreadable like any bad file. Compressed tars are refused: extract them.

    Args:
        shards: a ``.tar`` file, a directory (its ``*.tar`` files, sorted) or a sequence of ``.tar`` files.
        transform, seed, max_retries: see :class:`ImageDataset`.
        extensions: image member extensions.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], transform: Transform, *,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, seed: int = 0, max_retries: int = 64) -> None:
        super().__init__(transform, seed, max_retries)
        self.shards = _resolve_shards(shards)
        self._exts = tuple(e.lower().lstrip(".") for e in extensions)
        shard_ids, offsets, sizes, labels, self.names = [], [], [], [], []
        for k, path in enumerate(self.shards):
            for name, offset, size, label in self._index_shard(path):
                shard_ids.append(k)
                offsets.append(offset)
                sizes.append(size)
                labels.append(label)
                self.names.append(name)
        if not self.names:
            raise NoImagesError(f"no image members in {', '.join(map(str, self.shards))}")
        # compact arrays: cheap to share with forked DataLoader workers
        self._shard = np.asarray(shard_ids, dtype=np.int32)
        self._offset = np.asarray(offsets, dtype=np.int64)
        self._size = np.asarray(sizes, dtype=np.int64)
        self._label = np.asarray(labels, dtype=np.int64)
        self._handles: dict[int, io.BufferedReader] = {}
        self._handles_pid = os.getpid()

    def _index_shard(self, path: Path) -> list[tuple[str, int, int, int]]:
        groups: dict[str, dict] = {}
        with tarfile.open(path, mode="r:") as tf:
            try:
                for m in tf:
                    if not m.isfile():
                        continue
                    folder, base = posixpath.split(m.name)
                    if base.startswith("."):
                        continue
                    stem, _, ext = base.partition(".")
                    key, ext = posixpath.join(folder, stem), ext.lower()
                    g = groups.setdefault(key, {})
                    if ext in ("cls", "cls.txt") and "label" not in g:
                        g["label"] = _read_label(tf, m, f"{path}:{m.name}")
                    elif ext.rsplit(".", 1)[-1] in self._exts and "image" not in g:
                        g["image"] = (m.name, m.offset_data, m.size)
            except (tarfile.TarError, EOFError, OSError) as e:
                log.warning("shard %s is damaged after %d samples (%s); keeping those", path, len(groups), e)
        out = []
        for g in groups.values():
            if "image" in g:
                name, offset, size = g["image"]
                out.append((f"{path}:{name}", offset, size, g.get("label", UNLABELED)))
        return out

    def __len__(self) -> int:
        return len(self.names)

    def _handle(self, k: int) -> io.BufferedReader:
        if self._handles_pid != os.getpid():  # forked worker: never share a file offset with the parent
            self._handles, self._handles_pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = open(self.shards[k], "rb")  # noqa: SIM115 - kept open for the dataset's lifetime
        return self._handles[k]

    def read_bytes(self, i: int) -> bytes:
        if self._label[i] == _BAD_LABEL:
            raise ValueError("unreadable .cls label")
        f = self._handle(int(self._shard[i]))
        f.seek(int(self._offset[i]))
        size = int(self._size[i])
        data = f.read(size)
        if len(data) != size:
            raise EOFError(f"tar member truncated: {len(data)} of {size} bytes")
        return data

    def label_of(self, i: int) -> int:
        return max(int(self._label[i]), UNLABELED)

    def describe(self, i: int) -> str:
        return self.names[i]

    @property
    def num_classes(self) -> int:
        """``max label + 1`` (0 when unlabelled)."""
        return int(self._label.max()) + 1 if len(self._label) else 0

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not pickle (spawned workers reopen them)
        return state


def _read_label(tf: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> int:
    try:
        label = int(tf.extractfile(member).read().decode("utf-8").strip())
        if label < 0:
            raise ValueError(f"negative label {label}")
        return label
    except (ValueError, UnicodeDecodeError, tarfile.TarError, OSError, AttributeError) as e:
        log.warning("unreadable label %s (%s); the sample will be skipped", where, e)
        return _BAD_LABEL


def _is_compressed_tar(path: Path) -> bool:
    return path.name.lower().endswith(COMPRESSED_TAR_SUFFIXES)


def _compressed_hint(path: Path) -> str:
    return (f"{path} is a compressed archive; extract it first (e.g. `tar -xf {path} -C DIR`) and pass the "
            "extracted folder, or repack it as plain .tar shards")


def _resolve_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(shards, (str, os.PathLike)):
        root = Path(shards)
        if not root.exists():
            raise FileNotFoundError(f"data path not found: {root}")
        paths = sorted(p for p in root.iterdir() if p.name.lower().endswith(".tar")) if root.is_dir() else [root]
        if not paths:
            raise NoImagesError(f"no .tar shards in {root}")
    else:
        paths = [Path(p) for p in shards]
        if not paths:
            raise ValueError("TarShardDataset: empty list of shards")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"tar shard not found: {p}")
        if _is_compressed_tar(p):
            raise ValueError(_compressed_hint(p))
        if not p.name.lower().endswith(".tar"):
            raise ValueError(f"not a .tar shard: {p}")
    return paths


DATASET_KINDS = ("auto", "folder", "flat", "tar")


def _detect_kind(root: Path, extensions: Sequence[str]) -> str:
    if root.is_file():
        if _is_compressed_tar(root):
            raise ValueError(_compressed_hint(root))
        if root.name.lower().endswith(".tar"):
            return "tar"
        raise ValueError(f"unsupported data path (expected a folder of images or a .tar shard): {root}")
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    if any(e.is_file() and _is_image(e.name, extensions) for e in entries):
        return "flat"
    subdirs = [Path(e.path) for e in entries if e.is_dir()]
    if any(_scan_images(d, extensions) for d in subdirs):
        return "folder"
    if any(e.is_file() and e.name.lower().endswith(".tar") for e in entries):
        return "tar"
    compressed = [e.name for e in entries if e.is_file() and _is_compressed_tar(Path(e.name))]
    if compressed:
        raise NoImagesError(f"no images in {root}; {_compressed_hint(root / compressed[0])}")
    raise NoImagesError(f"no images or .tar shards found under {root}")


def open_image_dataset(path: str | os.PathLike | Sequence[str | os.PathLike], transform: Transform, *,
                       kind: str = "auto", extensions: Sequence[str] = IMAGE_EXTENSIONS, seed: int = 0,
                       max_retries: int = 64) -> ImageDataset:
    """Open a folder of images, a folder of class folders or tar shards, choosing by the path.

    ``kind="auto"``: a ``.tar`` file or a sequence of them -> :class:`TarShardDataset`; a directory with images at its
    top level -> :class:`FlatFolderDataset`; a directory whose sub-folders hold images -> :class:`ImageFolderDataset`;
    a directory of ``.tar`` files -> :class:`TarShardDataset`. Compressed archives get an "extract it first" error.

    Raises:
        FileNotFoundError: the path does not exist.
        NoImagesError: the path holds no images (also a ``ValueError``).
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {DATASET_KINDS}")
    common = dict(extensions=extensions, seed=seed, max_retries=max_retries)
    if not isinstance(path, (str, os.PathLike)):
        if kind not in ("auto", "tar"):
            raise ValueError(f"a list of paths is only supported for tar shards, got kind={kind!r}")
        return TarShardDataset(path, transform, **common)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data path not found: {root}")
    if kind == "auto":
        kind = _detect_kind(root, extensions)
    log.info("opening %s as a %s dataset", root, kind)
    if kind == "tar":
        return TarShardDataset(root, transform, **common)
    if kind == "folder":
        return ImageFolderDataset(root, transform, **common)
    return FlatFolderDataset(root, transform, **common)
