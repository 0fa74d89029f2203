"""The tokenizer trainer's state machine: building every part, evaluation, checkpoints (exact resume) and export.

Works on bare, DDP- and FSDP-wrapped models: under FSDP, state dicts are gathered unsharded (collectives on every
rank) and the EMA shadows are the local shards. The frozen backbone is never checkpointed: it comes back from
``backbone_weights`` (or ``init_from``), which the recipe fixes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import ConfigError
from ..data import collate_images
from ..hub import ModelLoadError, write_training_record
from ..losses.lpips import load_lpips
from ..tokenizer.model import VFMTokenizer
from . import tokenizer_setup as setup
from .checkpoint import load_latest_checkpoint, save_checkpoint
from .distributed import (DistInfo, all_reduce_sum, barrier, fsdp_full_state, full_state_dict,
                          is_fsdp, load_optimizer_state, optimizer_state, wrap_model)
from .ema import EMA, _unwrap
from .feature_cache import build_feature_cache
from .optim import build_optimizer, decay_names
from .sampler import ResumableSampler
from .tokenizer import TokenizerTrainConfig, TrainParts, _autocast

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, val: Dataset, info: DistInfo, batch_size: int, codebook_size: int, num_grid: int,
             autocast: Any) -> tuple[dict[str, float], np.ndarray | None]:
    """PSNR, codebook usage and perplexity of ``model`` (eval mode: decoded from the code indices) on ``val``.

    Every rank runs the same number of forwards on its share (padded with repeats that are not counted, as FSDP
    requires); sums are all-reduced. PSNR is computed per image on [0, 1] after clamping, then averaged.

    Returns:
        (metrics, grid): ``grid`` is uint8 (2 * S, n * S, 3), originals over reconstructions (rank 0; else None).
    """
    from ..data.transforms import tensor_to_uint8

    was_training = model.training
    model.eval()
    per = -(-len(val) // info.world_size)
    rows = list(range(info.rank * per, min(len(val), (info.rank + 1) * per)))
    n_real = len(rows)
    rows += [len(val) - 1] * (per - n_real)
    loader = DataLoader(Subset(val, rows), batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                        generator=torch.Generator())
    sums = torch.zeros(2, dtype=torch.float64, device=info.device)
    hist = torch.zeros(codebook_size, dtype=torch.int64, device=info.device)
    grid, seen = None, 0
    for batch in loader:
        x = batch.image.to(info.device)
        with autocast():
            out = model(x)
        keep = max(0, min(x.shape[0], n_real - seen))
        seen += x.shape[0]
        x_rec = out.x_rec.float()[:keep].clamp(-1, 1)
        mse = ((x_rec - x[:keep]) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        sums += torch.stack([(-10 * torch.log10(mse)).sum().double(), torch.tensor(keep, device=info.device).double()])
        hist += torch.bincount(out.idx[:keep].reshape(-1), minlength=codebook_size)
        if grid is None and info.is_main:
            k = min(num_grid, keep)
            top = tensor_to_uint8(x[:k]).cpu().numpy()
            bottom = tensor_to_uint8(x_rec[:k]).cpu().numpy()
            grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    sums, hist = all_reduce_sum(sums), all_reduce_sum(hist)
    model.train(was_training)
    used = hist > 0
    p = hist[used].double() / hist.sum().clamp_min(1)
    metrics = {"val/psnr": float(sums[0] / sums[1].clamp_min(1)), "val/usage": float(used.sum()) / codebook_size,
               "val/perplexity": float(torch.exp(-(p * p.log()).sum())), "val/images": float(sums[1])}
    return metrics, grid


def save_grid(grid: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# state: bare, DDP and FSDP models; the frozen backbone is not checkpointed (it comes from backbone_weights)
# ---------------------------------------------------------------------------------------------------------------------
def full_model_state(model: nn.Module, trainable_only: bool = True) -> dict[str, Tensor]:
    """Unsharded CPU copy of the state dict (collective under FSDP); without ``backbone.`` keys by default."""
    state = full_state_dict(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()
            if not (trainable_only and k.startswith("backbone."))}


def full_ema_state(model: nn.Module, ema: EMA, trainable_only: bool = True) -> dict[str, Tensor]:
    """The model's full state dict with the EMA weights (collective under FSDP)."""
    if is_fsdp(model):
        with ema.applied_to(model):
            return full_model_state(model, trainable_only)
    state = ema.model_state_dict(model)
    return {k: v.to("cpu") for k, v in state.items() if not (trainable_only and k.startswith("backbone."))}


