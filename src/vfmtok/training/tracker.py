"""Metric logging for training runs: TensorBoard scalars/images plus a ``metrics.jsonl`` file (rank 0 only)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


class Tracker:
    """``log(step, {"loss": 0.1})`` and ``log_image(step, "recon", uint8 (H, W, 3))``; a no-op on non-main ranks."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._writer = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:  # tensorboard missing: JSONL only
                    self._writer = None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self._writer is not None:
            for k, v in clean.items():
                self._writer.add_scalar(k, v, step)

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: uint8 (H, W, 3)."""
        if self.enabled and self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._writer is not None:
                self._writer.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of ``metrics.jsonl`` (for plots and reports)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop the records logged after ``step`` (a resumed run replays those steps and logs them again)."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
