"""Official LlamaGen / VFMTok c2i GPT checkpoints -> :class:`vfmtok.generator.GPT` state dicts.

The official ``autoregressive.models.gpt.Transformer`` and our GPT share module names, so the conversion is an
identity key map with strict checks (reference §5.3): every official key must be used or deliberately dropped, and
every shape must match the target config. Checkpoints are read with ``weights_only=True``; the ``args`` entry that
``train_c2i.py`` pickles (an ``argparse.Namespace``) is allow-listed, so no arbitrary code runs on load.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from ..generator.gpt import GPT, GPTConfig, find_multiple
from ..generator.presets import gpt_preset, preset_for_shape
from ..hub import ModelLoadError, check_state_dict, torch_load_weights

log = logging.getLogger(__name__)

# Order in which the entries of a training checkpoint are tried (test_net.py: ema, then module / state_dict).
CHECKPOINT_ENTRIES = ("ema", "model", "module", "state_dict")

# Wrapper prefixes some training set-ups add: torch.compile (``_orig_mod.``) and DDP/FSDP (``module.``).
STRIP_PREFIXES = ("_orig_mod.", "module.")

# Keys an official state dict may carry that are not weights, with the reason they are dropped.
DROPPED_KEYS: dict[str, str] = {
    r"^freqs_cis$": "RoPE table, recomputed from the config",
    r"^causal_mask$": "decoding mask built by setup_caches, rebuilt at sampling time",
    r"^layers\.\d+\.attention\.kv_cache\.[kv]_cache$": "KV-cache buffer registered by setup_caches",
}

# ModelArgs fields that have no counterpart in GPTConfig, with the value our GPT implements.
_FIXED_OFFICIAL_ARGS: dict[str, Any] = {"model_type": "c2i", "cls_token_num": 1}
_IGNORED_OFFICIAL_ARGS = ("caption_dim", "max_batch_size", "max_seq_len", "n_kv_head")


def load_official_gpt_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an official GPT checkpoint file safely.

    Returns:
        ``(state_dict, meta)``: the ``ema`` entry if present, else ``model``, ``module``, ``state_dict``, else the file
        itself when it is a raw state dict; ``meta`` holds ``entry`` (the key used, or ``None``) and ``args`` (the
        training ``argparse.Namespace`` as a dict, or ``{}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch_load_weights(path, "official GPT checkpoint", allowed_globals=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: expected a dict, got {type(obj).__name__}")
    args = obj.get("args")
    meta: dict[str, Any] = {"entry": None, "args": vars(args) if isinstance(args, argparse.Namespace) else {}}
    for entry in CHECKPOINT_ENTRIES:
        if isinstance(obj.get(entry), dict):
            meta["entry"] = entry
            if entry != "ema":
                log.warning("%s: no 'ema' entry, using %r (official sampling uses the EMA weights)", path, entry)
            return dict(obj[entry]), meta
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), meta
    raise ModelLoadError(f"{path}: no state dict found; top-level keys are {sorted(map(str, obj))}")


def strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``_orig_mod.`` / ``module.`` wrapper prefixes (repeatedly, in any order) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def gpt_config_from_official_json(data: dict[str, Any]) -> GPTConfig:
    """GPTConfig from LlamaGen ``ModelArgs`` values: the fixture's ``gpt_config.json`` (``{"model_args": ...}``)
    or a plain ModelArgs dict. Unsupported settings (t2i, several class tokens, grouped-query attention) raise."""
    args = dict(data.get("model_args", data))
    for key, value in _FIXED_OFFICIAL_ARGS.items():
        if key in args and args[key] != value:
            raise ConfigError(f"official GPT config: {key}={args[key]!r} is not supported (only {value!r})")
    n_kv = args.get("n_kv_head")
    if n_kv is not None and n_kv != args.get("n_head"):
        raise ConfigError(f"official GPT config: grouped-query attention (n_kv_head={n_kv}) is not supported")
    kwargs = {k: v for k, v in args.items() if k not in _FIXED_OFFICIAL_ARGS and k not in _IGNORED_OFFICIAL_ARGS}
    return GPTConfig.from_dict(kwargs, _where="official GPT config")


def config_from_training_args(args: dict[str, Any]) -> dict[str, Any]:
    """GPTConfig fields recoverable from a ``train_c2i.py`` args namespace (preset, dropouts, token grid)."""
    fields: dict[str, Any] = {}
    if isinstance(args.get("latent_size"), int):
        fields["block_size"] = args["latent_size"] ** 2
    if "dropout_p" in args:
        fields["resid_dropout_p"] = fields["ffn_dropout_p"] = float(args["dropout_p"])
    for key in ("token_dropout_p", "drop_path_rate", "class_dropout_prob"):
        if key in args:
            fields[key] = float(args[key])
    return fields


def infer_gpt_config(state_dict: dict[str, Tensor], **overrides: Any) -> GPTConfig:
    """Infer the GPTConfig of an official state dict from its shapes.

    Depth, width, vocabulary, class count and FFN width come from the tensors. The head count comes from the
    official preset with the same depth and width (otherwise head_dim 64 is assumed); the token grid is not stored
    in the weights and defaults to 256 (16 x 16). ``overrides`` win over everything inferred.
    """
    sd = strip_prefixes(state_dict)
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.feed_forward.w1.weight"):
        if key not in sd:
            raise ModelLoadError(f"not a LlamaGen c2i GPT state dict: missing {key!r}")
    vocab, dim = sd["tok_embeddings.weight"].shape
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
    rows = sd["cls_embedding.embedding_table.weight"].shape[0]
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    preset = preset_for_shape(n_layer, dim)
    if preset:
        base = gpt_preset(preset)
    else:
        # The head count is not stored in the weights; the official models all use head_dim 64 up to GPT-XXL.
        if "n_head" not in overrides:
            log.warning("no official preset has %d layers of width %d: assuming head_dim 64 (pass a config to be "
                        "sure)", n_layer, dim)
        base = GPTConfig(n_layer=n_layer, dim=dim, n_head=overrides.get("n_head", max(dim // 64, 1)))
    fields: dict[str, Any] = dict(vocab_size=vocab, n_layer=n_layer, dim=dim)
    if hidden != find_multiple(int(8 * dim / 3), base.multiple_of):
        fields["ffn_dim_multiplier"] = _multiplier_for_hidden(dim, hidden, base.multiple_of)
    fields.update(overrides)
    if "num_classes" not in fields:
        # LlamaGen allocates the null-class row only when label dropout is on.
        with_null = fields.get("class_dropout_prob", base.class_dropout_prob) > 0
        fields["num_classes"] = rows - int(with_null)
    config = base.replace(**fields)
    log.info("inferred GPT config (preset %s): %s", preset or "none", config.to_dict())
    return config


def _multiplier_for_hidden(dim: int, hidden: int, multiple_of: int) -> float:
    base = int(8 * dim / 3)
    multiplier = hidden / base
    if find_multiple(int(multiplier * base), multiple_of) != hidden:
        raise ModelLoadError(f"FFN width {hidden} cannot be expressed with dim {dim} and multiple_of {multiple_of}")
    return multiplier


def convert_official_gpt(state_dict: dict[str, Tensor], config: GPTConfig | None = None) -> dict[str, Tensor]:
    """Map an official c2i GPT state dict onto ``GPT(config)`` keys, checking every key and shape.

    Args:
        state_dict: the ``ema`` (or other) entry of an official checkpoint; wrapper prefixes are stripped.
        config: target config; inferred from the shapes when None (:func:`infer_gpt_config`).

    Returns:
        State dict in the target model's key order, loadable with ``strict=True``.

    Raises:
        ModelLoadError: naming missing keys, unexpected keys and shape mismatches.
    """
    sd = strip_prefixes(state_dict)
    dropped = [k for k in sd if any(re.match(p, k) for p in DROPPED_KEYS)]
    for key in dropped:
        log.debug("dropping %s", key)
    sd = {k: v for k, v in sd.items() if k not in dropped}
    config = config or infer_gpt_config(sd)
    with torch.device("meta"):
        expected = GPT(config).state_dict()
    check_state_dict(expected, sd, "official GPT checkpoint")
    return {k: sd[k] for k in expected}


def load_official_gpt(path: str | os.PathLike, config: GPTConfig | None = None) -> GPT:
    """Build a :class:`GPT` from an official checkpoint file (eval mode, fp32, CPU)."""
    state, meta = load_official_gpt_checkpoint(path)
    if config is None:
        config = infer_gpt_config(state, **config_from_training_args(meta["args"]))
    model = GPT(config)
    model.load_pretrained_state_dict(convert_official_gpt(state, config), where=str(path))
    return model.eval()
