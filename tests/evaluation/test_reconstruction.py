from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.evaluation.reconstruction import degrade_uint8, float_to_uint8, psnr, resize_uint8, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(seed: int = 0, shape=(3, 33, 29, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-50, 50, shape), 0, 255).astype(np.uint8)
    return a, b


def test_ssim_of_identical_images_is_one():
    a, _ = _pair()
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, a, window="uniform"), torch.ones(3, dtype=torch.float64))


def test_ssim_matches_skimage_gaussian():
    a, b = _pair(1)
    ours = ssim(b, a, data_range=1.0)
    for i in range(len(a)):
        ref = skimage_metrics.structural_similarity(
            b[i] / 255.0, a[i] / 255.0, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-10)


def test_ssim_matches_skimage_official_protocol():
    a, b = _pair(2)
    ours = ssim(b, a, data_range=2.0, window="uniform")
    for i in range(len(a)):
        ref = skimage_metrics.structural_similarity(b[i] / 255.0, a[i] / 255.0, data_range=2.0, channel_axis=-1)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-10)
    assert float(ours.mean()) > float(ssim(b, a).mean())  # the data_range bug inflates SSIM


def test_ssim_float_input_and_errors():
    a, b = _pair(3)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255.0
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255.0
    torch.testing.assert_close(ssim(y, x), ssim(b, a))
    with pytest.raises(ValueError, match="window"):
        ssim(a, b, window="box")
    with pytest.raises(ValueError, match="smaller"):
        ssim(a[:, :5, :5], b[:, :5, :5])


def test_psnr_matches_skimage_and_is_inf_for_identical():
    a, b = _pair(4)
    ours = psnr(b, a)
    for i in range(len(a)):
        assert float(ours[i]) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a[i] / 255.0, b[i] / 255.0))
    assert torch.isinf(psnr(a, a)).all()


def test_resizes():
    a, _ = _pair(5, shape=(2, 40, 40, 3))
    r = resize_uint8(a, 16)
    assert r.shape == (2, 16, 16, 3) and r.dtype == np.uint8
    np.testing.assert_array_equal(r[1], np.asarray(Image.fromarray(a[1]).resize((16, 16), Image.BICUBIC)))
    assert resize_uint8(a, 40) is a
    d2, d4 = degrade_uint8(a, 2), degrade_uint8(a, 4)
    assert d2.shape == a.shape and d4.shape == a.shape
    smooth = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (40, 1, 3))[None]
    # a smooth ramp survives down-up sampling far better than noise does
    assert psnr(degrade_uint8(smooth, 4), smooth)[0] > psnr(d4, a).max() + 10


def test_float_to_uint8_rounds():
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    u8 = float_to_uint8(x)
    assert u8.shape == (1, 1, 5, 3)
    assert u8[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
