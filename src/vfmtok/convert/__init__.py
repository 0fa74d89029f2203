"""Official checkpoints -> vfmtok state dicts (pure dict -> dict functions with explicit key tables)."""

from .official_vfmtok import (
    config_from_official_json,
    convert_official_tokenizer,
    load_official_checkpoint,
)

__all__ = ["config_from_official_json", "convert_official_tokenizer", "load_official_checkpoint"]
