"""Reconstruction evaluation of a tokenizer over an image set, one batch at a time.

Per batch: the ADM-centre-cropped originals ``x`` (at the tokenizer's image size) are encoded, the codes counted,
decoded, and the reconstructions turned into uint8 with the official formula (``127.5 x + 128``, clamp, truncate).
Both originals and reconstructions are then resized with PIL (bicubic, antialiased - the official rFID path's
``Image.resize``) to ``eval_size`` (256 by default, as the official protocol; ``None`` keeps the native size), and
every metric is computed on those uint8 images:

* PSNR (per image, data range 1 on [0, 1]) and SSIM (Gaussian 11 / 1.5, data range 1), averaged over images;
  ``ssim_official_protocol`` repeats the official script's SSIM (7x7 uniform window, ``data_range=2.0``) so the
  published 0.67 can be compared like for like;
* LPIPS-VGG when a network is given;
* codebook usage and perplexity over all codes of the set;
* for every feature extractor: the FD between originals and reconstructions (rFID for Inception, ``FD_<name>``
  otherwise), the FD of 2x and 4x down-then-up-sampled originals against the originals (the scale every FD is read
  against), the spatial FD when the extractor has spatial features, and the Inception Score of originals and
  reconstructions when it has logits (when it withholds them, ``inception_score_note`` says why).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .codebook import CodebookUsage
from .features import FeatureCollector, FeatureExtractor
from .fid import fd_between, metric_name
from .images import EvalBatch
from .inception_score import inception_score
from .reconstruction import degrade_uint8, lpips_distance, psnr, resize_uint8, ssim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerEvalSettings:
    """``eval_size``: side the metrics are computed at (None: the tokenizer's size); ``resample``: PIL filter of that
    resize; ``ladder``: down-up factors whose FD gives the scale; ``fd_method``: see :func:`frechet_distance`."""

    eval_size: int | None = 256
    resample: str = "bicubic"
    ladder: tuple[int, ...] = (2, 4)
    fd_method: str = "eigh"


class _Distribution:
    """Collectors of one extractor: originals, reconstructions and each ladder step."""

    def __init__(self, extractor: FeatureExtractor, ladder: Sequence[int]) -> None:
        self.extractor = extractor
        self.real = FeatureCollector(extractor)
        self.recon = FeatureCollector(extractor)
        self.ladder = {f: FeatureCollector(extractor, keep_logits=False) for f in ladder}

    def update(self, real_u8: np.ndarray, recon_u8: np.ndarray, degraded: dict[int, np.ndarray]) -> None:
        self.real.update(real_u8)
        self.recon.update(recon_u8)
        for f, c in self.ladder.items():
            c.update(degraded[f])

    def report(self, method: str) -> dict[str, Any]:
        real, recon = self.real.summary(), self.recon.summary()
        name = self.extractor.name
        out: dict[str, Any] = {
            "metric": metric_name(name),
            "extractor": name,
            "reconstruction": fd_between(real.pool, recon.pool, method),
        }
        for f, c in self.ladder.items():
            out[f"down{f}_up"] = fd_between(real.pool, c.summary().pool, method)
        if real.spatial is not None and recon.spatial is not None:
            out["spatial"] = {"metric": metric_name(name, spatial=True),
                              "reconstruction": fd_between(real.spatial, recon.spatial, method)}
        if real.logits is not None and recon.logits is not None:
            out["inception_score"] = {
                "reconstruction": inception_score(recon.logits)._asdict(),
                "original": inception_score(real.logits)._asdict(),
            }
        elif self.extractor.logits_note:
            out["inception_score_note"] = self.extractor.logits_note
        return out


def _official_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> uint8 (B, H, W, 3): ``127.5 x + 128``, clamp, truncate (official)."""
    return (x.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: nn.Module,
    batches: Iterable[EvalBatch],
    extractors: Sequence[FeatureExtractor] = (),
    lpips: nn.Module | Mapping[str, nn.Module] | None = None,
    settings: TokenizerEvalSettings = TokenizerEvalSettings(),
    encode: Callable[[Tensor], Tensor] | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; returns a JSON-able dict of metrics.

    Args:
        tokenizer: a ``VFMTokenizer`` (needs ``encode``, ``decode`` and ``config.codebook_size``), in eval mode.
        batches: :class:`~vfmtok.evaluation.images.EvalBatch` items at the tokenizer's image size.
        extractors: feature extractors for the distribution metrics (may be empty).
        lpips: an LPIPS network taking two (B, 3, H, W) [-1, 1] tensors (reported as ``lpips_<its .net>``, default
            ``lpips_vgg``), a mapping ``{net name: network}`` (one ``lpips_<name>`` each), or None to skip LPIPS.
            ``lpips_vgg`` is always in the report (None when not measured).
        encode, decode: replacements of ``tokenizer.encode`` ((B, 3, H, W) in [-1, 1] -> (B, L) int64) and
            ``tokenizer.decode`` ((B, L) -> (B, 3, H, W) float), e.g. the bf16 settings of
            :func:`vfmtok.tokenizer.inference.fast_codec`; None: the tokenizer's own (float32, the official protocol).
    """
    encode = tokenizer.encode if encode is None else encode
    decode = tokenizer.decode if decode is None else decode
    device = next(tokenizer.parameters()).device
    usage = CodebookUsage(tokenizer.config.codebook_size)
    dists = [_Distribution(e, settings.ladder) for e in extractors]
    if lpips is None:
        lpips_nets: dict[str, nn.Module] = {}
    elif isinstance(lpips, Mapping):
        lpips_nets = dict(lpips)
    else:
        lpips_nets = {getattr(lpips, "net", "vgg"): lpips}
    sums = {"psnr": 0.0, "ssim": 0.0, "ssim_official_protocol": 0.0}
    sums.update({f"lpips_{name}": 0.0 for name in lpips_nets})
    n = infinite = 0
    for batch in batches:
        codes = encode(batch.x.to(device))  # (B, L) int64
        usage.update(codes)
        recon_u8 = _official_uint8(decode(codes).float())  # (B, S, S, 3)
        real_u8 = batch.u8
        if settings.eval_size is not None:
            real_u8 = resize_uint8(real_u8, settings.eval_size, settings.resample)
            recon_u8 = resize_uint8(recon_u8, settings.eval_size, settings.resample)
        p = psnr(recon_u8, real_u8)
        infinite += int(torch.isinf(p).sum())
        sums["psnr"] += float(p[torch.isfinite(p)].sum())
        sums["ssim"] += float(ssim(recon_u8, real_u8).sum())
        sums["ssim_official_protocol"] += float(ssim(recon_u8, real_u8, data_range=2.0, window="uniform").sum())
        for name, net in lpips_nets.items():
            sums[f"lpips_{name}"] += float(lpips_distance(net, recon_u8, real_u8).sum())
        if dists:
            degraded = {f: degrade_uint8(real_u8, f, settings.resample) for f in settings.ladder}
            for d in dists:
                d.update(real_u8, recon_u8, degraded)
        n += real_u8.shape[0]
        log.debug("evaluated %d images", n)
    if n == 0:
        raise ValueError("no images were evaluated")
    finite = n - infinite
    report: dict[str, Any] = {
        "num_images": n,
        "psnr": sums["psnr"] / finite if finite else math.inf,
        "psnr_identical_images": infinite,
        "ssim": sums["ssim"] / n,
        "ssim_official_protocol": sums["ssim_official_protocol"] / n,
        "lpips_vgg": None,
        **{f"lpips_{name}": sums[f"lpips_{name}"] / n for name in lpips_nets},
        "codebook": usage.report()._asdict(),
        "distribution": {},
    }
    for d in dists:
        if n < 2:
            log.warning("FD needs at least 2 images; skipping %s", d.extractor.name)
            continue
        report["distribution"][d.extractor.name] = d.report(settings.fd_method)
    return report


_LPIPS_LABELS = {"vgg": "VGG", "alex": "AlexNet"}


def format_tokenizer_report(report: dict[str, Any]) -> str:
    """Markdown summary of :func:`evaluate_tokenizer`'s report (plus its ``protocol`` / ``tokenizer`` entries)."""
    m = report["metrics"]
    lines = ["# Tokenizer evaluation", ""]
    for key in ("tokenizer", "data"):
        if key in report:
            lines.append(f"- **{key}**: " + ", ".join(f"{k}={v}" for k, v in report[key].items()))
    lines += ["", "| metric | value |", "|---|---|"]
    lines.append(f"| images | {m['num_images']} |")
    lines.append(f"| PSNR (dB) | {m['psnr']:.3f} |")
    lines.append(f"| SSIM (Gaussian 11/1.5, data range 1) | {m['ssim']:.4f} |")
    lines.append(f"| SSIM, official protocol (7x7 uniform, data_range=2) | {m['ssim_official_protocol']:.4f} |")
    for key, value in m.items():
        if key.startswith("lpips_") and isinstance(value, (int, float)):
            lines.append(f"| LPIPS-{_LPIPS_LABELS.get(key[6:], key[6:])} | {value:.4f} |")
    cb = m["codebook"]
    lines.append(f"| codebook usage | {100 * cb['usage']:.1f}% ({cb['used']} of {cb['size']} codes) |")
    lines.append(f"| codebook perplexity | {cb['perplexity']:.1f} |")
    for d in m["distribution"].values():
        scale = ", ".join(f"{k.replace('_', '-')}: {v:.4f}" for k, v in d.items() if k.startswith("down"))
        lines.append(f"| r{d['metric']} | {d['reconstruction']:.4f} (scale: {scale}) |")
        if "spatial" in d:
            lines.append(f"| r{d['spatial']['metric']} | {d['spatial']['reconstruction']:.4f} |")
        if "inception_score" in d:
            s = d["inception_score"]
            label = "rIS" if d["metric"] == "FID" else f"rIS_{d['extractor']}"
            lines.append(f"| {label} (originals) | {s['reconstruction']['mean']:.3f} ({s['original']['mean']:.3f}) |")
        elif "inception_score_note" in d:
            lines.append(f"| rIS_{d['extractor']} | not computed: {d['inception_score_note']} |")
    if "protocol" in report:
        lines += ["", "## Protocol", ""] + [f"- {k}: {v}" for k, v in report["protocol"].items()]
    return "\n".join(lines) + "\n"
