"""The demo's report: ``report.md`` and a self-contained-folder ``report.html`` built from the stage outputs.

Reads what the stages wrote (``stages/*.json``, the runs' ``metrics.jsonl``, ``eval/*.json``, sample grids, region
pictures), draws the loss curves and a reconstruction grid, and lays everything out with a metrics table.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def loss_curves(out: Path) -> Path:
    """Training and validation losses of the tokenizer and the GPT -> ``figures/losses.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..training.tracker import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (run, title) in zip(axes, (("tokenizer", "tokenizer"), ("gpt", "GPT"))):
        records = read_metrics(out / run)
        keys = sorted({k for r in records for k in r if k not in ("step", "time") and "loss" in k})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(f"{title} losses")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "figures" / "losses.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reconstruction_grid(out: Path, tokenizer_dir: Path, test_dir: Path, n: int = 10) -> Path:
    """First test image of each class (up to ``n``), originals on top, reconstructions below -> ``figures/recon.png``."""
    import torch
    from PIL import Image

    from ..data.transforms import ImageTransform
    from ..tokenizer.model import VFMTokenizer

    tok = VFMTokenizer.from_pretrained(tokenizer_dir)
    size = tok.config.image_size
    transform = ImageTransform(size, crop="resize", hflip=False)
    files = [sorted(p for p in c.iterdir() if p.is_file())[0] for c in sorted(test_dir.iterdir()) if c.is_dir()][:n]
    x = torch.stack([transform(Image.open(f)) for f in files])  # (n, 3, S, S) in [-1, 1]
    with torch.no_grad():
        rec = tok.decode(tok.encode(x))
    to_u8 = lambda t: (t * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
    top, bottom = np.concatenate(list(to_u8(x)), axis=1), np.concatenate(list(to_u8(rec)), axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    scale = max(1, 96 // size)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path = out / "figures" / "recon.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _metrics_rows(out: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    tok = _load(out / "eval" / "tokenizer.json")
    m = tok.get("metrics", tok)
    for key, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips_vgg", "LPIPS-VGG")):
        if key in m:
            rows.append(("reconstruction", label, _fmt(m[key])))
    cb = m.get("codebook", {})
    for key in ("usage", "perplexity", "num_used"):
        if key in cb:
            rows.append(("reconstruction", f"codebook {key}", _fmt(cb[key])))
    for name, d in m.get("distribution", {}).items():
        for key, v in d.items():
            if isinstance(v, (int, float)):
                rows.append(("reconstruction", f"{key} [{name}]", _fmt(float(v))))
    for key, v in (tok.get("linear_probe") or {}).items():
        if isinstance(v, dict) and "top1" in v:
            what = "quantized tokens" if key == "tokens" else "encoder slots" if key == "slots" else key
            rows.append(("linear probe", f"top-1, mean-pooled {what} ({v.get('num_train')} train / "
                         f"{v.get('num_test')} test images)", _fmt(float(v["top1"]))))
    for f in sorted((out / "eval").glob("samples-*.json")):
        rep = _load(f)
        for res in rep.get("results", []):
            for key, v in res.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not key.startswith("num_"):
                    rows.append((f"samples {f.stem[len('samples-'):]}", f"{key} [{res.get('extractor')}]",
                                 _fmt(float(v))))
    return rows


def write_report(out: Path) -> Path:
    """Write ``<out>/report.md`` and ``<out>/report.html``; returns the HTML path."""
    stages = {p.stem: _load(p) for p in sorted((out / "stages").glob("*.json"))}
    data, tok = stages.get("data", {}), stages.get("tokenizer", {})
    figures: list[tuple[str, Path]] = []
    if tok and data:
        figures.append(("Reconstructions (top: input, bottom: VFMTok reconstruction)",
                        reconstruction_grid(out, Path(tok["model"]), Path(data["test"]))))
    for name, s in stages.get("samples", {}).get("runs", {}).items():
        if (Path(s["dir"]) / "grid.png").exists():
            figures.append((f"Class-conditional samples, {name} (CFG scale {s['cfg_scale']}; one row per class)",
                            Path(s["dir"]) / "grid.png"))
    for i, p in enumerate(stages.get("regions", {}).get("pictures", [])):
        figures.append((f"Token regions {i}: deformable sampling points, coloured by token, sized by weight", Path(p)))
    figures.append(("Training losses", loss_curves(out)))
    rows = _metrics_rows(out)
    timing = [(k, v.get("seconds")) for k, v in stages.items() if isinstance(v, dict) and "seconds" in v]

    rel = lambda p: str(Path(p).resolve().relative_to(out.resolve()))  # noqa: E731
    md = ["# vfmtok demo report", "", f"Data: {data.get('source', '?')}", "",
          "All FD numbers are Fréchet distances on the named feature extractor (e.g. the bundled DINOv2-S), "
          "not Inception FID.", "", "## Metrics", "", "| part | metric | value |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    md += ["", "## Pictures", ""] + [f"### {t}\n\n![{t}]({rel(p)})\n" for t, p in figures]
    md += ["## Stage times (s)", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in timing]
    (out / "report.md").write_text("\n".join(md) + "\n")

    e = html.escape
    body = [f"<h1>vfmtok demo report</h1><p>Data: {e(str(data.get('source', '?')))}</p>",
            "<p>All FD numbers are Fréchet distances on the named feature extractor, not Inception FID.</p>",
            "<h2>Metrics</h2><table><tr><th>part</th><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in rows]
    body += ["</table><h2>Pictures</h2>"]
    body += [f"<figure><img src='{e(rel(p))}'><figcaption>{e(t)}</figcaption></figure>" for t, p in figures]
    body += ["<h2>Stage times</h2><table>"] + [f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in timing]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%;image-rendering:pixelated}"
             "figure{margin:1.5em 0}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>vfmtok demo</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</table></body></html>\n"
    path = out / "report.html"
    path.write_text(page)
    return path
