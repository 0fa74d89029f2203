"""The demo's report: ``report.md`` and a self-contained-folder ``report.html`` built from the stage outputs.

Reads what the stages wrote (``stages/*.json``, the runs' ``metrics.jsonl``, ``eval/*.json``, ``samples.npz``, region
pictures), draws the class-labelled sample grids, a reconstruction grid, the loss curves, and lays everything out
with a metrics table in which every number says what it measures, which way is better, and how noisy it is.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

_EXTRACTOR = "DINOv2-S"  # the bundled extractor every demo FD uses (named once, in the table's header text)


class Row(NamedTuple):
    """One metric: its name, one value per column (already formatted) and one line on what it means."""

    metric: str
    values: list[str]
    meaning: str


class Table(NamedTuple):
    title: str
    columns: list[str]
    rows: list[Row]
    note: str


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
    return "n/a"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def class_names(folder: Path) -> list[str]:
    """Class sub-folder names in label order (sorted, as every ImageFolder reader here numbers them), without the
    ``<index>-`` prefix the demo's export puts in front to keep that order (``0-t-shirt`` -> ``t-shirt``)."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    short = [re.sub(r"^\d+-", "", n) if re.match(r"^\d+-.", n) else n for n in names]
    return short if len(set(short)) == len(short) else names  # keep the prefixes where they tell classes apart


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------------
def loss_curves(out: Path) -> Path:
    """Training and validation losses of the tokenizer and the GPT -> ``figures/losses.png``."""
    from ..training.tracker import read_metrics

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, (run, title) in zip(axes, (("tokenizer", "tokenizer"), ("gpt", "GPT"))):
        records = read_metrics(out / run)
        keys = sorted({k for r in records for k in r if k not in ("step", "time") and "loss" in k})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r and math.isfinite(r[k]) and r[k] > 0]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(f"{title} losses")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if keys:
            ax.legend(fontsize=7)
    return _save(fig, out / "figures" / "losses.png")


def labelled_grid(images: np.ndarray, labels: np.ndarray, names: list[str], per_class: int, title: str,
                  path: Path) -> Path:
    """One row per class (class name on the left), the first ``per_class`` images of each class.

    Args:
        images: (N, H, W, 3) uint8.
        labels: (N,) int class indices into ``names`` (a missing name shows as the index).
    """
    plt = _pyplot()
    classes = sorted(int(c) for c in np.unique(labels))
    _, h, w, _ = images.shape
    grid = np.full((len(classes) * h, per_class * w, 3), 255, np.uint8)
    for r, c in enumerate(classes):
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    cell = 0.55  # inches per image
    fig, ax = plt.subplots(figsize=(1.3 + per_class * cell, 0.5 + len(classes) * cell), layout="constrained")
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([(r + 0.5) * h for r in range(len(classes))],
                  [names[c] if c < len(names) else str(c) for c in classes], fontsize=9)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def sample_grid(out: Path, name: str, npz: Path, names: list[str], per_class: int = 8, cfg: float = 1.0) -> Path:
    """Class-labelled grid of a ``vfmtok sample`` run -> ``figures/samples-<name>.png``."""
    with np.load(npz) as f:
        images, labels = f["arr_0"], f["labels"]
    what = "no classifier-free guidance" if cfg == 1.0 else f"classifier-free guidance scale {cfg:g}"
    return labelled_grid(images, labels, names, per_class, f"samples, {what}",
                         out / "figures" / f"samples-{name}.png")


def reconstruction_grid(out: Path, tokenizer_dir: Path, test_dir: Path, n: int = 10) -> Path:
    """First test image of each class (up to ``n``), originals on top, reconstructions below, class names above
    -> ``figures/recon.png``."""
    import torch
    from PIL import Image

    from ..data.transforms import ImageTransform
    from ..tokenizer.model import VFMTokenizer

    plt = _pyplot()
    tok = VFMTokenizer.from_pretrained(tokenizer_dir)
    size = tok.config.image_size
    transform = ImageTransform(size, crop="resize", hflip=False)
    folders = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))[:n]
    names = class_names(test_dir)[:n]
    files = [sorted(p for p in c.iterdir() if p.is_file())[0] for c in folders]
    x = torch.stack([transform(Image.open(f)) for f in files])  # (n, 3, S, S) in [-1, 1]
    with torch.no_grad():
        rec = tok.decode(tok.encode(x))
    to_u8 = lambda t: (t * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
    top, bottom = np.concatenate(list(to_u8(x)), axis=1), np.concatenate(list(to_u8(rec)), axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.95 * len(files), 2.6), layout="constrained")
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * size for i in range(len(files))], names, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([0.5 * size, 1.5 * size], ["input", "recon-\nstruction"], fontsize=9)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    return _save(fig, out / "figures" / "recon.png")


