"""Evaluation: distribution metrics (FD / FID, sFID, IS, precision-recall), reconstruction metrics, codebook usage
and linear probing. See docs/evaluation.md for exactly how each number is computed."""

from .codebook import CodebookReport, CodebookUsage
from .features import FeatureCollector, FeatureExtractor, Features, VFMExtractor, build_extractor
from .fid import FeatureStats, GaussianStats, ReferenceStats, frechet_distance, metric_name
from .inception import FIDWeightsNotFoundError, InceptionExtractor, load_fid_inception
from .inception_score import InceptionScore, inception_score
from .linear_probe import LinearProbeResult, linear_probe, tokenizer_probe_features
from .precision_recall import PrecisionRecall, precision_recall
from .reconstruction import psnr, ssim

__all__ = [
    "CodebookReport", "CodebookUsage", "FIDWeightsNotFoundError", "FeatureCollector", "FeatureExtractor",
    "FeatureStats", "Features", "GaussianStats", "InceptionExtractor", "InceptionScore", "LinearProbeResult",
    "PrecisionRecall", "ReferenceStats", "VFMExtractor", "build_extractor", "frechet_distance", "inception_score",
    "linear_probe", "load_fid_inception", "metric_name", "precision_recall", "psnr", "ssim",
    "tokenizer_probe_features",
]
