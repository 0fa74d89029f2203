"""Generated-sample evaluation against a reference: FD (FID with Inception), spatial FD, IS, precision / recall.

The reference is either a set of images (``.npz`` or folder; its features are computed with the same extractor and
kept for precision/recall) or a statistics file written by :meth:`ReferenceStats.save` (precision/recall then needs
the file's ``feats``). Statistics files without an ``extractor`` entry (ADM reference batches' ``mu``/``sigma``,
pytorch-fid ``--save-stats``) count as Inception statistics of an external implementation and are only accepted for
the Inception extractor, with a warning in the report.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .features import FeatureExtractor, FeatureSummary
from .fid import EXTERNAL_EXTRACTOR, GaussianStats, ReferenceStats, fd_between, frechet_distance, metric_name
from .inception import INCEPTION_EXTRACTOR_NAME
from .inception_score import inception_score
from .precision_recall import precision_recall

log = logging.getLogger(__name__)

def reference_from_summary(summary: FeatureSummary, meta: dict[str, str] | None = None) -> ReferenceStats:
    return ReferenceStats(
        extractor=summary.extractor, pool=summary.pool, spatial=summary.spatial, feats=summary.feats, meta=meta or {}
    )


def check_reference(reference: ReferenceStats, extractor: FeatureExtractor) -> list[str]:
    """Raise if ``reference`` was computed with another extractor; return warnings for external statistics."""
    if reference.extractor == extractor.name:
        return []
    if reference.extractor == EXTERNAL_EXTRACTOR and extractor.name == INCEPTION_EXTRACTOR_NAME:
        return [
            "reference statistics come from an external Inception implementation (no 'extractor' entry, e.g. an ADM "
            "reference batch): FID mixes two implementations and can differ slightly from a same-network FID"
        ]
    raise ValueError(
        f"reference statistics were computed with {reference.extractor!r}, samples with {extractor.name!r}: "
        "an FD across two feature extractors is meaningless"
    )


def fd_bootstrap(feats: np.ndarray, reference: GaussianStats, resamples: int, seed: int = 0,
                 method: str = "eigh") -> dict[str, float]:
    """Spread of the FD over bootstrap resamples of the samples (the reference statistics held fixed).

    Args:
        feats: (N, D) pooled features of every sample.
        reference: the reference Gaussian.
        resamples: number of resamples of N rows drawn with replacement.

    Returns:
        ``{"mean", "std", "p5", "p95", "resamples"}`` of the resampled FDs. It measures the noise that comes from
        having only N samples; a resample repeats rows, so its FD is biased up a little against the full set's.
    """
    if resamples < 2:
        raise ValueError(f"fd_bootstrap: need at least 2 resamples, got {resamples}")
    feats = np.asarray(feats, np.float64)
    rng = np.random.default_rng(seed)
    fds = []
    for _ in range(resamples):
        x = feats[rng.integers(0, feats.shape[0], feats.shape[0])]
        fds.append(frechet_distance(x.mean(0), np.cov(x, rowvar=False), reference.mu, reference.sigma, method))
    fds = np.asarray(fds)
    return {"mean": float(fds.mean()), "std": float(fds.std(ddof=1)), "p5": float(np.percentile(fds, 5)),
            "p95": float(np.percentile(fds, 95)), "resamples": resamples}


def evaluate_samples(
    samples: FeatureSummary, reference: ReferenceStats, extractor: FeatureExtractor, fd_method: str = "eigh",
    num_splits: int = 10, bootstrap: int = 0,
) -> dict[str, Any]:
    """Metrics of sample features against a reference of the same extractor; a JSON-able dict.

    ``bootstrap`` > 0 adds ``<FD name>_bootstrap`` (see :func:`fd_bootstrap`); it needs the features of every sample
    in ``samples.feats``.
    """
    warnings = check_reference(reference, extractor)
    name = extractor.name
    out: dict[str, Any] = {
        "extractor": name,
        "num_samples": samples.pool.n,
        "num_reference": reference.pool.n,
        metric_name(name): fd_between(samples.pool, reference.pool, fd_method),
    }
    if bootstrap:
        if samples.feats is None or samples.feats.shape[0] != samples.pool.n:
            warnings.append("FD bootstrap skipped: the features of every sample were not kept")
        else:
            out[f"{metric_name(name)}_bootstrap"] = fd_bootstrap(samples.feats, reference.pool, bootstrap,
                                                                  method=fd_method)
    if samples.spatial is not None and reference.spatial is not None:
        if samples.spatial.mu.shape == reference.spatial.mu.shape:
            out[metric_name(name, spatial=True)] = fd_between(samples.spatial, reference.spatial, fd_method)
        else:
            warnings.append(f"spatial features differ in width ({samples.spatial.mu.shape[0]} vs "
                            f"{reference.spatial.mu.shape[0]}); spatial FD skipped")
    if samples.logits is not None:
        out["inception_score"] = inception_score(samples.logits, num_splits=num_splits)._asdict()
    elif extractor.logits_note:
        warnings.append(f"Inception Score skipped: {extractor.logits_note}")
    if samples.feats is not None and reference.feats is not None:
        pr = precision_recall(reference.feats, samples.feats, k=3)
        out.update(precision=pr.precision, recall=pr.recall, num_pr_samples=int(samples.feats.shape[0]),
                   num_pr_reference=int(reference.feats.shape[0]))
    else:
        warnings.append("precision/recall skipped: the reference has no stored features")
    out["warnings"] = warnings
    return out


def format_samples_report(report: dict[str, Any]) -> str:
    """Markdown summary of an ``eval-samples`` report."""
    lines = ["# Sample evaluation", "", f"- samples: {report.get('samples')}",
             f"- reference: {report.get('reference')}"]
    for res in report["results"]:
        lines += ["", f"## {res['extractor']}", "", "| metric | value |", "|---|---|"]
        for k, v in res.items():
            if k in ("extractor", "warnings"):
                continue
            if isinstance(v, dict) and "resamples" in v:
                v = f"{v['mean']:.3f} +- {v['std']:.3f} ({v['resamples']} bootstrap resamples)"
            elif isinstance(v, dict):
                v = f"{v['mean']:.3f} +- {v['std']:.3f} ({v['splits']} splits)"
            elif isinstance(v, float):
                v = f"{v:.4f}"
            lines.append(f"| {k} | {v} |")
        lines += [f"- warning: {w}" for w in res.get("warnings", [])]
    return "\n".join(lines) + "\n"
