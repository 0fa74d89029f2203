"""Image data: robust datasets (class folders, flat folders, tar shards) and ADM-style transforms."""

from .datasets import (
    IMAGE_EXTENSIONS,
    UNLABELED,
    FlatFolderDataset,
    ImageBatch,
    ImageDataset,
    ImageFolderDataset,
    ImageSample,
    NoImagesError,
    TarShardDataset,
    collate_images,
    decode_image,
    open_image_dataset,
)
from .transforms import (
    ImageTransform,
    center_crop_arr,
    pil_to_tensor,
    random_crop_arr,
    resize_arr,
    tensor_to_uint8,
    to_rgb,
)

__all__ = [
    "IMAGE_EXTENSIONS", "UNLABELED", "FlatFolderDataset", "ImageBatch", "ImageDataset", "ImageFolderDataset",
    "ImageSample", "ImageTransform", "NoImagesError", "TarShardDataset", "center_crop_arr", "collate_images",
    "decode_image", "open_image_dataset", "pil_to_tensor", "random_crop_arr", "resize_arr", "tensor_to_uint8",
    "to_rgb",
]
