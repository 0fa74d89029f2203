"""Code shards: format round trip, memory mapping, CodeDataset, augmentation views and resumable extraction."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.data import ImageTransform, open_image_dataset
from vfmtok.data.tokens import (
    AUGMENTATIONS,
    CodeDataset,
    Shard,
    augment_views,
    augmentation_choice,
    codes_dtype,
    extract_shards,
    read_manifest,
    read_shard,
    shard_path,
    shard_ranges,
    verify_shards,
    write_manifest,
    write_shard,
)

T, V = 16, 300  # tokens per image, vocabulary (> 255: exercises uint16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _make_codes_dir(root, n=50, num_aug=3, shard_size=16, num_classes=5, skip=(7,)):
    """A finished codes directory: code value = (index * 31 + aug * 7 + t) % V, label = index % num_classes."""
    entries = []
    for k, (start, stop) in enumerate(shard_ranges(n, shard_size)):
        idx = np.array([i for i in range(start, stop) if i not in skip], dtype=np.int64)
        codes = (idx[:, None, None] * 31 + np.arange(num_aug)[None, :, None] * 7 + np.arange(T)[None, None]) % V
        write_shard(shard_path(root, k), Shard(codes.astype(codes_dtype(V)), idx % num_classes, idx,
                                               np.array([i for i in skip if start <= i < stop], dtype=np.int64)))
        entries.append({"file": shard_path(root, k).name, "start": start, "stop": stop, "count": len(idx)})
    write_manifest(root, {"num_tokens": T, "vocab_size": V, "num_classes": num_classes,
                          "augmentations": [f"a{i}" for i in range(num_aug)], "shards": entries})
    return root


def test_codes_dtype_and_ranges():
    assert codes_dtype(16384) == np.uint16 and codes_dtype(65536) == np.uint16 and codes_dtype(65537) == np.int32
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("mmap", [False, True])
def test_shard_round_trip(tmp_path, mmap):
    codes = np.arange(5 * 2 * T, dtype=np.uint16).reshape(5, 2, T) * 401
    shard = Shard(codes, np.arange(5) % 3, np.arange(10, 15), np.array([15]))
    path = write_shard(tmp_path / "shard-00000.npz", shard)
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.npz"]  # no temporary left behind
    back = read_shard(path, mmap=mmap)
    assert isinstance(back.codes, np.memmap) == mmap
    for a, b in zip(shard, back):
        np.testing.assert_array_equal(a, b)
    assert back.codes.dtype == np.uint16 and back.labels.dtype == np.int64


def test_code_dataset(tmp_path):
    ds = CodeDataset(_make_codes_dir(tmp_path), seed=3)
    assert len(ds) == 49 and ds.num_tokens == T and ds.vocab_size == V and ds.num_augmentations == 3
    assert 7 not in ds.indices.tolist() and ds.indices.tolist() == sorted(ds.indices.tolist())
    rows = np.array([0, 6, 7, 15, 16, 48])
    codes, labels = ds.get_batch(rows, epoch=0)
    idx = ds.indices[rows]
    augs = augmentation_choice(3, 0, rows, 3)
    expected = (idx[:, None] * 31 + augs[:, None] * 7 + np.arange(T)) % V
    assert codes.dtype == torch.int64 and codes.shape == (6, T)
    np.testing.assert_array_equal(codes.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), idx % 5)
    c, y = ds[15]  # __getitem__ follows set_epoch
    assert torch.equal(c, codes[3]) and int(y) == idx[3] % 5
    # the augmentation choice is a function of (seed, epoch, row) and covers every augmentation
    all_rows = np.arange(len(ds))
    a0, a1 = augmentation_choice(3, 0, all_rows, 3), augmentation_choice(3, 1, all_rows, 3)
    assert np.array_equal(a0, augmentation_choice(3, 0, all_rows, 3)) and not np.array_equal(a0, a1)
    assert set(a0.tolist()) == {0, 1, 2}
    forced, _ = ds.get_batch(rows, aug=2)
    np.testing.assert_array_equal(forced.numpy(), (idx[:, None] * 31 + 14 + np.arange(T)) % V)
    plain = CodeDataset(tmp_path, augment=False)
    np.testing.assert_array_equal(plain.get_batch(rows)[0].numpy(), (idx[:, None] * 31 + np.arange(T)) % V)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers: maps are reopened, not pickled
    assert clone._shards is None and torch.equal(clone[15][0], c)
    train, val = ds.holdout(9, seed=0)
    assert len(val) == 9 and not set(train) & set(val) and sorted(np.concatenate([train, val])) == list(range(49))
    with pytest.raises(IndexError):
        ds.get_batch([49])


def test_unfinished_directory_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="unfinished"):
        CodeDataset(tmp_path)


def test_augment_views():
    x = torch.arange(2 * 3 * 11 * 11, dtype=torch.float32).reshape(2, 3, 11, 11)
    assert augment_views(x, "none", 11).shape == (2, 1, 3, 11, 11)
    flip = augment_views(x, "flip", 11)
    assert torch.equal(flip[:, 1], x.flip(-1))
    ten = augment_views(x, "ten-crop", 8)
    assert ten.shape == (2, 10, 3, 8, 8) and len(AUGMENTATIONS["ten-crop"]) == 10
    assert torch.equal(ten[:, 0], x[..., :8, :8]) and torch.equal(ten[:, 3], x[..., 3:, 3:])
    assert torch.equal(ten[:, 4], x[..., 2:10, 2:10])  # round((11 - 8) / 2) = 2, as torchvision's center_crop
    assert torch.equal(ten[:, 5], x.flip(-1)[..., :8, :8])  # TenCrop: the five crops of the mirrored image
    assert torch.equal(ten[:, 6], x[..., :8, :8].flip(-1))


def _image_folder(root, n_per_class=5, corrupt=("b/002.png",)):
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    for name in corrupt:
        (root / name).write_bytes(b"not an image")
    return root


def _fake_encode(x):
    """A deterministic stand-in tokenizer: 4 x 4 mean-pooled channel-0 intensities -> 16 codes in [0, 64)."""
    pooled = torch.nn.functional.avg_pool2d(x[:, :1], 2).flatten(1)  # (N, 16)
    return ((pooled + 1) * 31.99).long().clamp(0, 63)


def _extract(data, out, mode="flip", **kw):
    size = 11 if mode == "ten-crop" else 8
    ds = open_image_dataset(data, ImageTransform(size))
    return ds, extract_shards(ds, _fake_encode, out, image_size=8, num_tokens=16, vocab_size=64, mode=mode,
                              shard_size=4, batch_size=3, **kw)


@pytest.mark.parametrize("mode", ["flip", "ten-crop"])
def test_extraction_resumes_exactly(tmp_path, mode):
    data = _image_folder(tmp_path / "img")
    ds, written = _extract(data, tmp_path / "full", mode)
    assert written == [0, 1, 2, 3]
    (tmp_path / "part").mkdir()
    assert _extract(data, tmp_path / "part", mode, max_shards=2)[1] == [0, 1]  # "killed" after two shards
    shard_path(tmp_path / "part", 1).unlink()  # ... or while shard 1 was being written
    (tmp_path / "part" / ".shard-00001.npz.x1y2.tmp").write_bytes(b"half a shard")
    assert _extract(data, tmp_path / "part", mode)[1] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == [f"shard-0000{k}.npz" for k in range(4)]
    num_aug = len(AUGMENTATIONS[mode])
    for out in ("full", "part"):
        entries, skipped = verify_shards(tmp_path / out, len(ds), 4, num_aug, 16, 64)
        assert skipped == [7] and sum(e["count"] for e in entries) == 14  # b/002.png is dataset index 7
    for k in range(4):
        a, b = read_shard(shard_path(tmp_path / "full", k)), read_shard(shard_path(tmp_path / "part", k))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    a = read_shard(shard_path(tmp_path / "full", 1))
    assert a.codes.shape == (3, num_aug, 16) and a.indices.tolist() == [4, 5, 6] and a.labels.tolist() == [0, 1, 1]


def test_extraction_ranks_split_shards_and_verify_catches_damage(tmp_path):
    data = _image_folder(tmp_path / "img", corrupt=())
    out = tmp_path / "codes"
    out.mkdir()
    assert _extract(data, out, rank=0, world_size=2)[1] == [0, 2]
    with pytest.raises(FileNotFoundError, match="2 of 4 shards"):
        verify_shards(out, 15, 4, 2, 16, 64)
    assert _extract(data, out, rank=1, world_size=2)[1] == [1, 3]
    entries, skipped = verify_shards(out, 15, 4, 2, 16, 64)
    assert skipped == [] and [e["count"] for e in entries] == [4, 4, 4, 3]
    sh = read_shard(shard_path(out, 2))
    write_shard(shard_path(out, 2), Shard(sh.codes, sh.labels, sh.indices - 1, sh.skipped))  # a duplicated index
    with pytest.raises(ValueError, match="exactly once"):
        verify_shards(out, 15, 4, 2, 16, 64)


def test_manifest_round_trip(tmp_path):
    write_manifest(tmp_path, {"num_tokens": 4})
    m = read_manifest(tmp_path)
    assert m["format"] == "vfmtok-codes" and m["version"] == 1 and m["num_tokens"] == 4
