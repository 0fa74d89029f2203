"""vfmtok: VFMTok tokenizers (arXiv 2507.08441) and LlamaGen-style AR generation.

Public entry points are re-exported lazily, so ``import vfmtok`` (and the ``vfmtok`` CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:
    __version__ = importlib.metadata.version("vfmtok")
except importlib.metadata.PackageNotFoundError:  # running from a source tree (PYTHONPATH=src) without installing
    __version__ = "0.1.0+source"

# public name -> defining module
_EXPORTS = {
    "VFMTokenizer": "vfmtok.tokenizer.model",
    "TokenizerConfig": "vfmtok.tokenizer.model",
    "GPT": "vfmtok.generator.gpt",
    "GPTConfig": "vfmtok.generator.gpt",
    "sample": "vfmtok.generator.sampling",
    "balanced_labels": "vfmtok.generator.sampling",
    "build_backbone": "vfmtok.backbones.factory",
    "frechet_distance": "vfmtok.evaluation.fid",
    "linear_probe": "vfmtok.evaluation.linear_probe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vfmtok' has no attribute {name!r}")
