"""Image conversion and training/evaluation transforms (PIL in, float tensors in [-1, 1] out).

The crops follow the ADM definitions (Dhariwal & Nichol 2021, openai/guided-diffusion ``image_datasets.py``) that
LlamaGen and the official VFMTok trainer use:

* ``center_crop_arr(img, S)`` — while the shorter side is >= 2S, halve the image with a BOX filter (each side
  floor-divided by 2); then resize with BICUBIC so the shorter side becomes S, each side ``round(side * scale)``;
  finally crop S x S from the centre with floor-divided offsets. Used for evaluation and the official fixtures.
* ``random_crop_arr(img, S, min_crop_frac=0.8, max_crop_frac=1.0)`` — draw the target shorter side uniformly from
  the integers ``[ceil(S / max_crop_frac), ceil(S / min_crop_frac)]`` (VFMTok at 336: [336, 420]), halve/resize to it
  as above, then crop S x S at a uniformly random offset. Training augmentation, with a horizontal flip (p = 0.5).

Conversion to a tensor is exactly the official ``ToTensor()`` + ``Normalize(0.5, 0.5)``: ``(u8 / 255 - 0.5) / 0.5``
in float32. Randomness comes from an explicit ``numpy.random.Generator`` so a dataset can make every sample's
augmentation a function of (seed, epoch, index) — that is what makes a resumed run exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

CROPS = ("center", "random", "resize")
WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------------------------------------------------
# mode conversion
# ---------------------------------------------------------------------------------------------------------------------
def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB by alpha-compositing over a solid background (transparent pixels become ``background``)."""
    base = Image.new("RGB", img.size, background)
    base.paste(img.convert("RGB"), mask=img.getchannel("A"))
    return base


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale of more than 8 bits -> RGB uint8, rescaling instead of clipping.

    PIL's own ``convert`` clips ``I;16`` / ``I`` / ``F`` values to [0, 255], which turns a 16-bit image almost white.
    ``I;16*`` and ``I`` (how PIL opens 16-bit PNG/TIFF) are mapped from [0, 65535]; ``F`` from [0, 1] when its maximum
    is <= 1, else it is clipped to [0, 255].
    """
    arr = np.asarray(img)
    if img.mode == "F":
        a = arr.astype(np.float64)
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
    else:
        a = np.clip(arr.astype(np.float64), 0, 65535) / 257.0  # 65535 / 257 = 255 exactly
    a = np.nan_to_num(a, nan=0.0)
    u8 = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(u8, mode="L").convert("RGB")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL image -> 8-bit RGB.

    * ``RGB`` unchanged; ``L``, ``1``, ``CMYK``, ``YCbCr``, ``HSV``, ... through PIL's ``convert("RGB")`` (CMYK JPEGs
      with Adobe inversion are already un-inverted by PIL's decoder);
    * with transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with a ``transparency`` entry, ``RGB``/``L``
      with a transparent colour): composited over ``background`` (white by default) rather than dropping alpha,
      which would expose whatever colour the transparent pixels happen to store;
    * more than 8 bits per sample (``I;16``, ``I;16B``, ``I``, ``F``): rescaled to 8 bits, see
      :func:`_high_bit_depth_to_rgb`.

    EXIF orientation is *not* applied, matching the official and ADM pipelines.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(img)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _composite(img.convert("RGBA"), background)
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# ADM crops
# ---------------------------------------------------------------------------------------------------------------------
def _resize_shorter_side(img: Image.Image, target: int) -> Image.Image:
    """BOX-halve while the shorter side is >= 2 * target, then BICUBIC-resize so the shorter side is ``target``."""
    while min(img.size) >= 2 * target:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = target / min(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), resample=Image.BICUBIC)


def center_crop_arr(img: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: (W, H) RGB image -> (image_size, image_size) RGB image (see module docstring)."""
    img = _resize_shorter_side(img, image_size)
    top = (img.height - image_size) // 2
    left = (img.width - image_size) // 2
    return img.crop((left, top, left + image_size, top + image_size))


