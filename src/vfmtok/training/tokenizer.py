"""VFMTok tokenizer training: recipe dataclass, ``train_step`` and a resumable DDP loop.

Generator objective of one step (reference §2.1), every weight a field of :class:`TokenizerTrainConfig`::

    L_G = pixel_weight * pixel(x, x_rec) + lpips_weight * LPIPS(x, x_rec) + semantic_weight * mean(1 - cos(s_rec, s))
        + codebook_weight * vq + commit_weight * commit + entropy_weight * entropy
        + [step >= disc_start] * disc_weight * G_adv(D(x_rec))
    L_D = [step >= disc_start] * disc_weight * D_loss(D(x), D(sg x_rec))

Deliberate differences from the official ``vq_train.py``, each a fix of a bug the reference lists (§2, §6.9):
no discriminator compute at all before ``disc_start`` (official: computed, multiplied by 0, which still advances the
discriminator's spectral-norm vectors and Adam step count; ``disc_before_start=True`` restores it); LPIPS never runs
its dropout (official: ``VQLoss.train()`` turns on LPIPS's ``Dropout(0.5)``, a random perceptual loss);
``codebook_weight`` and ``weight_decay`` (adamw) are applied (official: parsed, ignored); gradient accumulation works;
the quantizer runs in fp32 under bf16 autocast; the data order is reshuffled every epoch and is a pure function of the
step, and every RNG is re-seeded per step from (seed, step, rank), so a run resumed from any checkpoint continues
bit-identically (the official resume rounds to epochs and seeds numpy from the PID). The official LR schedule is
warm-up then *constant* (its cosine has lr_min = lr): ``schedule="constant"``.

With ``disc_before_start=True`` and ``disc_features="dino-vits16"`` one :func:`generator_backward` +
:func:`discriminator_backward` reproduces the official step's losses and gradients
(``tests/training/test_official_step.py``, docs/training-fidelity.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..backbones.base import BackboneOutput
from ..config import ConfigBase, ConfigError
from ..ops.precision import at_least_fp32, island_dtype
from ..tokenizer.model import TokenizerConfig
from .schedule import set_lr

log = logging.getLogger(__name__)

PIXEL_LOSSES = ("l1", "l2", "official_2xmse")
# Fields that may change when a run is resumed (everything else must match the run's train_config.json).
RESUMABLE_CHANGES = frozenset({"total_steps", "log_every", "eval_every", "ckpt_every", "keep_checkpoints", "workers",
                               "num_grid", "device", "cache_dir"})


@dataclasses.dataclass(frozen=True)
class TokenizerTrainConfig(ConfigBase):
    """A tokenizer training recipe (see ``configs/tokenizer/*.yaml``; :data:`OFFICIAL_RECIPE` is the released one).

    Lengths and intervals are optimiser steps; ``batch_size`` is the global batch (all ranks, all accumulation
    micro-batches). Paths (``data``, ``backbone_weights``...) belong to the recipe, never to the model config.
    """

    # --- model ---
    preset: str = "tok-test"  # tokenizer preset (vfmtok.tokenizer.presets), unless ``model`` is given
    model: TokenizerConfig | None = None  # a full model config; replaces the preset
    model_overrides: tuple[str, ...] = ()  # "key=value" applied to the model config
    image_size: int = 0  # 0: the model's image_size; else overrides it
    backbone_weights: str = "random"  # "random" (tests/benchmarks), "bundled" (offline DINOv2-S) or a DINOv2 .pth
    init_from: str = ""  # a model directory (config.json + model.safetensors) to start from (e.g. a converted one)
    # --- data ---
    data: str = ""  # ImageFolder / flat folder / tar shards
    val_data: str = ""  # held-out images; empty: ``num_val`` images are held out of ``data``
    num_val: int = 256  # images used for evaluation (0: no evaluation)
    crop: str = "random"  # "random" (official ADM random crop), "center" or "resize" (tiny images, e.g. CIFAR)
    hflip: bool = True  # random horizontal flip (official)
    # --- batch and length ---
    batch_size: int = 16  # global batch (official README: 16)
    grad_accum: int = 1  # micro-batches per optimiser step
    total_steps: int = 1000
    # --- optimiser ---
    optimizer: str = "adam"  # official: Adam (its --weight-decay is ignored); "adamw" applies weight_decay
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    schedule: str = "constant"  # official: warm-up then constant; "cosine" decays to min_lr
    warmup_steps: int = 0
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.9999
    # --- losses ---
    pixel_loss: str = "official_2xmse"  # "l1" | "l2" | "official_2xmse" (the released code's MSE counted twice)
    pixel_weight: float = 1.0
    lpips_weight: float = 1.0
    semantic_weight: float = 1.0
    codebook_weight: float = 1.0
    commit_weight: float = 0.25  # becomes the model's commit_beta
    entropy_weight: float = 0.0  # becomes the model's entropy_ratio (official 0)
    # --- adversarial ---
    disc_type: str = "none"  # "none" | "patchgan" | "dino" (official: dino)
    disc_features: str = "vfm"  # dino only: "vfm" (the tokenizer's frozen VFM) | "bundled" (DINOv2-S/14 at 224)
    #   | "dino-vits16" (the official frozen DINO ViT-S/16 from ``disc_weights``, read as the official code does)
    disc_weights: str = ""  # disc_features="dino-vits16": path of dino_deitsmall16_pretrain.pth
    disc_loss: str = "hinge"  # discriminator loss: "hinge" | "non-saturating"
    gen_loss: str = "non-saturating"  # generator adversarial loss: "hinge" | "non-saturating"
    disc_start: int = 20000  # first step (1-based) with an adversarial term
    disc_before_start: bool = False  # official: True (the discriminator runs from step 1, its losses weighted 0)
    disc_weight: float = 0.5
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.9, 0.95)
    # --- runtime ---
    precision: str = "fp32"  # "fp32" | "bf16" (autocast on GPU only; the quantizer always runs in fp32)
    cache_features: bool = False  # precompute the frozen VFM's features once (deterministic transforms only)
    cache_dtype: str = "float16"
    cache_dir: str = ""  # default <run>/feature_cache
    strategy: str = "ddp"  # "ddp" | "fsdp"
    device: str = "auto"
    seed: int = 0
    workers: int = 4
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    num_grid: int = 8  # images in the reconstruction grid

    def __post_init__(self) -> None:
        choices = {
            "crop": (self.crop, ("random", "center", "resize")),
            "optimizer": (self.optimizer, ("adam", "adamw")),
            "schedule": (self.schedule, ("constant", "cosine")),
            "pixel_loss": (self.pixel_loss, PIXEL_LOSSES),
            "disc_type": (self.disc_type, ("none", "patchgan", "dino")),
            "disc_features": (self.disc_features, ("vfm", "bundled", "dino-vits16")),
            "disc_loss": (self.disc_loss, ("hinge", "non-saturating")),
            "gen_loss": (self.gen_loss, ("hinge", "non-saturating")),
            "precision": (self.precision, ("fp32", "bf16")),
            "cache_dtype": (self.cache_dtype, ("float16", "float32")),
            "strategy": (self.strategy, ("ddp", "fsdp")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"TokenizerTrainConfig.{name}: {value!r} is not one of {allowed}")
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "total_steps": self.total_steps,
                    "lr": self.lr}
        bad = [k for k, v in positive.items() if not v > 0]
        if min(self.log_every, self.eval_every, self.ckpt_every, self.num_val, self.warmup_steps, self.workers) < 0:
            bad.append("intervals / counts must be >= 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            bad.append("ema_decay")
        if bad:
            raise ConfigError(f"TokenizerTrainConfig: invalid {', '.join(bad)}")
        if self.cache_features and self.crop == "random":
            raise ConfigError(
                "cache_features=true needs a deterministic training transform, but crop='random' changes what the "
                "frozen VFM sees every epoch. Use crop='center' or crop='resize' (hflip stays possible: both "
                "orientations are cached), or set cache_features=false.")
        if self.model is not None and self.model.encoder_type == "cnn":
            self._check_cnn()

    def _check_cnn(self) -> None:
        """A tokenizer without a VFM (``encoder_type="cnn"``) has no semantic target, nothing frozen to cache and no
        VFM for the DINO discriminator: refuse those settings rather than silently ignore them. (With a preset and
        ``model_overrides`` this runs when the recipe is resolved, at the start of training.)"""
        if self.semantic_weight > 0:
            raise ConfigError(f"TokenizerTrainConfig.semantic_weight={self.semantic_weight}: encoder_type='cnn' has "
                              "no VFM, so there is no semantic target; set semantic_weight=0")
        if self.cache_features:
            raise ConfigError("TokenizerTrainConfig.cache_features=true: encoder_type='cnn' has no frozen backbone "
                              "whose features could be cached; set cache_features=false")
        if self.disc_type == "dino" and self.disc_features == "vfm":
            raise ConfigError("TokenizerTrainConfig.disc_features='vfm': encoder_type='cnn' has no VFM for the DINO "
                              "discriminator; use disc_features='bundled'")


# The released recipe (reference §2.3): README command (global batch 16, 50 epochs of ImageNet-1k at 336, bf16) and
# vq_train.py defaults. 1,281,167 images // 16 = 80,072 steps per epoch; warm-up = 4 epochs from 1e-7, then
# constant 1e-4. The paper's real batch and length are an open question (the README's 4 M steps cannot fit the
# claimed 1.5 days on 16 H800s): treat batch_size / total_steps as the released *code*, not the paper.
OFFICIAL_RECIPE = TokenizerTrainConfig(
    preset="official", backbone_weights="dinov2_vitl14_reg4_pretrain.pth", crop="random", hflip=True,
    batch_size=16, total_steps=50 * 80_072, optimizer="adam", lr=1e-4, betas=(0.9, 0.95), schedule="constant",
    warmup_steps=4 * 80_072, warmup_init_lr=1e-7, grad_clip=1.0, ema_decay=0.9999, pixel_loss="official_2xmse",
    lpips_weight=1.0, semantic_weight=1.0, codebook_weight=1.0, commit_weight=0.25, entropy_weight=0.0,
    disc_type="dino", disc_features="bundled", disc_loss="hinge", gen_loss="non-saturating", disc_start=20_000,
    disc_weight=0.5, disc_lr=1e-4, precision="bf16", ckpt_every=5000, eval_every=5000, log_every=100,
)


class TrainResult(NamedTuple):
    step: int  # optimiser steps completed
    final: Path | None  # exported model directory (None when stopped early)
    metrics: dict[str, float]  # the last logged values


class TrainParts(NamedTuple):
    """What :func:`train_step` works on. ``model`` / ``disc`` may be DDP/FSDP-wrapped; ``tokenizer`` / ``disc_raw``
    are the bare modules."""

    model: nn.Module
    tokenizer: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Any
    lpips: nn.Module | None
    disc: nn.Module | None
    disc_raw: nn.Module | None
    disc_optimizer: torch.optim.Optimizer | None


def _autocast(cfg: TokenizerTrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pixel_loss(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    from ..losses.reconstruction import official_pixel_loss, pixel_loss

    return official_pixel_loss(pred, target, "l2") if kind == "official_2xmse" else pixel_loss(pred, target, kind)


def _chunks(x: Tensor, feats: BackboneOutput | None, n: int) -> list[tuple[Tensor, BackboneOutput | None]]:
    """Split a per-rank batch into ``n`` equal micro-batches."""
    size = x.shape[0] // n
    out = []
    for i in range(n):
        sl = slice(i * size, (i + 1) * size)
        f = None if feats is None else BackboneOutput([lvl[sl] for lvl in feats.levels], feats.target[sl])
        out.append((x[sl], f))
    return out


def _clip(model: nn.Module, max_norm: float) -> Tensor:
    if hasattr(model, "clip_grad_norm_"):  # FSDP clips the sharded gradients collectively
        return model.clip_grad_norm_(max_norm if max_norm > 0 else float("inf"))
    params = [p for p in model.parameters() if p.grad is not None]
    return nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))


def train_step(parts: TrainParts, cfg: TokenizerTrainConfig, x: Tensor, feats: BackboneOutput | None, step: int,
               lr: float) -> dict[str, Tensor]:
    """One optimiser step of the tokenizer (and, once the GAN is on, of the discriminator) on this rank's batch:
    :func:`generator_backward`, clipping, the optimiser and EMA updates, then :func:`discriminator_backward`,
    clipping and the discriminator's optimiser step.

    Args:
        x: (B_rank, 3, S, S) images in [-1, 1] on the device; B_rank = batch_size / world_size.
        feats: precomputed frozen-VFM output for ``x`` (feature cache) or None to run the backbone.
        step: 0-based index of this optimiser step (the official 1-based step is ``step + 1``).
        lr: the tokenizer's learning rate for this step.

    Returns:
        Detached scalar tensors of this rank (the caller all-reduces them) plus ``"code_hist"`` (K,) code counts.
    """
    set_lr(parts.optimizer, lr)
    terms, recs, gan_w = generator_backward(parts, cfg, x, feats, step)
    terms["grad_norm"] = _clip(parts.model, cfg.grad_clip).detach().float()
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.model)
    if recs:
        terms.update(discriminator_backward(parts, cfg, recs, gan_w))
        terms["disc_grad_norm"] = _clip(parts.disc, cfg.grad_clip).detach().float()
        parts.disc_optimizer.step()
        parts.disc_optimizer.zero_grad(set_to_none=True)
    return terms


def _disc_runs(parts: TrainParts, cfg: TokenizerTrainConfig, gan_w: float) -> bool:
    """Whether this step computes the discriminator: once its weight is on, or from the first step with
    ``disc_before_start`` (official: weighted 0 until ``disc_start``)."""
    return parts.disc is not None and (gan_w > 0 or cfg.disc_before_start)


def generator_backward(parts: TrainParts, cfg: TokenizerTrainConfig, x: Tensor, feats: BackboneOutput | None,
                       step: int) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]], float]:
    """The tokenizer's objective on this rank's batch, forward and backward: the gradients are left in ``.grad``
    of the tokenizer's parameters (accumulated over ``grad_accum`` micro-batches, not clipped, no optimiser step).

    Args: as :func:`train_step`.

    Returns:
        ``(terms, recs, gan_w)``: detached scalar loss terms (``loss``, ``pixel``, ``lpips``, ``semantic``, ``vq``,
        ``commit``, ``entropy``, ``g_adv`` unweighted) plus ``"code_hist"``; ``recs`` = (images, detached
        reconstructions) per micro-batch for :func:`discriminator_backward` (empty when the discriminator does not
        run this step); ``gan_w`` the adversarial weight of this step (0 before ``disc_start``).
    """
    from ..losses.adversarial import gan_weight, generator_loss
    from ..losses.feature import semantic_loss
    from ..losses.perceptual import perceptual_loss

    dev = x.device
    n = cfg.grad_accum
    gan_w = gan_weight(step + 1, cfg.disc_start, cfg.disc_weight) if parts.disc is not None else 0.0
    use_disc = _disc_runs(parts, cfg, gan_w)
    # DDP needs every parameter to receive a gradient: run the semantic pass even at weight 0 when distributed
    # (a tokenizer without a VFM has no semantic pass and no parameters for it)
    semantic = parts.tokenizer.has_backbone and (cfg.semantic_weight > 0 or hasattr(parts.model, "no_sync"))
    acc = island_dtype(x.dtype)  # float32, or float64 for a float64 step
    terms = {k: torch.zeros((), device=dev, dtype=acc) for k in ("loss", "pixel", "lpips", "semantic", "vq", "commit",
                                                                    "entropy", "g_adv")}
    hist = torch.zeros(parts.tokenizer.config.codebook_size, dtype=torch.int64, device=dev)
    recs: list[tuple[Tensor, Tensor]] = []
    chunks = _chunks(x, feats, n)
    if parts.disc_raw is not None:
        parts.disc_raw.requires_grad_(False)  # the generator pass only needs gradients w.r.t. x_rec
        parts.disc_raw.train()  # official: training mode (a spectral-norm power iteration per forward)
    parts.model.train()
    for i, (xi, fi) in enumerate(chunks):
        sync = parts.model.no_sync() if i < n - 1 and hasattr(parts.model, "no_sync") else contextlib.nullcontext()
        with sync:
            with _autocast(cfg, dev):
                out = parts.model(xi, features=fi, return_semantic=semantic)
                lp = perceptual_loss(parts.lpips, out.x_rec, xi) if parts.lpips is not None else None
            x_rec = at_least_fp32(out.x_rec)
            t = {"pixel": _pixel_loss(cfg.pixel_loss, x_rec, xi), "vq": out.vq_loss, "commit": out.commit_loss,
                 "entropy": out.entropy_loss}
            t["lpips"] = at_least_fp32(lp) if lp is not None else x_rec.new_zeros(())
            t["semantic"] = semantic_loss(out.feats_rec, out.feats) if semantic else x_rec.new_zeros(())
            loss = (cfg.pixel_weight * t["pixel"] + cfg.lpips_weight * t["lpips"] + cfg.semantic_weight * t["semantic"]
                    + cfg.codebook_weight * t["vq"] + t["commit"] + t["entropy"])
            if use_disc:
                with _autocast(cfg, dev):
                    logits_fake = parts.disc_raw(x_rec)
                t["g_adv"] = generator_loss(at_least_fp32(logits_fake), cfg.gen_loss)
                loss = loss + gan_w * t["g_adv"]  # gan_w = 0 before disc_start (disc_before_start)
            (loss / n).backward()
        t["loss"] = loss
        for k, v in t.items():
            terms[k] += v.detach().to(acc) / n
        hist += torch.bincount(out.idx.reshape(-1), minlength=hist.numel())
        if use_disc:
            recs.append((xi, x_rec.detach()))
    terms["code_hist"] = hist
    return terms, recs, gan_w


def discriminator_backward(parts: TrainParts, cfg: TokenizerTrainConfig, recs: list[tuple[Tensor, Tensor]],
                           gan_w: float) -> dict[str, Tensor]:
    """The discriminator's loss ``gan_w * D_loss(D(x), D(sg x_rec))`` on the micro-batches of
    :func:`generator_backward`, forward and backward: gradients are left in the discriminator's ``.grad`` (not
    clipped, no optimiser step). As the official code, the reconstructions go through the discriminator first,
    then the images (the order matters: each forward runs a spectral-norm power iteration).

    Returns:
        Detached scalars ``d_loss`` (weighted), ``d_adv`` (unweighted), ``logits_real``, ``logits_fake`` (means).
    """
    from ..losses.adversarial import discriminator_loss

    parts.disc_raw.requires_grad_(True)
    parts.disc.train()
    n = len(recs)
    dev = recs[0][0].device
    acc = island_dtype(recs[0][1].dtype)  # float32, or float64 for a float64 step
    out = {k: torch.zeros((), device=dev, dtype=acc) for k in ("d_loss", "d_adv", "logits_real", "logits_fake")}
    for i, (xi, x_rec) in enumerate(recs):
        sync = parts.disc.no_sync() if i < n - 1 and hasattr(parts.disc, "no_sync") else contextlib.nullcontext()
        with sync:
            with _autocast(cfg, dev):
                fake, real = parts.disc(x_rec), parts.disc(xi)
            d_adv = discriminator_loss(at_least_fp32(real), at_least_fp32(fake), cfg.disc_loss)
            d_loss = gan_w * d_adv
            (d_loss / n).backward()
        out["d_loss"] += d_loss.detach().to(acc) / n
        out["d_adv"] += d_adv.detach().to(acc) / n
        out["logits_real"] += real.detach().to(acc).mean() / n
        out["logits_fake"] += fake.detach().to(acc).mean() / n
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------
def _step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of every RNG used inside step ``step`` on ``rank`` (dropout, discriminator crops)."""
    return (seed * 1_000_003 + step * 65_537 + rank * 7_919) % (2**62)


def resolved_recipe(cfg: TokenizerTrainConfig) -> TokenizerTrainConfig:
    """``cfg`` with the full model config filled in (preset and overrides applied): what ``train_config.json`` holds."""
    from .tokenizer_setup import resolve_model_config

    return cfg.replace(model=resolve_model_config(cfg), model_overrides=(), image_size=0)






def train_tokenizer(cfg: TokenizerTrainConfig, run_dir: str | os.PathLike, stop_after: int | None = None,
                    progress: bool | str = True) -> TrainResult:
    """Train (or resume) a tokenizer run in ``run_dir``; under torchrun every rank calls this.

    ``run_dir`` receives ``train_config.json`` (the resolved recipe), ``metrics.jsonl``, ``tb/``, ``checkpoints/``,
    ``samples/recon-*.png``, optionally ``feature_cache/``, and at the end ``final/`` (EMA weights with the frozen
    backbone; ``VFMTokenizer.from_pretrained(run_dir / "final")``). A run directory holding a checkpoint is resumed
    from it, bit-identically on a deterministic device.

    Args:
        cfg: the recipe.
        stop_after: stop after this many steps of *this* call, without a checkpoint or export, exactly as if the
            process were killed there (tests, time-sliced jobs).
        progress: rank 0 shows the step, running loss, images/s and time left: True or ``"auto"`` (a tqdm bar on a
            terminal, log lines otherwise), ``"bar"``, ``"log"``, or False / ``"none"``.
    """
    from .distributed import all_reduce_sum, barrier, init_distributed
    from .schedule import lr_at
    from .tokenizer_runner import Trainer
    from .checkpoint import check_resume_config
    from .progress import Progress, as_mode
    from .tracker import Tracker, truncate_metrics

    run_dir = Path(run_dir)
    info = init_distributed(cfg.device)
    cfg = resolved_recipe(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_resume_config(run_dir, cfg, RESUMABLE_CHANGES)
    barrier()
    tr = Trainer(cfg, run_dir, info)
    start = step = tr.resume()
    if info.is_main:
        cfg.save(run_dir / "train_config.json")
        truncate_metrics(run_dir, start)
    tracker = Tracker(run_dir, enabled=info.is_main)
    if start >= cfg.total_steps and (run_dir / "final").exists():
        tracker.close()
        return TrainResult(start, run_dir / "final", tr.metrics)
    bar = Progress(cfg.total_steps, start, "tokenizer", as_mode(progress), enabled=info.is_main)
    batches = tr.batches(start)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    hist = torch.zeros(tr.model_config.codebook_size, dtype=torch.int64, device=info.device)
    epoch_skips = torch.zeros((), dtype=torch.int64, device=info.device)
    cur_epoch, n_steps, t0, busy = start // tr.steps_per_epoch, 0, time.perf_counter(), 0.0
    while step < cfg.total_steps:
        if stop_after is not None and step - start >= stop_after:
            bar.close()
            tracker.close()
            return TrainResult(step, None, tr.metrics)
        epoch, x, feats, skipped = next(batches)
        if epoch != cur_epoch:  # every rank crosses the epoch boundary at the same step
            tr.skipped[cur_epoch] = tr.skipped.get(cur_epoch, 0) + int(all_reduce_sum(epoch_skips))
            epoch_skips.zero_()
            cur_epoch = epoch
        epoch_skips += skipped
        torch.manual_seed(_step_seed(cfg.seed, step, info.rank))
        lr = lr_at(step, cfg.lr, cfg.total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr, cfg.warmup_init_lr)
        terms = train_step(tr.parts, cfg, x, feats, step, lr)
        hist += terms.pop("code_hist")
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        n_steps += 1
        step += 1
        last = step == cfg.total_steps
        if cfg.log_every and (step % cfg.log_every == 0 or last):
            keys = sorted(sums)
            vals = all_reduce_sum(torch.stack([sums[k] / counts[k] for k in keys])) / info.world_size
            hist = all_reduce_sum(hist)
            skips = int(all_reduce_sum(epoch_skips)) + tr.skipped.get(cur_epoch, 0)
            dt = max(time.perf_counter() - t0 - busy, 1e-9)
            logged = {f"train/{k}": float(v) for k, v in zip(keys, vals.tolist())}
            logged.update({"train/lr": lr, "train/usage": float((hist > 0).sum()) / hist.numel(),
                           "train/images_per_s": n_steps * cfg.batch_size / dt,
                           "train/epoch": step / tr.steps_per_epoch,
                           "data/skipped_files": float(max([skips, *tr.skipped.values()]))})
            tr.metrics.update(logged)
            tracker.log(step, logged)
            bar.set_postfix(loss=f"{logged['train/loss']:.4f}", img_s=f"{logged['train/images_per_s']:.1f}",
                            usage=f"{logged['train/usage']:.1%}")
            sums, counts, n_steps, t0, busy = {}, {}, 0, time.perf_counter(), 0.0
            hist.zero_()
        t_busy = time.perf_counter()
        if tr.splits.val is not None and cfg.eval_every and (step % cfg.eval_every == 0 or last):
            tr.evaluate(step, tracker)
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
            tr.skipped[cur_epoch] = tr.skipped.get(cur_epoch, 0) + int(all_reduce_sum(epoch_skips))
            epoch_skips.zero_()
            tr.save(step)
        busy += time.perf_counter() - t_busy  # evaluation and checkpoints do not count against throughput
        bar.update(1)
    bar.close()
    final = tr.export()
    tr.metrics["data/skipped_files"] = float(max(tr.skipped.values(), default=0))
    if info.is_main and tr.metrics["data/skipped_files"]:
        log.warning("%d unreadable image file(s) were skipped (replaced by the next readable one)",
                    int(tr.metrics["data/skipped_files"]))
    tracker.close()
    return TrainResult(step, final, tr.metrics)