# ---------------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------------
def tokenizer_table(tok: dict[str, Any]) -> Table | None:
    """Reconstruction metrics of ``eval/tokenizer.json``."""
    m = tok.get("metrics")
    if not m:
        return None
    n = m.get("num_images")
    rows = [Row("PSNR (dB)", [_num(m.get("psnr"), 4)], "pixel fidelity, higher is better (mean over images)"),
            Row("SSIM", [_num(m.get("ssim"), 3)], "structural similarity in [0, 1], higher is better"),
            Row("LPIPS (VGG)", [_num(m.get("lpips_vgg"), 3)],
                "perceptual distance of deep VGG features, lower is better (0: identical)")]
    cb = m.get("codebook", {})
    if cb:
        rows.append(Row("codebook usage", [f"{_pct(cb.get('usage'))} ({cb.get('used')} of {cb.get('size')})"],
                        f"share of the {cb.get('size')} codes used at least once by the {cb.get('total')} test tokens"))
        rows.append(Row("codebook perplexity", [_num(cb.get("perplexity"), 3)],
                        "effective number of codes in use (exp of the code entropy; all equally used: "
                        f"{cb.get('size')})"))
    for d in m.get("distribution", {}).values():
        rows.append(Row("FD, reconstructions vs originals", [_num(d.get("reconstruction"), 4)],
                        "distance between the two sets' feature distributions, lower is better (0: the same)"))
        for f in (2, 4):
            if f"down{f}_up" in d:
                rows.append(Row(f"FD, originals blurred {f}x vs originals", [_num(d[f"down{f}_up"], 4)],
                                f"yardstick: the same images shrunk {f}x and enlarged back (bicubic); a reconstruction"
                                f" FD below it is closer to the originals than a {f}x blur"))
        if "spatial" in d:
            rows.append(Row("spatial FD, reconstructions vs originals", [_num(d["spatial"].get("reconstruction"), 4)],
                            "the same on the feature map's patch tokens: compares layouts, not only content"))
    for key, what in (("tokens", "quantized tokens"), ("slots", "encoder outputs before quantization")):
        p = (tok.get("linear_probe") or {}).get(key)
        if isinstance(p, dict) and "top1" in p:
            chance = 1 / p["num_classes"] if p.get("num_classes") else None
            rows.append(Row(f"linear probe top-1, {what}", [_pct(p["top1"])],
                            f"class accuracy of a linear classifier on the mean-pooled {what} ({p.get('num_train')} "
                            f"train / {p.get('num_test')} test images; chance {_pct(chance)})"))
    note = (f"{n} test images at the tokenizer's 32 px. FDs use {_EXTRACTOR} features (the bundled VFM at 84 px), "
            "not Inception: they are not FID and compare only with each other. With a few hundred images an FD "
            "is biased upward and moves by several percent between image sets; compare numbers measured on the "
            "same images, such as the blur yardsticks.")
    return Table("Tokenizer: reconstructions of held-out images", ["value"], rows, note)


def samples_table(reports: dict[str, dict[str, Any]], scales: dict[str, float]) -> Table | None:
    """Sample metrics of ``eval/samples-*.json``, one column per sample set."""
    results = {name: (rep.get("results") or [{}])[0] for name, rep in reports.items()}
    results = {k: v for k, v in results.items() if v}
    if not results:
        return None
    names = list(results)
    cols = [("no CFG" if scales.get(n, 1.0) == 1.0 else f"CFG {scales[n]:g}") for n in names]
    fd_key = next((k for k in results[names[0]] if k.startswith("FD_") and not k.endswith("_bootstrap")), None)

    def fd_cell(res: dict[str, Any]) -> str:
        boot = res.get(f"{fd_key}_bootstrap")
        cell = _num(res.get(fd_key), 4)
        return f"{cell} ± {boot['std']:.2g}" if isinstance(boot, dict) else cell

    rows = []
    if fd_key:
        rows.append(Row("FD, samples vs test images", [fd_cell(results[n]) for n in names],
                        "how far the samples' feature distribution is from real images', lower is better; ± is the "
                        "standard deviation over bootstrap resamples of the samples (their noise from the sample "
                        "count alone)"))
    sfd = next((k for k in results[names[0]] if k.startswith("sFD_")), None)
    if sfd:
        rows.append(Row("spatial FD", [_num(results[n].get(sfd), 4) for n in names],
                        "the same on patch-token features (layout as well as content)"))
    if all("precision" in results[n] for n in names):
        rows.append(Row("precision", [_pct(results[n]["precision"]) for n in names],
                        "share of samples that fall inside the real images' feature manifold (fidelity), higher is "
                        "better"))
        rows.append(Row("recall", [_pct(results[n]["recall"]) for n in names],
                        "share of real images whose neighbourhood some sample reaches (diversity), higher is better"))
    first = results[names[0]]
    note = (f"{first.get('num_samples')} class-balanced samples per column against {first.get('num_reference')} test "
            f"images, {_EXTRACTOR} features (not Inception FID).")
    return Table("Generator: class-conditional samples", cols, rows, note)


