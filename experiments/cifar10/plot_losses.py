"""Plot loss curves from one or more runs' ``metrics.jsonl`` files into a PNG.

Usage: python experiments/cifar10/plot_losses.py OUT.png RUN_DIR_OR_METRICS[:TITLE] ...
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vfmtok.training.tracker import read_metrics  # noqa: E402


def main(argv: list[str]) -> int:
    out, runs = Path(argv[0]), argv[1:]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
    for ax, spec in zip(axes[0], runs):
        path, _, title = spec.partition(":")
        p = Path(path)
        records = read_metrics(p.parent if p.name == "metrics.jsonl" else p)
        keys = sorted({k for r in records for k in r if "loss" in k})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r and math.isfinite(r[k])]
            ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(title or p.name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
