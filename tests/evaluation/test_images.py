from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vfmtok.evaluation.images import (
    SkipCounter,
    iter_eval_batches,
    iter_sample_images,
    npz_has_images,
    npz_num_images,
    open_eval_dataset,
)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streaming(tmp_path, compressed):
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    path = tmp_path / "s.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=arr, labels=np.arange(7))
    batches = list(iter_sample_images(path, batch_size=3))
    assert [b.shape[0] for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), arr)
    assert npz_has_images(path) and npz_num_images(path) == 7
    np.testing.assert_array_equal(np.concatenate(list(iter_sample_images(path, 4, limit=5))), arr[:5])


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        list(iter_sample_images(tmp_path / "f.npz", 2))
    np.savez(tmp_path / "g.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no image array"):
        list(iter_sample_images(tmp_path / "g.npz", 2))
    with pytest.raises(FileNotFoundError):
        iter_sample_images(tmp_path / "missing.npz", 2)


def test_folder_samples_skip_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    (tmp_path / "1b.png").write_bytes(b"")
    counter = SkipCounter()
    got = np.concatenate(list(iter_sample_images(tmp_path, 2, counter=counter)))
    np.testing.assert_array_equal(got, np.stack(imgs))
    assert counter.skipped == 1
    Image.fromarray(rng.integers(0, 256, (9, 8, 3), dtype=np.uint8)).save(tmp_path / "3.png")
    with pytest.raises(ValueError, match="differs"):
        list(iter_sample_images(tmp_path, 2))


def test_eval_dataset_dedups_replaced_files(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "cat" / "1.png").write_bytes(b"corrupt")
    ds = open_eval_dataset(tmp_path, 16)
    counter = SkipCounter()
    batches = list(iter_eval_batches(ds, 2, counter=counter))
    labels = np.concatenate([b.label.numpy() for b in batches])
    assert labels.tolist() == [0, 0, 1, 1, 1] and counter.skipped == 1
    b = batches[0]
    assert b.u8.shape == (2, 16, 16, 3) and b.x.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(b.u8.transpose(0, 3, 1, 2) / 127.5 - 1.0, b.x.numpy(), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        open_eval_dataset(tmp_path / "nope", 16)


def test_truncated_npz_is_a_data_error_naming_the_file(tmp_path):
    from vfmtok.data.datasets import UnreadableDataError
    from vfmtok.evaluation.fid import ReferenceStats, is_stats_file
    from vfmtok.evaluation.images import iter_sample_images, npz_num_images

    good = tmp_path / "s.npz"
    np.savez(good, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    for read in (lambda: list(iter_sample_images(cut, 2)), lambda: npz_num_images(cut), lambda: is_stats_file(cut),
                 lambda: ReferenceStats.load(cut)):
        with pytest.raises(UnreadableDataError, match=r"cut\.npz: truncated or corrupt \.npz file"):
            read()
