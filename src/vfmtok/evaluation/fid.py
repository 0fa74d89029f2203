"""Fréchet distance between Gaussian fits of two feature sets, streaming statistics and the reference ``.npz`` file.

``FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Dowson & Landau 1982; Heusel et al. 2017). With Inception
pool_3 features this is FID; with any other extractor vfmtok calls it ``FD_<extractor>`` (never "FID").

Statistics are accumulated batch by batch (float64 sums of shifted features and of their outer products), so no
feature set is ever held in memory. The reference file keeps ADM's key names (``mu``, ``sigma`` for pooled features,
``mu_s``, ``sigma_s`` for spatial ones) plus ``n``, ``extractor`` and, optionally, the pooled reference features
``feats`` needed by precision/recall.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

EXTERNAL_EXTRACTOR = "external"


class FeatureStats:
    """Running mean and covariance of (N, D) feature batches, accumulated in float64.

    Sums are taken of ``x - shift`` where ``shift`` is the first batch's mean, which avoids the cancellation of the
    naive ``E[xx^T] - mu mu^T`` when the mean is large compared with the spread. The sums stay on the device of the
    first batch (GPU-friendly); results are returned as float64 numpy arrays.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: Tensor | None = None
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self._shift is None else int(self._shift.numel())

    def update(self, feats: Tensor | np.ndarray) -> None:
        """Add a batch ``feats`` (N, D) of any float dtype."""
        x = torch.as_tensor(feats).detach()
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64)
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self._shift.numel():
            raise ValueError(f"feature width changed from {self._shift.numel()} to {x.shape[1]}")
        xc = x.to(self._shift.device) - self._shift  # (N, D)
        self._sum += xc.sum(0)
        self._outer += xc.T @ xc
        self.n += x.shape[0]

    def merge(self, other: FeatureStats) -> None:
        """Add the samples summarised by ``other`` (e.g. from another process)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self._shift = other.n, other._shift.clone()  # type: ignore[union-attr]
            self._sum, self._outer = other._sum.clone(), other._outer.clone()  # type: ignore[union-attr]
            return
        d = (other._shift - self._shift).to(self._shift.device)  # type: ignore[operator]
        s_o, o_o = other._sum.to(d.device), other._outer.to(d.device)  # type: ignore[union-attr]
        # re-centre other's sums on our shift: sum(x - a) = sum(x - b) + n (b - a)
        self._outer += o_o + torch.outer(s_o, d) + torch.outer(d, s_o) + other.n * torch.outer(d, d)
        self._sum += s_o + other.n * d
        self.n += other.n

    def mean(self) -> np.ndarray:
        """(D,) float64 sample mean."""
        if self.n == 0:
            raise ValueError("no features accumulated")
        return (self._shift + self._sum / self.n).cpu().numpy()  # type: ignore[operator]

    def covariance(self) -> np.ndarray:
        """(D, D) float64 unbiased sample covariance (divides by n - 1, as numpy.cov)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.n}")
        m = self._sum / self.n  # type: ignore[operator]
        cov = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)  # type: ignore[operator]
        cov = 0.5 * (cov + cov.T)
        return cov.cpu().numpy()

    def gaussian(self) -> GaussianStats:
        return GaussianStats(mu=self.mean(), sigma=self.covariance(), n=self.n)