def cfg_sentence(reports: dict[str, dict[str, Any]], scales: dict[str, float]) -> str:
    """Honest sentences comparing the sample sets: FD (with its bootstrap spread), then precision and recall."""
    res = {name: (rep.get("results") or [{}])[0] for name, rep in reports.items()}
    fds = {}
    for name, r in res.items():
        key = next((k for k in r if k.startswith("FD_") and not k.endswith("_bootstrap")), None)
        if key is not None and isinstance(r.get(key), (int, float)):
            boot = r.get(f"{key}_bootstrap")
            fds[name] = (r[key], boot["std"] if isinstance(boot, dict) else None)
    free = [n for n in fds if scales.get(n, 1.0) == 1.0]
    guided = [n for n in fds if scales.get(n, 1.0) != 1.0]
    if not free or not guided:
        return ""
    (f, fs), (g, gs), scale = fds[free[0]], fds[guided[0]], scales[guided[0]]
    spread = math.hypot(fs or 0.0, gs or 0.0)
    if not spread:
        verdict = (f"{'CFG ' + format(scale, 'g') if g < f else 'sampling without guidance'} gives the lower FD "
                   f"({min(f, g):.4g} vs {max(f, g):.4g}; no bootstrap spread was measured to say whether that is "
                   "more than noise)")
    elif abs(f - g) < 2 * spread:
        verdict = (f"CFG {scale:g} and no guidance score alike (FD {g:.4g} vs {f:.4g}, within twice their combined "
                   f"bootstrap spread of {spread:.2g})")
    elif g < f:
        verdict = (f"CFG {scale:g} scores clearly better than sampling without guidance (FD {g:.4g} vs {f:.4g}, "
                   f"more than twice their combined bootstrap spread of {spread:.2g})")
    else:
        verdict = (f"sampling without guidance scores clearly better than CFG {scale:g} (FD {f:.4g} vs {g:.4g}, "
                   f"more than twice their combined bootstrap spread of {spread:.2g})")
    text = f"In this demo {verdict}."
    rf, rg = res[free[0]], res[guided[0]]
    if all(k in r for r in (rf, rg) for k in ("precision", "recall")):
        text += (f" Guidance moves precision (fidelity) from {_pct(rf['precision'])} to {_pct(rg['precision'])} and "
                 f"recall (diversity) from {_pct(rf['recall'])} to {_pct(rg['recall'])}: the samples look cleaner "
                 "and more alike.")
    return text + (" The paper's claim that VFMTok samples well without CFG concerns its ImageNet-scale GPTs, not "
                   "this tiny GPT trained for minutes.")


_STAGE_ORDER = ("data", "tokenizer", "codes", "gpt", "samples", "evaluate", "regions", "report")


