"""Transforms: mode conversion to RGB, the ADM crops on known sizes, and the exact [-1, 1] conversion."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.data import transforms
from vfmtok.data.transforms import (
    ImageTransform,
    center_crop_arr,
    pil_to_tensor,
    random_crop_arr,
    resize_arr,
    tensor_to_uint8,
    to_rgb,
)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _adm_center_reference(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's definition, restated with numpy slicing."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y : y + size, x : x + size]


@pytest.mark.parametrize("w, h, size", [(500, 375, 336), (1400, 700, 336), (3000, 1400, 336), (337, 341, 96),
                                        (32, 32, 224), (40, 90, 32)])
def test_center_crop_matches_adm(w, h, size) -> None:
    img = _noise(w, h)
    out = center_crop_arr(img, size)
    assert out.size == (size, size)
    np.testing.assert_array_equal(np.asarray(out), _adm_center_reference(img, size))


def test_center_crop_known_geometry() -> None:
    # 1400x700 -> BOX-halved once to 700x350 (350 < 672) -> bicubic to 672x336 -> columns 168..503
    img = Image.new("RGB", (1400, 700))
    img.paste((255, 0, 0), (0, 0, 700, 700))  # left half red, right half black
    out = np.asarray(center_crop_arr(img, 336))
    assert (out[:, :150, 0] == 255).all() and (out[:, 190:, 0] == 0).all()  # edge at 336 - 168 = 168


def test_random_crop_matches_adm_with_the_same_draws() -> None:
    img = _noise(500, 375, seed=1)
    out = random_crop_arr(img, 336, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    side = int(rng.integers(336, 421))  # ceil(336 / 1.0) .. ceil(336 / 0.8)
    ref = img
    while min(*ref.size) >= 2 * side:
        ref = ref.resize(tuple(x // 2 for x in ref.size), resample=Image.BOX)
    scale = side / min(*ref.size)
    arr = np.array(ref.resize(tuple(round(x * scale) for x in ref.size), resample=Image.BICUBIC))
    y, x = int(rng.integers(0, arr.shape[0] - 336 + 1)), int(rng.integers(0, arr.shape[1] - 336 + 1))
    np.testing.assert_array_equal(np.asarray(out), arr[y : y + 336, x : x + 336])


def test_random_crop_shorter_side_range(monkeypatch) -> None:
    seen = []
    resize = transforms._resize_shorter_side
    monkeypatch.setattr(transforms, "_resize_shorter_side", lambda im, t: (seen.append(t), resize(im, t))[1])
    img = _noise(64, 48)
    outs = [np.asarray(random_crop_arr(img, 32, np.random.default_rng(s))) for s in range(200)]
    assert min(seen) == 32 and max(seen) == 40 == math.ceil(32 / 0.8)  # U{ceil(S / max_frac) .. ceil(S / min_frac)}
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) > 100  # actually random
    np.testing.assert_array_equal(outs[3], np.asarray(random_crop_arr(img, 32, np.random.default_rng(3))))
    with pytest.raises(ValueError):
        random_crop_arr(img, 32, np.random.default_rng(0), min_crop_frac=0.9, max_crop_frac=0.8)


def test_pil_to_tensor_is_the_official_normalisation() -> None:
    arr = np.array([[[0, 128, 255], [1, 254, 127]]], dtype=np.uint8)  # (1, 2, 3)
    x = pil_to_tensor(Image.fromarray(arr))
    expected = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert x.dtype == torch.float32 and x.shape == (3, 1, 2)
    assert torch.equal(x, expected)
    assert x[0, 0, 0] == -1.0 and x[2, 0, 0] == 1.0


def test_pil_to_tensor_matches_the_official_fixture(fixtures_dir) -> None:
    io_ = torch.load(fixtures_dir / "tokenizer_io.pt", weights_only=True)
    u8, ref = io_["image_uint8"], io_["image_float"]
    ours = torch.stack([pil_to_tensor(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in u8])
    assert torch.equal(ours, ref)


def test_tensor_to_uint8_official_rounding() -> None:
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, 1 / 127.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = tensor_to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 129]


# ------------------------------------------------------------------------------------------------ mode conversion
def _roundtrip(img: Image.Image, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def test_to_rgb_grayscale_and_bilevel() -> None:
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8))
    assert np.asarray(to_rgb(gray)).tolist() == [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]]
    assert to_rgb(gray.convert("1")).mode == "RGB"


def test_to_rgb_alpha_composites_over_white() -> None:
    rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [200, 0, 0, 0], [0, 0, 200, 128]]], dtype=np.uint8))
    out = np.asarray(to_rgb(_roundtrip(rgba, "PNG"))).astype(int)
    assert out[0, 0].tolist() == [10, 20, 30]  # opaque: unchanged
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent: background, not the stored red
    assert abs(out[0, 2] - np.array([127, 127, 227])).max() <= 1  # half transparent blue over white
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), mode="LA")
    assert np.asarray(to_rgb(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_to_rgb_palette_with_transparency() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # green is the transparent index
    reloaded = _roundtrip(pal, "PNG")
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    assert np.asarray(to_rgb(reloaded)).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    pal.info.pop("transparency")
    assert np.asarray(to_rgb(pal)).tolist() == [[[255, 0, 0], [0, 255, 0]]]


def test_to_rgb_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    img = _roundtrip(cmyk, "JPEG")
    assert img.mode == "CMYK"
    out = np.asarray(to_rgb(img)).astype(int)
    assert abs(out - np.array([255, 0, 0])).max() <= 3


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_to_rgb_16_bit_is_rescaled_not_clipped(mode) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    # a 16-bit PNG as PIL decodes it ("I;16"), and the 32-bit integer mode older Pillow used for such files ("I")
    img = _roundtrip(Image.fromarray(values), "PNG") if mode == "I;16" else Image.fromarray(values.astype(np.int32))
    assert img.mode == mode
    out = np.asarray(to_rgb(img))
    assert out[..., 0].tolist() == [[0, 1, 128, 255]] and (out[..., 0] == out[..., 2]).all()


def test_to_rgb_float_images() -> None:
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(f))[..., 0].tolist() == [[0, 128, 255]]


# ------------------------------------------------------------------------------------------------ ImageTransform
def test_image_transform_modes() -> None:
    img = _noise(60, 40)
    center = ImageTransform(32)(img)
    assert center.shape == (3, 32, 32) and center.min() >= -1 and center.max() <= 1
    assert torch.equal(center, pil_to_tensor(center_crop_arr(img, 32)))
    tiny = ImageTransform(224, crop="resize")(_noise(32, 32))
    assert tiny.shape == (3, 224, 224)
    assert torch.equal(tiny, pil_to_tensor(resize_arr(_noise(32, 32), 224)))
    aug = ImageTransform(32, crop="random", hflip=True)
    assert aug.is_random and not ImageTransform(32).is_random
    a, b = aug(img, np.random.default_rng(1)), aug(img, np.random.default_rng(1))
    assert torch.equal(a, b)
    outs = [ImageTransform(32, hflip=True)(img, np.random.default_rng(s)) for s in range(16)]
    flipped = [torch.equal(o, center.flip(-1)) for o in outs]
    assert all(f or torch.equal(o, center) for f, o in zip(flipped, outs))
    assert 0 < sum(flipped) < 16  # flipped some of the time, otherwise identical to the centre crop
    gray = ImageTransform(16)(Image.new("L", (20, 20), 128))
    assert gray.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="unknown crop"):
        ImageTransform(32, crop="fancy")
