"""Reading image sets for evaluation, batch by batch, never all at once.

* Sample files (the sampling -> evaluation contract): an ``.npz`` with a uint8 (N, H, W, 3) array (``arr_0`` as
  DiT/ADM write it, or ``images``), streamed straight from the zip member like ADM's evaluator does; or a directory of
  image files (sorted by path, any format PIL reads, converted to RGB; all must share one size).
* Real data for the tokenizer: an ImageFolder (``root/<class>/<image>``) or a flat folder, through
  :mod:`vfmtok.data.datasets` with the ADM centre crop; unreadable files are skipped and counted (a file the dataset
  replaced by its neighbour is dropped here, so no image is evaluated twice).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

NPZ_IMAGE_KEYS = ("arr_0", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def _npz_image_member(zf: zipfile.ZipFile, path: Path) -> str:
    names = set(zf.namelist())
    for key in NPZ_IMAGE_KEYS:
        if f"{key}.npy" in names:
            return f"{key}.npy"
    raise ValueError(f"{path}: no image array (expected one of {', '.join(NPZ_IMAGE_KEYS)}; has {sorted(names)})")


def _read_npy_header(f: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return np.lib.format._read_array_header(f, version)  # noqa: SLF001 - format 3.0 has no public reader


def open_npz(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open an ``.npz`` as a zip file; a truncated or corrupt one raises ``UnreadableDataError`` naming it."""
    from ..data.datasets import UnreadableDataError

    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise UnreadableDataError(f"{path}: truncated or corrupt .npz file ({type(e).__name__}: {e})") from None


def npz_has_images(path: str | os.PathLike) -> bool:
    with open_npz(path) as zf:
        names = set(zf.namelist())
    return any(f"{k}.npy" in names for k in NPZ_IMAGE_KEYS)


def iter_npz_images(path: str | os.PathLike, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
    """Stream uint8 (b, H, W, 3) batches from the image array of an ``.npz`` (compressed or not)."""
    import zlib

    from ..data.datasets import UnreadableDataError

    path = Path(path)
    with open_npz(path) as zf:
        member = _npz_image_member(zf, path)
        with zf.open(member) as f:
            shape, fortran, dtype = _read_npy_header(f)
            if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
                raise ValueError(f"{path}:{member}: expected C-order uint8 (N, H, W, 3), got {dtype} {shape}")
            n = shape[0] if limit is None else min(shape[0], limit)
            per_image = int(np.prod(shape[1:]))
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                try:
                    buf = f.read(b * per_image)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a CRC or inflate error mid-file
                    raise UnreadableDataError(f"{path}:{member}: corrupt array data ({type(e).__name__}: {e})") \
                        from None
                if len(buf) != b * per_image:
                    raise UnreadableDataError(f"{path}:{member}: truncated array data")
                yield np.frombuffer(buf, dtype=np.uint8).reshape(b, *shape[1:])


def npz_num_images(path: str | os.PathLike) -> int:
    with open_npz(path) as zf:
        with zf.open(_npz_image_member(zf, Path(path))) as f:
            return int(_read_npy_header(f)[0][0])


def list_image_files(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path."""
    root = Path(root)
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def iter_folder_images(
    root: str | os.PathLike, batch_size: int, limit: int | None = None, counter: SkipCounter | None = None
) -> Iterator[np.ndarray]:
    """Stream uint8 (b, H, W, 3) batches from a folder of sample images (unreadable files skipped and counted)."""
    files = list_image_files(root)
    if not files:
        raise FileNotFoundError(f"no images found under {root}")
    batch: list[np.ndarray] = []
    size: tuple[int, ...] | None = None
    taken = 0
    for p in files:
        if limit is not None and taken >= limit:
            break
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - one bad file must not end the evaluation
            log.warning("skipping unreadable image %s: %s", p, e)
            if counter is not None:
                counter.skipped += 1
            continue
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise ValueError(f"{p}: size {arr.shape[:2]} differs from the first image's {size[:2]}")
        batch.append(arr)
        taken += 1
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


class SkipCounter:
    """Mutable count of unreadable files met while iterating."""

    def __init__(self) -> None:
        self.skipped = 0


def iter_sample_images(
    path: str | os.PathLike, batch_size: int, limit: int | None = None, counter: SkipCounter | None = None
) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches from an ``.npz`` sample file or a folder of images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples not found: {path}")
    if path.is_dir():
        return iter_folder_images(path, batch_size, limit, counter)
    if path.suffix == ".npz":
        return iter_npz_images(path, batch_size, limit)
    raise ValueError(f"{path}: expected an .npz of uint8 (N, H, W, 3) images or a folder of images")


class EvalBatch(NamedTuple):
    """``x``: (B, 3, S, S) float in [-1, 1]; ``u8``: the same images as uint8 (B, S, S, 3); ``label`` (B,) int64
    (-1 for unlabelled folders)."""

    x: Tensor
    u8: np.ndarray
    label: Tensor


def open_eval_dataset(root: str | os.PathLike, image_size: int) -> torch.utils.data.Dataset:
    """ImageFolder (class sub-folders) or flat folder of real images, ADM centre crop to ``image_size``."""
    from ..data.datasets import FlatFolderDataset, ImageFolderDataset
    from ..data.transforms import ImageTransform

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    transform = ImageTransform(image_size, crop="center")
    has_class_dirs = any(
        e.is_dir() and not e.name.startswith(".") and list_image_files(e.path) for e in os.scandir(root)
    )
    if has_class_dirs and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return ImageFolderDataset(root, transform)
    return FlatFolderDataset(root, transform)


def iter_eval_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    limit: int | None = None,
    num_workers: int = 0,
    counter: SkipCounter | None = None,
) -> Iterator[EvalBatch]:
    """Batches of ``limit`` readable items, skipping and counting unreadable files.

    With a ``limit`` below the dataset size the items are evenly spaced over the dataset (deterministic), so a subset
    of a class-sorted ImageFolder keeps every class in proportion instead of the first classes only.
    """
    from ..data.datasets import collate_images

    total = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= total:
        rows: Sequence[int] = range(total)
    else:
        rows = sorted(set(torch.linspace(0, total - 1, max(1, limit)).round().long().tolist()))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, rows), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=collate_images,
    )
    seen: set[int] = set()
    for batch in loader:
        keep = []
        for k, j in enumerate(batch.index.tolist()):
            if j in seen:  # a bad file replaced by a neighbour we already have (or will read ourselves)
                continue
            seen.add(j)
            keep.append(k)
        if counter is not None:
            counter.skipped += int(batch.skipped)
        if not keep:
            continue
        x = batch.image[keep]
        u8 = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        yield EvalBatch(x=x, u8=u8, label=batch.label[keep])
