"""Turn the results of ``run.sh`` (the unpacked ``results.tar.gz``: ``seed<s>/`` per seed) into
``docs/results/cifar10-compression.md`` and its figures (``docs/results/cifar10-compression/*.png``).

    python experiments/cifar10_compression/report.py RESULTS_DIR --out docs/results/cifar10-compression.md \\
        [--notes experiments/cifar10_compression/reading.md]

The loading, tables' cells, FD curves, convergence arithmetic and figure helpers are those of
``experiments/cifar10/report.py`` (imported); this script adds the fifth chain (c+), the seeds side by side, the
anchor-movement section (``chains/vfm/anchors/anchors.json`` of ``anchors.py``) and the verdicts on the paper's four
claims in this regime:

1. VFM tokens reconstruct and generate better than the CNN at equal tokens: (a) vs (d), rFD-EfficientNet and final
   no-CFG gFD-EfficientNet both lower;
2. region-adaptive sampling beats the grid at equal tokens: (a) vs (c), the same two numbers;
3. the AR model converges faster on (a) than on (d): steps the GPT on (d) needs for its final FD / steps the GPT on
   (a) needs for the same FD, at least ``SPEEDUP_HELD`` (EfficientNet features, no CFG);
4. CFG-free is as good as CFG: (a)'s final no-CFG FD within ``CFG_RATIO`` of its CFG FD (EfficientNet features).

Each claim is judged per seed: ``held`` when every seed holds it, ``not held`` when none does, ``mixed`` otherwise,
``not tested`` when a number is missing or the exported tokenizers' EMA still holds more than ``TOK_EMA_INIT_MAX`` of
their initialisation. Nothing is invented: missing chains, stages and seeds are reported as missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _c10_report():
    spec = importlib.util.spec_from_file_location("cifar10_report", HERE.parent / "cifar10" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


c10 = _c10_report()

CHAINS = {
    "vfm": "(a) VFMTok: 8 x 8 anchors, deformable sampling of 4 x 16 x 16 features, semantic rec.",
    "nosem": "(b) = (a) without semantic reconstruction",
    "grid": "(c) = (a) with grid quantization (16 x 16 pooled to 8 x 8)",
    "gridfull": "(c+) grid at 256 tokens (16 x 16, no compression: the upper reference)",
    "cnn": "(d) CNN encoder from scratch, 64 tokens (baseline)",
}
EFF = "efficientnet-lite0"
SPEEDUP_HELD = c10.SPEEDUP_HELD
CFG_RATIO = c10.CFG_RATIO
TOK_EMA_INIT_MAX = c10.TOK_EMA_INIT_MAX
CLAIMS = {
    1: "VFM tokens reconstruct and generate better than a CNN tokenizer at equal tokens ((a) vs (d))",
    2: "Region-adaptive sampling beats grid quantization at equal tokens ((a) vs (c))",
    3: f"The AR model converges faster on VFM tokens ((a) vs (d), speed-up ≥ {SPEEDUP_HELD:g})",
    4: f"CFG-free generation is as good as CFG ((a): no-CFG FD ≤ {CFG_RATIO:g} x CFG FD)",
}


def load_seeds(root: Path) -> dict[int, dict[str, Any]]:
    """seed -> cifar10 ``load_results`` of ``root/seed<s>`` (five chains) plus ``anchors`` (anchors.json or None)."""
    seeds = {}
    for d in sorted(root.glob("seed*")):
        if not d.is_dir() or not d.name[4:].isdigit():
            continue
        res = c10.load_results(d, CHAINS)
        anchors = d / "chains" / "vfm" / "anchors"
        res["anchors"] = c10._json(anchors / "anchors.json")
        res["anchor_dir"] = anchors
        seeds[int(d.name[4:])] = res
    return seeds


def extractors_of(seeds: dict[int, dict[str, Any]]) -> list[str]:
    names = []
    for res in seeds.values():
        for name in res["ref"].get("extractors", {}):
            if name not in names:
                names.append(name)
    return names


def final_fd(ch: dict[str, Any], extractor: str, cfg: float) -> float | None:
    return c10._final_fd(ch, extractor, cfg)


def _rfd(row: dict[str, Any] | None, extractor: str) -> float | None:
    return (row or {}).get("rfd", {}).get(extractor)


def _better(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a < b


def claim_verdicts(seeds: dict[int, dict[str, Any]]) -> dict[int, tuple[str, list[str]]]:
    """claim number -> (verdict, one detail line per seed)."""
    per: dict[int, list[tuple[bool | None, str]]] = {k: [] for k in CLAIMS}
    for s, res in seeds.items():
        chains = res["chains"]
        rows = {n: c10.tok_row(ch, [EFF]) for n, ch in chains.items()}
        gated = c10.ema_gate(chains)
        for num, other in ((1, "cnn"), (2, "grid")):
            r = _better(_rfd(rows["vfm"], EFF), _rfd(rows[other], EFF))
            g = _better(final_fd(chains["vfm"], EFF, 1.0), final_fd(chains[other], EFF, 1.0))
            ok = None if r is None or g is None or gated else (r and g)
            per[num].append((ok, f"seed {s}: rFD-EffNet {c10.fmt(_rfd(rows['vfm'], EFF))} vs "
                                 f"{c10.fmt(_rfd(rows[other], EFF))}, final gFD-EffNet (no CFG) "
                                 f"{c10.fmt(final_fd(chains['vfm'], EFF, 1.0))} vs "
                                 f"{c10.fmt(final_fd(chains[other], EFF, 1.0))}"))
        text, value = c10.speedup(c10.fd_curve(chains["cnn"], EFF, 1.0), c10.fd_curve(chains["vfm"], EFF, 1.0))
        per[3].append((None if value is None or gated else value >= SPEEDUP_HELD, f"seed {s}: speed-up {text}"))
        f1, f2 = final_fd(chains["vfm"], EFF, 1.0), None
        cfgs = sorted({e["cfg_scale"] for e in (chains["vfm"]["gpt_eval"] or {}).get("entries", [])} - {1.0})
        if cfgs:
            f2 = final_fd(chains["vfm"], EFF, cfgs[-1])
        ok = None if f1 is None or f2 is None or gated else f1 <= CFG_RATIO * f2
        cfg_text = f"CFG {cfgs[-1]:g} {c10.fmt(f2)}" if cfgs else "CFG not evaluated"
        per[4].append((ok, f"seed {s}: final FD-EffNet no CFG {c10.fmt(f1)} vs {cfg_text}"))
        if gated:
            for k in per:
                per[k][-1] = (None, per[k][-1][1] + f" ({gated})")
    out = {}
    for k, items in per.items():
        oks = [ok for ok, _ in items]
        if not oks or any(ok is None for ok in oks):
            verdict = "not tested"
        elif all(oks):
            verdict = "held"
        elif not any(oks):
            verdict = "not held"
        else:
            verdict = "mixed"
        out[k] = (verdict, [line for _, line in items])
    return out


def _tokenizer_table(res: dict[str, Any], extractors: list[str]) -> list[str]:
    head = ["tokenizer", "tokens", "trainable params", "PSNR", "SSIM", "LPIPS-VGG", "LPIPS-AlexNet"]
    head += [f"rFD {c10.extractor_label(e)}" for e in extractors] + ["usage", "probe top-1 (tokens)"]
    rows = []
    for name, ch in res["chains"].items():
        row = c10.tok_row(ch, extractors)
        if row is None:
            rows.append([c10.SHORT[name], "not run"] + ["–"] * (len(head) - 2))
            continue
        tokens = (ch["info"] or {}).get("num_tokens")
        rows.append([c10.SHORT[name], c10.fmt(tokens), c10.fmt(row["params"]), c10.fmt(row["psnr"]),
                     c10.fmt(row["ssim"], 3), c10.fmt(row["lpips"]["vgg"], 3), c10.fmt(row["lpips"]["alex"], 3)]
                    + [c10.fmt(row["rfd"][e]) for e in extractors]
                    + [c10._pct(row["usage"]), c10._pct(row["probe"])])
    return c10._table(head, rows)


def _fd_table(res: dict[str, Any], extractor: str) -> list[str]:
    cfgs = sorted({e["cfg_scale"] for ch in res["chains"].values() for e in (ch["gpt_eval"] or {}).get("entries", [])})
    steps = sorted({e["step"] for ch in res["chains"].values() for e in (ch["gpt_eval"] or {}).get("entries", [])})
    if not steps:
        return ["(no GPT evaluation in these results)"]
    head = ["GPT step"] + [c10.SHORT[n] + c10._mark(ch) for n, ch in res["chains"].items()]
    rows = []
    for step in steps:
        cells = [str(step)]
        for ch in res["chains"].values():
            vals = [dict(c10.fd_curve(ch, extractor, c)).get(step) for c in cfgs]
            cells.append(" / ".join(c10.fmt(v) for v in vals))
        rows.append(cells)
    return [f"FD {c10.extractor_label(extractor)} per checkpoint ({' / '.join(c10._cfg_label(c) for c in cfgs)}):",
            ""] + c10._table(head, rows)


def _anchor_section(seeds: dict[int, dict[str, Any]], figdir: Path, rel: str) -> list[str]:
    md = ["## Anchors: where (a) samples", ""]
    any_data = False
    for s, res in seeds.items():
        a = res["anchors"]
        if a is None:
            md += [f"Seed {s}: no anchor measurement (the (a) tokenizer did not finish, or anchors.py failed).", ""]
            continue
        any_data = True
        md += [f"**Seed {s}**: {a['num_images']} test images, {a['num_tokens']} tokens x {a['heads']} heads x "
               f"{a['levels']} levels x {a['points']} points per layer; distances in {a['unit']}. `moved`: trained "
               "sampling location minus the same point's initial location (Deformable-DETR init ring); `from "
               "anchor`: distance to the token's anchor, trained (initial in brackets); weighted: by attention "
               "weight.", ""]
        head = ["layer", "level", "moved mean", "moved median", "moved p90", "moved p99", "moved weighted",
                "from anchor mean (initial)", "from anchor weighted", "outside the map"]
        rows = []
        for layer in a["layers"]:
            for lv in layer["levels"]:
                m, t, i = lv["moved"], lv["trained_from_anchor"], lv["initial_from_anchor"]
                rows.append([str(layer["layer"]), f"{lv['level']} ({lv['shape'][0]} x {lv['shape'][1]})",
                             c10.fmt(m["mean"]), c10.fmt(m["median"]), c10.fmt(m["p90"]), c10.fmt(m["p99"]),
                             c10.fmt(m.get("weighted_mean")), f"{c10.fmt(t['mean'])} ({c10.fmt(i['mean'])})",
                             c10.fmt(t.get("weighted_mean")), c10._pct(lv["outside_share"])])
        md += c10._table(head, rows) + [""]
        for fig in ("anchors-tokens.png", "anchors-displacement.png"):
            src = res["anchor_dir"] / fig
            if src.is_file():
                dst = figdir / f"seed{s}-{fig}"
                shutil.copyfile(src, dst)
                md += [f"![{fig} seed {s}]({rel}/{dst.name})", ""]
    if not any_data:
        md += ["No seed has an anchor measurement yet.", ""]
    return md


def write_report(root: Path, out: Path, notes: Path | None = None) -> Path:
    seeds = load_seeds(root)
    if not seeds:
        raise FileNotFoundError(f"{root}: no seed<s>/ folders (the unpacked results.tar.gz of run.sh)")
    figdir = out.with_suffix("")
    figdir.mkdir(parents=True, exist_ok=True)
    rel = figdir.name
    extractors = extractors_of(seeds) or [EFF]
    first = next(iter(seeds.values()))
    md = ["# CIFAR-10 in the compression regime: 64 tokens from 16 x 16 DINOv2-S features (issue 15)", "",
          "Generated by `experiments/cifar10_compression/report.py` from the results of "
          "`experiments/cifar10_compression/run.sh` (commands, plan and caveats: "
          "`experiments/cifar10_compression/README.md`).", "",
          f"**Machine:** {c10._machine_line(first['machine'])}. **Seeds:** {', '.join(map(str, seeds))}.", "",
          "| chain | tokenizer |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in CHAINS.items()] + [""]
    verdicts = claim_verdicts(seeds)
    md += ["## Claims", ""]
    for k, (verdict, lines) in verdicts.items():
        md += [f"{k}. *{CLAIMS[k]}*: **{verdict}**"] + [f"   - {line}" for line in lines]
    md += [""]
    for s, res in seeds.items():
        md += [f"## Seed {s}", "", "### Tokenizers", ""] + _tokenizer_table(res, extractors) + [""]
        gate = c10.ema_gate(res["chains"])
        if gate:
            md += [f"**EMA gate:** {gate}", ""]
        md += ["### GPT", ""]
        for e in extractors:
            md += _fd_table(res, e) + [""]
            cfgs = sorted({x["cfg_scale"] for ch in res["chains"].values()
                           for x in (ch["gpt_eval"] or {}).get("entries", [])})
            num = next((ch["gpt_eval"].get("num_samples") for ch in res["chains"].values() if ch["gpt_eval"]), None)
            fig = c10.plot_fd(res, e, cfgs, num, figdir / f"seed{s}-fd-{e}.png")
            if fig is not None:
                md += [f"![FD {e} seed {s}]({rel}/{fig.name})", ""]
        marked = [(n, ch["gpt_eval_source"]) for n, ch in res["chains"].items()
                  if ch["gpt_eval_source"] in c10.SOURCE_NOTE]
        if marked:
            md += ["Marked chains: " + "; ".join(f"{c10.SOURCE_NOTE[src][0]} {c10.SHORT[n]}: sample FDs "
                                                 f"{c10.SOURCE_NOTE[src][1]}" for n, src in marked) + ".", ""]
        for other in ("cnn", "grid", "nosem"):
            text, _ = c10.speedup(c10.fd_curve(res["chains"][other], EFF, 1.0),
                                  c10.fd_curve(res["chains"]["vfm"], EFF, 1.0))
            md += [f"- convergence speed-up of (a) over {c10.SHORT[other]} (EfficientNet FD, no CFG): {text}"]
        md += [""]
        fig = c10.plot_recon(res, figdir / f"seed{s}-recon.png")
        if fig is not None:
            md += [f"![reconstructions seed {s}]({rel}/{fig.name})", ""]
    md += _anchor_section(seeds, figdir, rel)
    if notes is not None:
        md += [notes.read_text().rstrip(), ""]
    else:
        md += ["## Reading", "", "(no hand-written reading yet: pass `--notes FILE`)", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="the unpacked results.tar.gz of run.sh (seed<s>/ folders)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/cifar10-compression.md"))
    ap.add_argument("--notes", type=Path, default=None, help="hand-written reading (markdown) appended to the page")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.results, args.out, args.notes)
    except FileNotFoundError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print(json.dumps({k: v for k, (v, _) in claim_verdicts(load_seeds(args.results)).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
