"""Class-conditional GPT training on pre-extracted tokenizer codes (the LlamaGen/VFMTok c2i recipe).

Differences from the official ``train_c2i.py`` (reference §3.3), all deliberate:

- codes are read from a codes directory written by ``vfmtok extract-codes`` instead of re-encoding every batch
  through the frozen ViT-L tokenizer (the official online augmentation is random-crop + flip; ``--ten-crop`` codes
  are LlamaGen's pre-extracted equivalent, one augmentation drawn per image and epoch);
- the sampler is re-shuffled every epoch (the official loop never calls ``set_epoch``);
- the learning rate follows ``lr_schedule`` (official: constant, there is no scheduler; our presets say which they use);
- the RNG is re-seeded every step from ``(seed, step, rank)`` and the data position is a function of the step, so
  a run killed at any moment and resumed from its last checkpoint continues bit-identically;
- a held-out split of the codes gives a validation loss; EMA weights are exported with ``save_pretrained``.

Model code does no I/O; everything that touches files or ranks lives here and in :mod:`vfmtok.training`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigBase, ConfigError
from ..data.tokens import CodeDataset
from ..generator import GPT, GPTConfig, gpt_preset
from .checkpoint import check_resume_config, load_latest_checkpoint, save_checkpoint
from .distributed import (DistInfo, all_reduce_sum, barrier, fsdp_full_state, full_state_dict,
                          init_distributed, is_fsdp, load_optimizer_state, optimizer_state, wrap_model)
from .ema import EMA, _unwrap
from .optim import build_optimizer, decay_names
from .sampler import ResumableSampler
from .schedule import lr_at, set_lr
from .tracker import Tracker, truncate_metrics

log = logging.getLogger(__name__)

# Fields that may change when a run is resumed (everything else must match the run's train_config.json).
RESUMABLE_CHANGES = frozenset({"total_steps", "epochs", "log_every", "eval_every", "ckpt_every", "sample_every",
                               "keep_checkpoints", "sample_classes", "sample_cfg_scale", "tokenizer"})


@dataclasses.dataclass(frozen=True)
class GPTTrainConfig(ConfigBase):
    """A GPT training recipe (see ``configs/gpt/*.yaml``). Defaults are the official c2i recipe for GPT-B.

    The GPT's ``vocab_size``, ``block_size`` and ``num_classes`` come from the codes manifest; ``model`` names a
    preset of :mod:`vfmtok.generator.presets`; ``model_overrides`` are ``key=value`` strings applied to it.
    Lengths are in optimiser steps; ``total_steps = 0`` derives the length from ``epochs``.
    """

    model: str = "gpt-b"
    model_overrides: tuple[str, ...] = ()
    class_dropout_prob: float = 0.1  # passed to the GPT config (official 0.1)
    codes: str = ""  # codes directory (required)
    val_codes: str = ""  # optional separate codes directory for the validation loss (e.g. ImageNet val)
    val_size: int = 0  # else: images held out of ``codes`` for the validation loss (0 = none)
    augment: bool = True  # draw one stored augmentation per image and epoch
    tokenizer: str = ""  # tokenizer model directory: enables decoded sample grids
    global_batch_size: int = 512
    grad_accum_steps: int = 1
    total_steps: int = 0
    epochs: float = 300.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on parameters with >= 2 dims (matrices and embeddings)
    lr_schedule: str = "constant"  # official: constant (no scheduler); or "cosine"
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 1.0
    ema: bool = True
    ema_decay: float = 0.9999
    mixed_precision: str = "bf16"  # "bf16" autocast on GPU (official) or "none"; CPU always runs fp32
    strategy: str = "ddp"  # "ddp" or "fsdp" (multi-GPU only)
    compile: bool = False
    log_every: int = 100
    eval_every: int = 5000
    ckpt_every: int = 10000
    sample_every: int = 0
    keep_checkpoints: int = 2
    sample_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    sample_per_class: int = 4
    sample_cfg_scale: float = 2.0  # LlamaGen's GPT-B value; the paper's is unknown (reference §3.4)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "lr_schedule": self.lr_schedule in ("constant", "cosine"),
            "mixed_precision": self.mixed_precision in ("bf16", "none"),
            "strategy": self.strategy in ("ddp", "fsdp"),
            "global_batch_size": self.global_batch_size > 0,
            "grad_accum_steps": self.grad_accum_steps > 0,
            "total_steps / epochs": self.total_steps > 0 or self.epochs > 0,
            "lr": self.lr > 0,
            "ema_decay": 0.0 <= self.ema_decay <= 1.0,
            "intervals": min(self.log_every, self.eval_every, self.ckpt_every, self.sample_every) >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"GPTTrainConfig: invalid {', '.join(bad)} in {self}")


class TrainResult(NamedTuple):
    step: int  # optimiser steps completed
    final: Path | None  # exported model directory (None when stopped early)
    metrics: dict[str, float]  # the last logged values


def build_gpt_config(cfg: GPTTrainConfig, manifest: dict[str, Any]) -> GPTConfig:
    """The preset resized to the codes (vocab, tokens, classes) with the recipe's class dropout and overrides."""
    gpt_cfg = gpt_preset(cfg.model).with_overrides(list(cfg.model_overrides))
    return gpt_cfg.replace(vocab_size=int(manifest["vocab_size"]), block_size=int(manifest["num_tokens"]),
                           num_classes=int(manifest["num_classes"]), class_dropout_prob=cfg.class_dropout_prob)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _batches(sampler: ResumableSampler, steps_per_epoch: int, per_rank: int, step: int):
    """Yield (epoch, (per_rank,) indices) for optimiser steps ``step, step + 1, ...`` (the last partial batch of an
    epoch is dropped). The position is a pure function of the step, so a resumed run reads exactly the next batch."""
    while True:
        epoch, k = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, k * per_rank)
        it = iter(sampler)
        for _ in range(k, steps_per_epoch):
            yield epoch, np.fromiter(it, dtype=np.int64, count=per_rank)
            step += 1


# ---------------------------------------------------------------------------------------------------- state helpers
def _model_state(model: nn.Module) -> dict[str, Tensor]:
    """Full state dict (collective under FSDP), detached copies."""
    return {k: v.detach().clone() for k, v in full_state_dict(model).items()}


def _ema_state(model: nn.Module, ema: EMA) -> dict[str, Tensor]:
    """Full state dict with the EMA weights (collective under FSDP, whose EMA shadows are the local shards)."""
    if is_fsdp(model):
        with ema.applied_to(model):
            return _model_state(model)
    return ema.model_state_dict(model)


def _load_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    if is_fsdp(model):
        with fsdp_full_state(model):
            model.load_state_dict(state)
    else:
        _unwrap(model).load_state_dict(state)


class _Trainer:
    def __init__(self, cfg: GPTTrainConfig, run_dir: Path, info: DistInfo, progress: bool) -> None:
        self.cfg, self.run_dir, self.info, self.progress = cfg, run_dir, info, progress
        if not cfg.codes:
            raise ConfigError("GPTTrainConfig.codes: set the codes directory (codes=PATH)")
        self.data = CodeDataset(cfg.codes, seed=cfg.seed, augment=cfg.augment)
        self.gpt_config = build_gpt_config(cfg, self.data.manifest)
        if cfg.val_codes:
            self.val_data, self.train_rows = CodeDataset(cfg.val_codes, augment=False), np.arange(len(self.data))
            self.val_rows = np.arange(len(self.val_data))
            shape = lambda d: (d.num_tokens, d.vocab_size, d.num_classes)  # noqa: E731
            if shape(self.val_data) != shape(self.data):
                raise ConfigError(f"val_codes {cfg.val_codes} has (tokens, vocab, classes) {shape(self.val_data)}, "
                                  f"the training codes {shape(self.data)}")
        else:
            self.val_data = self.data
            self.train_rows, self.val_rows = self.data.holdout(cfg.val_size, seed=cfg.seed)
        world = info.world_size
        if cfg.global_batch_size % (world * cfg.grad_accum_steps):
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not divisible by world size {world} x "
                              f"grad_accum_steps {cfg.grad_accum_steps}")
        self.per_rank = cfg.global_batch_size // world
        self.micro = self.per_rank // cfg.grad_accum_steps
        self.sampler = ResumableSampler(len(self.train_rows), info.rank, world, shuffle=True, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.per_rank // self.per_rank
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.train_rows)} training images are fewer than one global batch "
                              f"({cfg.global_batch_size})")
        self.total_steps = cfg.total_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.amp = info.device.type == "cuda" and cfg.mixed_precision == "bf16"
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # as the official trainer
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)  # weight init: identical on every rank
        net = GPT(self.gpt_config)
        decay = decay_names(net)  # on the bare model, before FSDP flattens the shapes
        self.model = wrap_model(net.to(info.device), info, cfg.strategy)
        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(self.model, "adamw", lr=cfg.lr, betas=cfg.betas,
                                         weight_decay=cfg.weight_decay, decay=decay)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.tracker = Tracker(run_dir, enabled=False)  # replaced once the resume point is known
        self.tokenizer = None
        self.metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------ state
    def save(self, step: int) -> None:
        """Checkpoint ``step`` (collective: every rank takes part in gathering the state, rank 0 writes)."""
        model_state = _model_state(self.model)
        ema_state = _ema_state(self.model, self.ema) if self.ema else None
        optim_state = optimizer_state(self.model, self.optimizer)
        if self.info.is_main:
            train_state = {"optimizer": optim_state, "world_size": self.info.world_size,
                           "epoch": step // self.steps_per_epoch, "metrics": dict(self.metrics)}
            save_checkpoint(self.run_dir, step, model_state, train_state, config=self.gpt_config, ema_state=ema_state,
                            keep=self.cfg.keep_checkpoints)
        barrier()

    def resume(self) -> int:
        found = load_latest_checkpoint(self.run_dir)  # falls back past a damaged newest checkpoint, saying so
        if found is None:
            return 0
        ckpt, data = found
        if self.ema is not None:
            if data["ema"] is None:
                raise ConfigError(f"{ckpt.path} has no EMA weights but the recipe sets ema=true")
            _load_model_state(self.model, data["ema"])
            self.ema = EMA(self.model, self.cfg.ema_decay)
        _load_model_state(self.model, data["model"])
        load_optimizer_state(self.model, self.optimizer, data["state"]["optimizer"])
        self.metrics = dict(data["state"].get("metrics", {}))
        log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
        return ckpt.step

    # ------------------------------------------------------------------------------------------------ steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def _loss(self, codes: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        with self._autocast():
            logits = self.fwd(codes[:, :-1], labels)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), codes.flatten(), reduction=reduction)

    def train_step(self, step: int, epoch: int, idx: np.ndarray) -> Tensor:
        """One optimiser step on this rank's ``idx`` (per_rank,) rows; returns the detached mean loss."""
        cfg, dev = self.cfg, self.info.device
        torch.manual_seed(_step_seed(cfg.seed, step, self.info.rank))  # dropout + class dropout: f(step, rank)
        self.model.train()
        set_lr(self.optimizer, lr_at(step, cfg.lr, self.total_steps, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr))
        codes, labels = self.data.get_batch(self.train_rows[idx], epoch=epoch)
        total = torch.zeros((), device=dev)
        for i in range(cfg.grad_accum_steps):
            sl = slice(i * self.micro, (i + 1) * self.micro)
            last = i == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last or not self.info.distributed else self.model.no_sync()
            with sync:
                loss = self._loss(codes[sl].to(dev, non_blocking=True), labels[sl].to(dev, non_blocking=True))
                (loss / cfg.grad_accum_steps).backward()
            total += loss.detach()
        if hasattr(self.model, "clip_grad_norm_"):  # FSDP clips the sharded gradients collectively
            grad_norm = self.model.clip_grad_norm_(cfg.grad_clip)
        else:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self._grad_norm = grad_norm.detach()
        return total / cfg.grad_accum_steps

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token cross-entropy of the raw and EMA weights on the held-out codes (plain centre-crop codes)."""
        out = {}
        with contextlib.ExitStack() as stack:
            for name in ("val_loss", "val_loss_ema") if self.ema is not None else ("val_loss",):
                if name == "val_loss_ema":
                    stack.enter_context(self.ema.applied_to(self.model))
                out[name] = self._val_loss()
        return out

    def _val_loss(self) -> float:
        self.model.eval()
        world, dev = self.info.world_size, self.info.device
        per = -(-len(self.val_rows) // world)  # every rank runs the same number of forwards (FSDP needs it)
        rows = self.val_rows[self.info.rank * per : (self.info.rank + 1) * per]
        acc = torch.zeros(2, dtype=torch.float64, device=dev)
        for s in range(0, per, self.micro):
            want = min(self.micro, per - s)
            chunk = rows[s : s + want]
            n_real = len(chunk)
            pad = np.repeat((chunk if n_real else self.val_rows)[-1:], want - n_real)  # padding rows, not counted
            chunk = np.concatenate([chunk, pad])
            codes, labels = self.val_data.get_batch(chunk, aug=0)
            losses = self._loss(codes.to(dev), labels.to(dev), reduction="none").view(len(chunk), -1)[:n_real]
            acc += torch.stack([losses.sum().double(), torch.tensor(losses.numel(), device=dev, dtype=torch.float64)])
        acc = all_reduce_sum(acc)
        return float(acc[0] / acc[1].clamp_min(1))

    def sample_grid(self, step: int) -> None:
        """Decode a class-conditional grid (rows: ``sample_classes``) with the EMA weights; rank 0 writes it."""
        from PIL import Image

        from ..generator import sample
        from ..tokenizer.model import VFMTokenizer

        state = _ema_state(self.model, self.ema) if self.ema else \
            _model_state(self.model)
        if self.info.is_main:
            dev = self.info.device
            if self.tokenizer is None:
                self.tokenizer = VFMTokenizer.from_pretrained(self.cfg.tokenizer, device=dev)
            gpt = GPT(self.gpt_config).to(dev)
            gpt.load_state_dict(state)
            gpt.eval()
            classes = [c for c in self.cfg.sample_classes if c < self.gpt_config.num_classes]
            labels = torch.tensor(classes, device=dev).repeat_interleave(self.cfg.sample_per_class)
            gen = torch.Generator(dev).manual_seed(self.cfg.seed)
            scale = self.cfg.sample_cfg_scale if self.gpt_config.has_null_class else 1.0
            with self._autocast():
                codes = sample(gpt, labels, cfg_scale=scale, generator=gen)
            images = self.tokenizer.decode_uint8(codes, size=None).cpu().numpy()  # (B, S, S, 3)
            n, s = self.cfg.sample_per_class, images.shape[1]
            grid = images.reshape(len(classes), n, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(len(classes) * s, n * s, 3)
            path = self.run_dir / "samples" / f"step-{step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(path)
            self.tracker.log_image(step, "samples", grid)
        barrier()

    def export(self) -> Path:
        """Write the EMA (or raw) weights as a model directory ``<run>/final`` (config.json + model.safetensors)."""
        state = _ema_state(self.model, self.ema) if self.ema else \
            _model_state(self.model)
        final = self.run_dir / "final"
        if self.info.is_main:
            gpt = GPT(self.gpt_config)
            gpt.load_state_dict(state)
            tmp = self.run_dir / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            gpt.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        barrier()
        return final






def train_gpt(cfg: GPTTrainConfig, run_dir: str | os.PathLike, device: str | None = None,
              stop_after: int | None = None, progress: bool | str = True) -> TrainResult:
    """Train (or resume) a GPT run in ``run_dir``; under torchrun every rank calls this.

    Args:
        cfg: the recipe.
        run_dir: run directory: ``train_config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``samples/``,
            and at the end ``final/`` (EMA weights, loadable with ``GPT.from_pretrained``).
        device: ``"cuda"``, ``"cpu"`` or None (auto).
        stop_after: stop after this many steps of *this* call, without a checkpoint or export, exactly as if the
            process were killed there (for tests and time-sliced jobs).
        progress: rank 0 shows the step, running loss, tokens/s and time left: True or ``"auto"`` (a tqdm bar on a
            terminal, log lines otherwise), ``"bar"``, ``"log"``, or False / ``"none"``.
    """
    run_dir = Path(run_dir)
    info = init_distributed(device)
    # on every rank, so that none is left waiting for a failed one
    check_resume_config(run_dir, cfg, RESUMABLE_CHANGES)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    tr = _Trainer(cfg, run_dir, info, progress)
    start = tr.resume()
    if info.is_main:
        cfg.save(run_dir / "train_config.json")
        truncate_metrics(run_dir, start)
    tr.tracker = Tracker(run_dir, enabled=info.is_main)
    if start >= tr.total_steps and (run_dir / "final").exists():
        log.info("%s is already complete (%d steps)", run_dir, start)
        tr.tracker.close()
        return TrainResult(start, run_dir / "final", tr.metrics)
    tokens_per_step = cfg.global_batch_size * tr.gpt_config.block_size
    from .progress import Progress, as_mode

    bar = Progress(tr.total_steps, start, "gpt", as_mode(progress), enabled=info.is_main)
    batches = _batches(tr.sampler, tr.steps_per_epoch, tr.per_rank, start)
    loss_sum, n_logged, t0, busy, step = torch.zeros((), device=info.device), 0, time.perf_counter(), 0.0, start
    while step < tr.total_steps:
        if stop_after is not None and step - start >= stop_after:
            bar.close()
            tr.tracker.close()
            return TrainResult(step, None, tr.metrics)
        epoch, idx = next(batches)
        loss_sum += tr.train_step(step, epoch, idx)
        n_logged += 1
        step += 1
        last = step == tr.total_steps
        if cfg.log_every and (step % cfg.log_every == 0 or last):
            loss = float(all_reduce_sum(loss_sum / n_logged)) / info.world_size
            dt = time.perf_counter() - t0 - busy
            tr.metrics.update(train_loss=loss, lr=tr.optimizer.param_groups[0]["lr"],
                              grad_norm=float(tr._grad_norm), tokens_per_s=n_logged * tokens_per_step / dt,
                              epoch=step / tr.steps_per_epoch)
            tr.tracker.log(step, {k: tr.metrics[k] for k in ("train_loss", "lr", "grad_norm", "tokens_per_s", "epoch")})
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tr.metrics['tokens_per_s']:.3g}")
            loss_sum.zero_()
            n_logged, t0, busy = 0, time.perf_counter(), 0.0
        t_busy = time.perf_counter()
        if len(tr.val_rows) and cfg.eval_every and (step % cfg.eval_every == 0 or last):
            vals = tr.evaluate()
            tr.metrics.update(vals)
            tr.tracker.log(step, vals)
        if cfg.tokenizer and cfg.sample_every and (step % cfg.sample_every == 0 or last):
            tr.sample_grid(step)
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
            tr.save(step)
        busy += time.perf_counter() - t_busy  # evaluation, sampling and checkpoints do not count as throughput
        bar.update(1)
    bar.close()
    final = tr.export()
    tr.tracker.close()
    return TrainResult(step, final, tr.metrics)