def random_crop_arr(img: Image.Image, image_size: int, rng: np.random.Generator, min_crop_frac: float = 0.8,
                    max_crop_frac: float = 1.0) -> Image.Image:
    """ADM random crop: the crop covers a fraction in [min_crop_frac, max_crop_frac] of the resized shorter side.

    Args:
        img: RGB image of any size.
        image_size: output side S.
        rng: source of randomness (shorter side, then the vertical and horizontal offsets).
        min_crop_frac: smallest crop fraction (0.8 in ADM/VFMTok).
        max_crop_frac: largest crop fraction (1.0).

    Returns:
        (S, S) RGB image.
    """
    if not 0.0 < min_crop_frac <= max_crop_frac <= 1.0:
        raise ValueError(f"need 0 < min_crop_frac <= max_crop_frac <= 1, got {min_crop_frac}, {max_crop_frac}")
    lo = math.ceil(image_size / max_crop_frac)
    hi = math.ceil(image_size / min_crop_frac)
    img = _resize_shorter_side(img, int(rng.integers(lo, hi + 1)))
    top = int(rng.integers(0, img.height - image_size + 1))
    left = int(rng.integers(0, img.width - image_size + 1))
    return img.crop((left, top, left + image_size, top + image_size))


def resize_arr(img: Image.Image, image_size: int) -> Image.Image:
    """Plain BICUBIC resize of the whole image to (image_size, image_size), aspect ratio not kept.

    Meant for tiny square datasets (e.g. CIFAR-10 32x32 -> 224 or 336 for a VFM), where cropping removes content
    and the BOX-halving of the ADM crops never triggers. (``center_crop_arr`` also upsamples, but crops non-square
    images.)
    """
    return img.resize((image_size, image_size), resample=Image.BICUBIC)


# ---------------------------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------------------------
def pil_to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1], exactly ``(u8 / 255 - 0.5) / 0.5`` (official preprocessing)."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)  # ToTensor
    return x.sub(0.5).div(0.5)  # Normalize(0.5, 0.5)


def tensor_to_uint8(x: Tensor) -> Tensor:
    """(B, 3, H, W) float in [-1, 1] (unbounded values allowed) -> (B, H, W, 3) uint8.

    The official formula: ``x * 127.5 + 128``, clamp to [0, 255], truncate (i.e. round half up).
    """
    return (x.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class ImageTransform:
    """PIL image -> (3, S, S) float32 in [-1, 1]: mode conversion, crop, optional flip, normalisation.

    Args:
        image_size: output side S.
        crop: ``"center"`` (ADM ``center_crop_arr``; evaluation), ``"random"`` (ADM ``random_crop_arr``; the
            official training augmentation) or ``"resize"`` (whole image to S x S, for tiny images such as CIFAR).
        hflip: flip horizontally with probability 0.5 (official training: True).
        min_crop_frac: see :func:`random_crop_arr`.
        max_crop_frac: see :func:`random_crop_arr`.
    """

    def __init__(self, image_size: int, crop: str = "center", hflip: bool = False, min_crop_frac: float = 0.8,
                 max_crop_frac: float = 1.0) -> None:
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; choose from {CROPS}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size, self.crop, self.hflip = image_size, crop, hflip
        self.min_crop_frac, self.max_crop_frac = min_crop_frac, max_crop_frac

    @property
    def is_random(self) -> bool:
        return self.crop == "random" or self.hflip

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> Tensor:
        """``img``: any PIL image; ``rng``: randomness for random crops/flips (a fresh unseeded one if None)."""
        if rng is None:
            rng = np.random.default_rng()
        img = to_rgb(img)
        if self.crop == "center":
            img = center_crop_arr(img, self.image_size)
        elif self.crop == "random":
            img = random_crop_arr(img, self.image_size, rng, self.min_crop_frac, self.max_crop_frac)
        else:
            img = resize_arr(img, self.image_size)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)

    def __repr__(self) -> str:
        return (f"ImageTransform(image_size={self.image_size}, crop={self.crop!r}, hflip={self.hflip}, "
                f"min_crop_frac={self.min_crop_frac}, max_crop_frac={self.max_crop_frac})")