def _stage_rows(stages: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    names = [k for k in _STAGE_ORDER if k in stages] + sorted(k for k in stages if k not in _STAGE_ORDER)
    rows = [(k, _num(stages[k].get("seconds"), 4), _num(stages[k].get("cpu_seconds"), 4)) for k in names
            if isinstance(stages[k], dict) and "seconds" in stages[k]]
    total = sum(v.get("seconds", 0) for v in stages.values() if isinstance(v, dict))
    return rows + [("total", _num(total, 4), "")]


# ---------------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------------
_REGIONS_TEXT = (
    "Each token of the encoder's last layer reads the frozen VFM's feature maps at a few learned places. For a few "
    "tokens (one panel each) the white star is the token's anchor, and every marker is one sampling point: colour "
    "and shape give the VFM level it reads, its area the attention weight. Points in the grey margin lie outside the "
    "image and read zeros; the captions count them."
)


def _sections(out: Path) -> tuple[str, list[tuple[str, Path]], list[Table], str, list[tuple[str, Path, str]], Any]:
    stages = {p.stem: _load(p) for p in sorted((out / "stages").glob("*.json"))}
    data, tok, gpt = stages.get("data", {}), stages.get("tokenizer", {}), stages.get("gpt", {})
    names = class_names(Path(data["train"])) if data.get("train") else []
    runs = stages.get("samples", {}).get("runs", {})
    scales = {name: float(s.get("cfg_scale", 1.0)) for name, s in runs.items()}
    reports = {name: _load(out / "eval" / f"samples-{name}.json") for name in runs}
    samples: list[tuple[str, Path]] = []
    for name, s in runs.items():
        npz = Path(s["dir"]) / "samples.npz"
        if npz.exists():
            samples.append((name, sample_grid(out, name, npz, names, s.get("grid_per_class", 8), scales[name])))
    tables = [t for t in (samples_table(reports, scales), tokenizer_table(_load(out / "eval" / "tokenizer.json")))
              if t is not None]
    pictures: list[tuple[str, Path, str]] = []
    if tok and data:
        pictures.append(("Reconstructions", reconstruction_grid(out, Path(tok["model"]), Path(data["test"])),
                         "First test image of each class (top) and the tokenizer's reconstruction from its "
                         f"{_num(_load(Path(tok['model']) / 'config.json').get('anchor_grid', 0) ** 2, 3)} "
                         "codes (bottom)."))
    for i, p in enumerate(stages.get("regions", {}).get("pictures", [])):
        pictures.append((f"Where tokens look ({i + 1})", Path(p), _REGIONS_TEXT if i == 0 else ""))
    pictures.append(("Training losses", loss_curves(out), "Logged training (and validation) losses, log scale."))
    summary = (f"Data: {data.get('source', '?')} ({', '.join(names) if names else 'classes unknown'}). "
               f"Tokenizer: {tok.get('steps', '?')} training steps; GPT: {gpt.get('steps', '?')} steps.")
    return summary, samples, tables, cfg_sentence(reports, scales), pictures, stages


def write_report(out: Path) -> Path:
    """Write ``<out>/report.md`` and ``<out>/report.html``; returns the HTML path."""
    summary, samples, tables, cfg_text, pictures, stages = _sections(out)
    rel = lambda p: str(Path(p).resolve().relative_to(out.resolve()))  # noqa: E731
    timing = _stage_rows(stages)

    md = ["# vfmtok demo report", "", summary, "", "## Samples", ""]
    md += [f"![samples {name}]({rel(p)})\n" for name, p in samples]
    md += [cfg_text, ""] if cfg_text else []
    md += ["## Metrics", ""]
    for t in tables:
        md += [f"### {t.title}", "", "| metric | " + " | ".join(t.columns) + " | what it means |",
               "|---|" + "---|" * len(t.columns) + "---|"]
        md += [f"| {r.metric} | " + " | ".join(r.values) + f" | {r.meaning} |" for r in t.rows]
        md += ["", t.note, ""]
    for title, p, text in pictures:
        md += [f"## {title}", "", f"![{title}]({rel(p)})", ""] + ([text, ""] if text else [])
    md += ["## Stage times", "", "| stage | wall s | CPU s |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in timing]
    (out / "report.md").write_text("\n".join(md) + "\n")

    e = html.escape
    body = ["<h1>vfmtok demo report</h1>", f"<p>{e(summary)}</p>", "<h2>Samples</h2><div class='row'>"]
    body += [f"<figure><img src='{e(rel(p))}' alt='samples {e(name)}'></figure>" for name, p in samples]
    body += ["</div>"] + ([f"<p class='note'>{e(cfg_text)}</p>"] if cfg_text else [])
    body += ["<h2>Metrics</h2>"]
    for t in tables:
        body += [f"<h3>{e(t.title)}</h3><table><tr><th>metric</th>" + "".join(f"<th>{e(c)}</th>" for c in t.columns)
                 + "<th>what it means</th></tr>"]
        body += ["<tr><td>" + e(r.metric) + "</td>" + "".join(f"<td class='v'>{e(v)}</td>" for v in r.values)
                 + f"<td class='m'>{e(r.meaning)}</td></tr>" for r in t.rows]
        body += [f"</table><p class='note'>{e(t.note)}</p>"]
    for title, p, text in pictures:
        body += [f"<h2>{e(title)}</h2><figure><img src='{e(rel(p))}' alt='{e(title)}'>"
                 + (f"<figcaption>{e(text)}</figcaption>" if text else "") + "</figure>"]
    body += ["<h2>Stage times</h2><table><tr><th>stage</th><th>wall s</th><th>CPU s</th></tr>"]
    body += [f"<tr><td>{e(a)}</td><td class='v'>{e(b)}</td><td class='v'>{e(c)}</td></tr>" for a, b, c in timing]
    body += ["</table>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "vertical-align:top;text-align:left}td.v{white-space:nowrap;text-align:right}td.m{color:#444;"
             "font-size:90%}img{max-width:100%;height:auto}figure{margin:1em 0}.row{display:flex;flex-wrap:wrap;"
             "gap:1em}.row figure{flex:1 1 420px;margin:0}.note{color:#333;font-size:92%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vfmtok demo</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page)
    return path