@dataclass(frozen=True)
class GaussianStats:
    """``mu`` (D,) and ``sigma`` (D, D) float64 of ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # Tr sqrt(S1 S2) = sum of sqrt(eigenvalues of S1 S2). With the pivoted Cholesky factorisation P^T S1 P = L L^T
    # (LAPACK dpstrf; L is D x r for a rank-r S1), S1 S2 has the same non-zero eigenvalues as the symmetric PSD r x r
    # matrix L^T (P^T S2 P) L, so a symmetric eigenvalue routine gives them, real and without the rounding-noise
    # eigenvalues a full-size decomposition of a singular S1 would add. Measured: 2e-9 relative to the exact value
    # on a rank-4 2048-d example, 1e-14 relative to scipy sqrtm on a full-rank one, and several times faster.
    from scipy.linalg import lapack

    c, piv, rank, info = lapack.dpstrf(np.ascontiguousarray(sigma1), lower=1)
    if info < 0:
        raise ValueError(f"FD: pivoted Cholesky failed (LAPACK info {info})")
    perm = piv - 1  # 1-based pivots
    chol = torch.from_numpy(np.tril(c)[:, :rank])  # (D, r)
    s2p = torch.from_numpy(np.ascontiguousarray(sigma2[np.ix_(perm, perm)]))
    m = chol.T @ s2p @ chol  # (r, r)
    ev = torch.linalg.eigvalsh(0.5 * (m + m.T))  # torch's LAPACK call is faster than numpy's here
    return float(ev.clamp_min(0.0).sqrt().sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # singular product (e.g. fewer samples than dimensions): regularise both and retry, as pytorch-fid does
        log.warning("FD: sqrtm of a singular product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag)) if covmean.size else 0.0
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FD: matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh", eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) symmetric PSD covariances.
        method: ``"eigh"`` (default) computes ``Tr (S1 S2)^(1/2)`` from the symmetric eigenvalues of
            ``L^T S2 L`` with ``S1 = L L^T`` a pivoted Cholesky factorisation: always real, exact for singular
            covariances (fewer samples than dimensions) and several times faster than ``sqrtm`` at 2048-d; ``"sqrtm"`` uses ``scipy.linalg.sqrtm`` of the non-symmetric product
            like pytorch-fid and the ADM evaluator, retrying with ``eps`` added to both diagonals when the result is
            not finite. Both agree to ~1e-8 relative on well-conditioned inputs (see tests).
    Returns: the distance (>= 0 up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FD: shape mismatch mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"FD method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fd_between(a: GaussianStats, b: GaussianStats, method: str = "eigh") -> float:
    """:func:`frechet_distance` of two :class:`GaussianStats`."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)


def metric_name(extractor: str, spatial: bool = False) -> str:
    """Report name of an FD: ``FID`` / ``sFID`` only for the Inception FID network, else ``FD_<extractor>``."""
    from .inception import INCEPTION_EXTRACTOR_NAME

    if extractor == INCEPTION_EXTRACTOR_NAME:
        return "sFID" if spatial else "FID"
    return f"sFD_{extractor}" if spatial else f"FD_{extractor}"


@dataclass
class ReferenceStats:
    """Reference statistics of one extractor, as saved to / loaded from ``.npz``.

    ``pool`` / ``spatial`` are the Gaussian fits; ``feats`` (N, D) float32 pooled features (optional) serve
    precision/recall; ``meta`` records how the reference images were prepared (free-form strings).
    """

    extractor: str
    pool: GaussianStats
    spatial: GaussianStats | None = None
    feats: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "extractor": np.array(self.extractor),
            "mu": self.pool.mu,
            "sigma": self.pool.sigma,
            "n": np.array(self.pool.n),
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.spatial is not None:
            arrays.update(mu_s=self.spatial.mu, sigma_s=self.spatial.sigma, n_s=np.array(self.spatial.n))
        if self.feats is not None:
            arrays["feats"] = np.asarray(self.feats, np.float32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        """Read a vfmtok stats file, or a foreign one holding ``mu`` / ``sigma`` (ADM reference batch, pytorch-fid
        ``--save-stats``); foreign statistics get extractor ``"external"`` and are only used where the caller
        explicitly accepts them."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference statistics not found: {path}")
        with _load_npz(path) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(f"{path}: not a statistics file (no 'mu' / 'sigma' arrays; keys: {sorted(z.files)})")
            n = int(z["n"]) if "n" in z else -1
            pool = GaussianStats(np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64), n)
            spatial = None
            if "mu_s" in z and "sigma_s" in z:
                n_s = int(z["n_s"]) if "n_s" in z else -1
                spatial = GaussianStats(np.asarray(z["mu_s"], np.float64), np.asarray(z["sigma_s"], np.float64), n_s)
            extractor = str(z["extractor"]) if "extractor" in z else EXTERNAL_EXTRACTOR
            meta = json.loads(str(z["meta"])) if "meta" in z else {"source": str(path)}
            feats = np.asarray(z["feats"], np.float32) if "feats" in z else None
        return cls(extractor=extractor, pool=pool, spatial=spatial, feats=feats, meta=meta)


def _load_npz(path: Path) -> Any:
    """``np.load`` of an ``.npz`` (no pickles); a truncated or corrupt file raises ``UnreadableDataError`` naming it."""
    from ..data.datasets import UnreadableDataError

    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise UnreadableDataError(f"{path}: truncated or corrupt .npz file ({type(e).__name__}: {e})") from None


def is_stats_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ``.npz`` holding ``mu`` and ``sigma`` and no images. (ADM reference batches hold
    both; their images are used, so that precision/recall and a same-network FD are possible.)"""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with _load_npz(path) as z:
        files = set(z.files)
    return {"mu", "sigma"} <= files and not files & {"arr_0", "images"}
