"""Datasets: robust loading (corrupt / truncated / zero-byte files skipped and counted exactly), unusual image modes,
class folders, flat folders, tar shards, path detection and clear errors."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vfmtok.data.datasets import (
    UNLABELED,
    FlatFolderDataset,
    ImageBatch,
    ImageFolderDataset,
    NoImagesError,
    TarShardDataset,
    UnreadableDataError,
    collate_images,
    open_image_dataset,
)
from vfmtok.data.transforms import ImageTransform

SIZE = 16


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _rgb(seed: int, w: int = 24, h: int = 20) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _palette_with_transparency() -> Image.Image:
    pal = _rgb(5).convert("P")
    pal.info["transparency"] = 0
    return pal


GOOD = {
    "cat/a_rgb.jpg": lambda: _encode(_rgb(1), "JPEG"),
    "cat/b_gray.png": lambda: _encode(_rgb(2).convert("L"), "PNG"),
    "cat/c_cmyk.jpg": lambda: _encode(_rgb(3).convert("CMYK"), "JPEG"),
    "dog/e_rgba.png": lambda: _encode(_rgb(4).convert("RGBA"), "PNG"),
    "dog/f_palette.png": lambda: _encode(_palette_with_transparency(), "PNG"),
    "dog/g_16bit.png": lambda: _encode(Image.fromarray((np.arange(480).reshape(20, 24) * 130).astype(np.uint16)),
                                       "PNG"),
    "dog/i_rgb.jpg": lambda: _encode(_rgb(6), "JPEG"),
}
BAD = {
    "cat/d_truncated.jpg": lambda: _encode(_rgb(7, 64, 64), "JPEG")[:700],
    "dog/h_empty.jpg": lambda: b"",
}


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for rel, make in {**GOOD, **BAD}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(make())
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.jpg").write_bytes(b"junk")  # hidden files are never listed
    (root / "bird").mkdir()  # a class without images keeps its label
    return root


def _epoch(ds, num_workers: int, batch_size: int = 4, shuffle: bool = False) -> tuple[list[ImageBatch], int]:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images,
                        shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    return batches, sum(b.skipped for b in batches)


def test_folder_loads_every_good_image_and_counts_exactly_two_skipped(image_folder: Path) -> None:
    ds = ImageFolderDataset(image_folder, ImageTransform(SIZE))
    assert ds.classes == ["bird", "cat", "dog"] and ds.num_classes == 3
    names = [p.name for p, _ in ds.samples]
    assert names == ["a_rgb.jpg", "b_gray.png", "c_cmyk.jpg", "d_truncated.jpg", "e_rgba.png", "f_palette.png",
                     "g_16bit.png", "h_empty.jpg", "i_rgb.jpg"]
    assert ds.labels == [1, 1, 1, 1, 2, 2, 2, 2, 2]
    for workers in (0, 2):
        batches, skipped = _epoch(ds, workers)
        assert skipped == 2
        index = torch.cat([b.index for b in batches]).tolist()
        assert index == [0, 1, 2, 4, 4, 5, 6, 8, 8]  # bad items replaced by the next readable one
        assert set(index) == {i for i, n in enumerate(names) if n not in ("d_truncated.jpg", "h_empty.jpg")}
        b = batches[0]
        assert b.image.shape == (4, 3, SIZE, SIZE) and b.image.dtype == torch.float32
        assert b.label.dtype == torch.int64 and b.index.dtype == torch.int64 and isinstance(b.skipped, int)
        assert b.image.min() >= -1 and b.image.max() <= 1
    _, skipped = _epoch(ds, 0, batch_size=3, shuffle=True)
    assert skipped == 2  # independent of order and batching
    assert ds.bad_indices == [3, 7]


def test_unusual_modes_decode_to_sensible_rgb(image_folder: Path) -> None:
    ds = ImageFolderDataset(image_folder, ImageTransform(SIZE))
    by_name = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    sixteen = np.asarray(ds.load_image(by_name["g_16bit.png"]))
    assert sixteen.dtype == np.uint8 and sixteen.max() > 200 and sixteen.min() == 0  # rescaled, not clipped
    assert len(np.unique(sixteen)) > 100
    cmyk = np.asarray(ds.load_image(by_name["c_cmyk.jpg"])).astype(int)
    assert np.abs(cmyk - np.asarray(_rgb(3))).mean() < 20  # close to the original colours
    assert ds.load_image(by_name["f_palette.png"]).mode == "RGB"


def test_augmentation_is_a_function_of_seed_epoch_and_index(image_folder: Path) -> None:
    ds = ImageFolderDataset(image_folder, ImageTransform(SIZE, crop="random", hflip=True), seed=3)
    first = torch.cat([b.image for b in _epoch(ds, 0)[0]])
    again = torch.cat([b.image for b in _epoch(ds, 2)[0]])
    assert torch.equal(first, again)  # same with worker processes
    ds.set_epoch(1)
    assert not torch.equal(first, torch.cat([b.image for b in _epoch(ds, 0)[0]]))


def test_flat_folder_is_unlabelled(image_folder: Path) -> None:
    ds = FlatFolderDataset(image_folder, ImageTransform(SIZE))
    assert len(ds) == 9 and set(ds.labels) == {UNLABELED}
    assert _epoch(ds, 0)[1] == 2


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_tar_shards_group_members_and_skip_bad_samples(tmp_path: Path) -> None:
    jpg = lambda s: _encode(_rgb(s), "JPEG")  # noqa: E731
    _tar(tmp_path / "train-000.tar", [
        ("s/000.jpg", jpg(0)), ("s/000.cls", b"3\n"),
        ("s/001.cls", b"0"), ("s/001.png", _encode(_rgb(1), "PNG")),  # label before image: still grouped
        ("s/002.jpg", b"\xff\xd8 not really a jpeg"), ("s/002.cls", b"1"),
        ("s/003.jpg", jpg(3)), ("s/003.cls", b"abc"),  # unreadable label -> the sample is skipped
        ("s/004.cls", b"2"),  # no image: not a sample
    ])
    _tar(tmp_path / "train-001.tar", [("t/005.jpeg", jpg(5)), ("t/006.seg.png", _encode(_rgb(6), "PNG"))])
    ds = open_image_dataset(tmp_path, ImageTransform(SIZE))
    assert isinstance(ds, TarShardDataset) and len(ds.shards) == 2
    assert [n.split(":")[-1] for n in ds.names] == ["s/000.jpg", "s/001.png", "s/002.jpg", "s/003.jpg",
                                                    "t/005.jpeg", "t/006.seg.png"]
    assert ds.labels == [3, 0, 1, UNLABELED, UNLABELED, UNLABELED] and ds.num_classes == 4
    for workers in (0, 2):
        batches, skipped = _epoch(ds, workers, batch_size=2)
        assert skipped == 2
        assert torch.cat([b.index for b in batches]).tolist() == [0, 1, 4, 4, 4, 5]
        assert torch.cat([b.label for b in batches]).tolist() == [3, 0, -1, -1, -1, -1]
    np.testing.assert_array_equal(np.asarray(ds.load_image(0)), np.asarray(Image.open(io.BytesIO(jpg(0)))))
    clone = pickle.loads(pickle.dumps(ds))  # open handles are dropped, spawned workers reopen them
    assert torch.equal(clone[1].image, ds[1].image)
    ds.close()


def test_truncated_tar_keeps_the_readable_samples(tmp_path: Path) -> None:
    path = _tar(tmp_path / "cut.tar", [(f"{k}.jpg", _encode(_rgb(k, 64, 64), "JPEG")) for k in range(3)])
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
    path.write_bytes(data[: last.offset_data + last.size // 2])  # cut inside the last member's data
    ds = TarShardDataset(path, ImageTransform(SIZE))
    assert len(ds) == 3
    assert _epoch(ds, 0)[1] == 1


def test_open_image_dataset_detects_layouts(image_folder: Path, tmp_path: Path) -> None:
    t = ImageTransform(SIZE)
    assert isinstance(open_image_dataset(image_folder, t), ImageFolderDataset)
    assert isinstance(open_image_dataset(image_folder / "dog", t), FlatFolderDataset)
    assert isinstance(open_image_dataset(image_folder, t, kind="flat"), FlatFolderDataset)
    shard = _tar(tmp_path / "one.tar", [("x.jpg", _encode(_rgb(0), "JPEG"))])
    assert isinstance(open_image_dataset(shard, t), TarShardDataset)
    assert isinstance(open_image_dataset([shard, shard], t), TarShardDataset)


def test_missing_empty_and_compressed_paths_fail_early_naming_the_path(tmp_path: Path) -> None:
    t = ImageTransform(SIZE)
    missing = tmp_path / "nowhere"
    for opener in (open_image_dataset, ImageFolderDataset, FlatFolderDataset, TarShardDataset):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            opener(missing, t)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "readme.txt").write_text("no images here")
    for opener in (open_image_dataset, ImageFolderDataset, FlatFolderDataset):
        with pytest.raises(ValueError, match="empty"):  # NoImagesError is a ValueError (and a FileNotFoundError)
            opener(empty, t)
    with pytest.raises(NoImagesError, match="no class sub-folders"):
        ImageFolderDataset(empty / "cls", t)
    gz = tmp_path / "data.tar.gz"
    gz.write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="extract it first"):
        open_image_dataset(gz, t)
    with pytest.raises(NoImagesError, match="got a file"):
        ImageFolderDataset(gz, t)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_image_dataset(empty, t, kind="lmdb")


def test_all_bad_files_is_an_error_not_a_hang(tmp_path: Path) -> None:
    for k in range(3):
        (tmp_path / f"{k}.jpg").write_bytes(b"")
    ds = FlatFolderDataset(tmp_path, ImageTransform(SIZE), max_retries=8)
    with pytest.raises(UnreadableDataError, match=r"all 3 images unreadable, from .*0\.jpg to .*2\.jpg"):
        ds[0]
    ds = FlatFolderDataset(tmp_path, ImageTransform(SIZE), max_retries=2)
    with pytest.raises(UnreadableDataError, match=r"2 images in a row unreadable, from .*1\.jpg to .*2\.jpg"):
        ds[1]
    with pytest.raises(IndexError):
        ds[3]


def test_real_imagenet_sample_shard(shared_dir: Path) -> None:
    path = shared_dir / "data" / "imagenet1k-samples-336.tar"
    if not path.is_file():
        pytest.skip(f"not found: {path}")
    ds = open_image_dataset(path, ImageTransform(336))
    assert isinstance(ds, TarShardDataset) and len(ds) == 1000
    sample = ds[10]
    assert sample.image.shape == (3, 336, 336) and sample.skipped == 0 and sample.label == UNLABELED


def test_compressed_cifar_archive_is_refused(shared_dir: Path) -> None:
    path = shared_dir / "data" / "cifar10-jpeg.tar.gz"
    if not path.is_file():
        pytest.skip(f"not found: {path}")
    with pytest.raises(ValueError, match="extract it first"):
        open_image_dataset(path, ImageTransform(32))
