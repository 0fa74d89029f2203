"""vfmtok: VFMTok tokenizers (arXiv 2507.08441) and LlamaGen-style AR generation.

Public entry points are re-exported lazily, so ``import vfmtok`` (and the ``vfmtok`` CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module
_EXPORTS = {
    "VFMTokenizer": "vfmtok.tokenizer.model",
    "TokenizerConfig": "vfmtok.tokenizer.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vfmtok' has no attribute {name!r}")
