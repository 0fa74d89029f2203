"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files), exported as an ImageFolder.

The demo's default data. ``export_fashion_mnist`` writes ``<out>/{train,test}/<class>/<index>.png`` so the rest of the
pipeline sees an ordinary ImageFolder, exactly as it would see a user's ``--data`` folder.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (uint8 images (N, 28, 28) or labels (N,))."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def load_split(split: str, root: str | os.PathLike = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` in ``{"train", "test"}``."""
    root = Path(root)
    img_name, lbl_name = FILES[split]
    for name in (img_name, lbl_name):
        if not (root / name).exists():
            raise FileNotFoundError(
                f"Fashion-MNIST file {root / name} not found. Install Debian's package "
                f"(`sudo apt-get install dataset-fashion-mnist`) or pass --data with any ImageFolder directory."
            )
    images, labels = read_idx(root / img_name), read_idx(root / lbl_name).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images, labels


def export_fashion_mnist(
    out: str | os.PathLike,
    per_class: dict[str, int] | None = None,
    root: str | os.PathLike = DEBIAN_DIR,
    seed: int = 0,
) -> Path:
    """Write a class-balanced subset as PNGs: ``<out>/<split>/<class>/<index>.png``. Idempotent: a finished export
    (marked by ``<out>/.complete``) is reused. ``per_class``: images per class and split, e.g. ``{"train": 500,
    "test": 100}`` (None = all)."""
    out = Path(out)
    marker = out / ".complete"
    if marker.exists():
        return out
    per_class = per_class or {"train": 10**9, "test": 10**9}
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        images, labels = load_split(split, root)
        for c, name in enumerate(CLASSES):
            idx = np.flatnonzero(labels == c)
            idx = np.sort(rng.permutation(idx)[:n])
            d = out / split / f"{c}-{name}"
            d.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(images[i], mode="L").save(d / f"{i:05d}.png")
    marker.write_text("ok\n")
    return out