def load_model_state(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Load a trainable-only state dict; every key outside the frozen backbone must be present."""
    if is_fsdp(model):
        with fsdp_full_state(model):
            missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    missing = [k for k in missing if "backbone." not in k]
    if missing or unexpected:
        raise ModelLoadError(f"{where}: missing keys {missing[:10]}, unexpected keys {list(unexpected)[:10]}")


class Trainer:
    """Every part of a tokenizer run, built identically on every rank (see
    :func:`vfmtok.training.tokenizer.train_tokenizer`)."""

    def __init__(self, cfg: TokenizerTrainConfig, run_dir: Path, info: DistInfo) -> None:
        self.cfg, self.run_dir, self.info = cfg, run_dir, info
        self.model_config = cfg.model
        world, dev = info.world_size, info.device
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by world size {world} x grad_accum "
                              f"{cfg.grad_accum}")
        self.per_rank = cfg.batch_size // world
        if cfg.strategy == "fsdp" and info.distributed:
            if dev.type != "cuda":
                raise ConfigError("strategy=fsdp needs GPUs (PyTorch's FSDP has no CPU support); use strategy=ddp")
            if cfg.disc_type == "dino" and cfg.disc_features == "vfm":
                raise ConfigError("strategy=fsdp shards the tokenizer's VFM, which disc_features=vfm reads outside "
                                  "the tokenizer's forward; use disc_features=bundled or strategy=ddp")
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.splits = setup.open_datasets(cfg, self.model_config.image_size)  # bad paths fail before any work
        torch.manual_seed(cfg.seed)  # weight init: identical on every rank
        self.tokenizer = setup.build_tokenizer(cfg, self.model_config).to(dev)
        self.disc_raw = setup.build_discriminator(cfg, self.tokenizer, dev)
        self.cache = None
        if cfg.cache_features:
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "feature_cache"
            # batches of at least 64: small ones cost a CPU ~20 % more per image (the demo's 32-image batches)
            self.cache = build_feature_cache(
                cache_dir, setup.cache_fingerprint(cfg, self.model_config), self.splits.train, self.tokenizer.backbone,
                info, views=2 if cfg.hflip else 1, dtype=cfg.cache_dtype, batch_size=max(self.per_rank, 64),
                workers=cfg.workers, collate_fn=collate_images,
                autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None)
            if dev.type == "cuda" and self.cache.nbytes < 0.4 * torch.cuda.mem_get_info(dev)[0]:
                self.cache = self.cache.to(dev)  # else batches are gathered on the host and copied every step
                log.info("feature cache moved to %s", dev)
        self.sampler = ResumableSampler(len(self.splits.train), info.rank, world, shuffle=True, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.per_rank // self.per_rank
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.splits.train)} training images are fewer than one batch ({cfg.batch_size})")
        decay = decay_names(self.tokenizer)  # on the bare model, before FSDP flattens the shapes
        self.model = wrap_model(self.tokenizer, info, cfg.strategy)
        if cfg.optimizer == "adam" and cfg.weight_decay:
            raise ConfigError("optimizer 'adam' with weight_decay > 0 would add coupled L2; use optimizer='adamw'")
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=cfg.lr, betas=cfg.betas,
                                         weight_decay=cfg.weight_decay, decay=decay)
        self.ema = EMA(self.model, cfg.ema_decay)
        lpips = load_lpips("vgg").to(dev) if cfg.lpips_weight > 0 else None
        disc, disc_opt = None, None
        if self.disc_raw is not None:
            disc = wrap_model(self.disc_raw, info, "ddp")
            params = [p for p in self.disc_raw.parameters() if p.requires_grad]
            disc_opt = torch.optim.Adam(params, lr=cfg.disc_lr, betas=tuple(cfg.disc_betas))
        self.parts = TrainParts(self.model, self.tokenizer, self.optimizer, self.ema, lpips, disc, self.disc_raw,
                                disc_opt)
        self.metrics: dict[str, float] = {}
        self.skipped: dict[int, int] = {}

    def batches(self, step: int) -> Any:
        if self.cache is not None:
            self.skipped[-1] = self.cache.skipped  # counted once, while the cache was built
            return setup.cached_batches(self.cache, self.sampler, self.steps_per_epoch, self.per_rank, step,
                                        self.cfg.seed, self.info.device)
        return setup.image_batches(self.splits, self.sampler, self.steps_per_epoch, self.per_rank, step,
                                   self.cfg.workers, self.info.device)

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (collective: every rank gathers, rank 0 writes)."""
        model_state, ema_state = full_model_state(self.model), full_ema_state(self.model, self.ema)
        optim = optimizer_state(self.model, self.optimizer)
        if self.info.is_main:
            state = {"optimizer": optim, "world_size": self.info.world_size, "epoch": step // self.steps_per_epoch,
                     "metrics": dict(self.metrics), "skipped": dict(self.skipped)}
            if self.disc_raw is not None:
                state.update(disc=self.disc_raw.state_dict(), disc_optimizer=self.parts.disc_optimizer.state_dict())
            save_checkpoint(self.run_dir, step, model_state, state, config=self.model_config, ema_state=ema_state,
                            keep=self.cfg.keep_checkpoints)
        barrier()

    def resume(self) -> int:
        found = load_latest_checkpoint(self.run_dir)  # falls back past a damaged newest checkpoint, saying so
        if found is None:
            return 0
        ckpt, data = found
        load_model_state(self.model, data["ema"], f"{ckpt.path}/ema.safetensors")
        self.ema = EMA(self.model, self.cfg.ema_decay)  # shadows = the EMA weights (local shards under FSDP)
        load_model_state(self.model, data["model"], f"{ckpt.path}/model.safetensors")
        self.parts = self.parts._replace(ema=self.ema)
        state = data["state"]
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        if self.disc_raw is not None:
            if "disc" not in state:
                raise ConfigError(f"{ckpt.path} holds no discriminator state but the recipe uses one")
            self.disc_raw.load_state_dict(state["disc"])
            self.parts.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.metrics, self.skipped = dict(state.get("metrics", {})), dict(state.get("skipped", {}))
        log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
        return ckpt.step

    def evaluate(self, step: int, tracker: Any) -> None:
        with self.ema.applied_to(self.model):
            vals, grid = evaluate(self.model, self.splits.val, self.info, self.per_rank,
                                  self.model_config.codebook_size, self.cfg.num_grid,
                                  lambda: _autocast(self.cfg, self.info.device))
        self.metrics.update(vals)
        tracker.log(step, vals)
        if grid is not None:
            save_grid(grid, self.run_dir / "samples" / f"recon-{step:08d}.png")
            tracker.log_image(step, "val/reconstructions", grid)

    def export(self) -> Path:
        """EMA weights (with the frozen backbone) as a model directory ``<run>/final``."""
        state = full_ema_state(self.model, self.ema, trainable_only=False)
        final = self.run_dir / "final"
        if self.info.is_main:
            tok = VFMTokenizer(self.model_config)
            tok.load_pretrained_state_dict(state, where="EMA weights")
            tmp = self.run_dir / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(tmp)
            write_training_record(tmp, {  # what the weights are good for: reconstruct / regions read it
                "trained": True, "source": "vfmtok train-tokenizer", "run": str(self.run_dir), "data": self.cfg.data,
                "image_size": self.model_config.image_size, "steps": self.cfg.total_steps,
                "metrics": {k: v for k, v in self.metrics.items() if k.startswith("val/")}})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        barrier()
        return final
