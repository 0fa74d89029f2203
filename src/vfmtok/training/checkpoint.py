"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``<run>/checkpoints/step-<step as 8 digits>/`` holding ``model.safetensors`` (raw weights),
``ema.safetensors`` (EMA weights, what gets released), ``config.json`` (the model config) and ``state.pt`` (optimiser,
scheduler, EMA, RNG and data-position state, loadable with ``weights_only=True``). It is written into a temporary
directory and renamed into place, and ``<run>/checkpoints/latest`` is replaced atomically afterwards, so a run killed at
any moment leaves either the previous or the new checkpoint, never a half-written one.

A checkpoint damaged afterwards (a truncated copy, a full disk during a manual copy, bit rot) is found when it is read:
:func:`load_latest_checkpoint` then warns, names the damaged file and falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigBase, ConfigError
from ..hub import ModelLoadError, load_state_dict, save_state_dict, torch_load_weights

log = logging.getLogger(__name__)


class Checkpoint(NamedTuple):
    path: Path
    step: int


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch: Python, NumPy, torch CPU and all CUDA devices."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, Tensor],
    train_state: dict[str, Any],
    config: ConfigBase | None = None,
    ema_state: dict[str, Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # temporaries of a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:08d}-"))
    try:
        save_state_dict(model_state, tmp / "model.safetensors")
        if ema_state is not None:
            save_state_dict(ema_state, tmp / "ema.safetensors")
        if config is not None:
            config.save(tmp / "config.json")
        torch.save({"step": step, **train_state}, tmp / "state.pt")
        for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible (power loss)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def _step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def _checkpoints_newest_first(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """Every complete checkpoint directory of a run (holding ``state.pt``), the ``latest`` pointer's first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = sorted((p for p in root.glob("step-*") if p.is_dir() and (p / "state.pt").exists()), reverse=True)
    pointer = root / "latest"
    if pointer.exists():
        named = root / pointer.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return [Checkpoint(p, _step_of(p)) for p in found]


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest complete checkpoint of a run, or None (its files are not read: see :func:`load_latest_checkpoint`)."""
    found = _checkpoints_newest_first(run_dir)
    return found[0] if found else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory: ``{"model": state_dict, "ema": state_dict | None, "state": train_state}``.

    Raises:
        FileNotFoundError: ``path`` holds no ``state.pt``.
        ModelLoadError: a file of the checkpoint is truncated or corrupt (the message names it).
    """
    path = Path(path)
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"not a checkpoint directory (no state.pt): {path}")
    state = torch_load_weights(path / "state.pt", "training state", map_location=device)
    if not isinstance(state, dict) or "step" not in state:
        raise ModelLoadError(f"{path / 'state.pt'}: not a vfmtok training state (no 'step' entry)")
    ema = path / "ema.safetensors"
    return {
        "model": load_state_dict(path / "model.safetensors", device=device),
        "ema": load_state_dict(ema, device=device) if ema.exists() else None,
        "state": state,
    }


def load_latest_checkpoint(run_dir: str | os.PathLike,
                           device: str | torch.device = "cpu") -> tuple[Checkpoint, dict[str, Any]] | None:
    """The newest checkpoint of a run that reads intact, with its contents (see :func:`load_checkpoint`), or None.

    A damaged newer checkpoint is skipped with a warning naming the file and the checkpoint used instead (the next
    save overwrites it). When every checkpoint is damaged, :class:`ModelLoadError` lists them.
    """
    found = _checkpoints_newest_first(run_dir)
    problems = []
    for k, ckpt in enumerate(found):
        try:
            data = load_checkpoint(ckpt.path, device=device)
        except ModelLoadError as e:
            problems.append(ckpt.path.name)
            later = f"falling back to {found[k + 1].path.name}" if k + 1 < len(found) else "no older checkpoint"
            log.warning("checkpoint %s is damaged, %s: %s", ckpt.path.name, later, e)
            continue
        if problems:
            log.warning("resuming from %s (step %d) instead of the damaged newer checkpoint", ckpt.path, ckpt.step)
        return ckpt, data
    if problems:
        raise ModelLoadError(f"{Path(run_dir) / 'checkpoints'}: no intact checkpoint to resume from (damaged: "
                             f"{', '.join(problems)}; the warnings above name the files); move that folder away to "
                             "start the run again")
    return None


def check_resume_config(run_dir: str | os.PathLike, cfg: ConfigBase, resumable: set[str] | frozenset[str]) -> None:
    """Refuse to resume ``run_dir`` with a recipe that differs from its ``train_config.json`` in any field outside
    ``resumable`` (lengths, intervals and the like), naming the fields that changed."""
    path = Path(run_dir) / "train_config.json"
    if not path.exists():
        return
    old = type(cfg).load(path).to_dict()
    diff = sorted(k for k, v in cfg.to_dict().items() if old.get(k) != v and k not in resumable)
    if diff:
        raise ConfigError(f"{run_dir} holds a run with a different recipe ({', '.join(diff)} changed); resume it "
                          "with its own train_config.json or choose another output directory")
