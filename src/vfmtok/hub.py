"""Model directories: ``<dir>/config.json`` + ``<dir>/model.safetensors`` is a model.

All weight I/O of the models goes through here (models themselves never touch files). ``from_pretrained`` accepts a
local directory or a Hugging Face Hub repository id; Hub access uses ``huggingface_hub`` and fails with a clear
message when offline.

Every read checks integrity and fails with one :class:`ModelLoadError` line naming the file: a truncated or corrupt
``model.safetensors`` (:func:`load_state_dict`), a truncated or refused ``.pt`` file (:func:`torch_load_weights`), a
config that does not build a model. An optional ``training.json`` next to the weights (:func:`write_training_record`)
records how the weights were made (trained, converted, or random), so that tools can say what a model is good for.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from .config import CONFIG_NAME, ConfigBase

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
TRAINING_RECORD_NAME = "training.json"

M = TypeVar("M", bound="PretrainedMixin")


class ModelLoadError(RuntimeError):
    """A model directory or checkpoint that cannot be loaded (missing file, key mismatch, bad shape)."""


def resolve_model_dir(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """Return a local directory holding ``config.json`` + ``model.safetensors``.

    A local path is used as is. Anything else is treated as a Hub repository id and fetched with
    ``huggingface_hub.snapshot_download`` (cached); offline, the error says so and names the id.
    """
    path = Path(path_or_hub_id)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path}: expected a model directory (config.json + {WEIGHTS_NAME}), got a file")
        return path
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"model directory not found: {name}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=name, revision=revision,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, TRAINING_RECORD_NAME])
    except Exception as e:  # noqa: BLE001 - network, auth and offline errors all end here
        raise ModelLoadError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). Offline? Pass a local model directory instead."
        ) from None
    return Path(local)


def save_state_dict(state_dict: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temporary file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; a model file is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _reason(e: BaseException) -> str:
    """A one-line, short description of a low-level read error (no advice from the library that raised it)."""
    text = " ".join(str(e).split())
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    first = text.split(". ")[0].rstrip(".")
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file raises :class:`ModelLoadError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"{path}: expected a safetensors file, got a directory")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ... : the file is damaged whatever the type
        raise ModelLoadError(f"{path}: truncated or corrupt safetensors file ({_reason(e)}); re-download or "
                             "re-export it") from None


def torch_load_weights(path: str | os.PathLike, what: str, allowed_globals: Sequence[type] = (),
                       map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file and what it was meant to be.

    Only tensors, plain containers and ``allowed_globals`` are unpickled: a file that pickles any other Python object
    is refused (unpickling arbitrary objects can run code from the file), and the message names the object's type.
    A truncated or corrupt file raises :class:`ModelLoadError` too. ``what`` names the file's role, e.g.
    ``"training state"``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelLoadError: the file is damaged or refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never repeat that advice
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ModelLoadError(f"{path}: refused to load this {what}: it contains a pickled {found.group(1)} "
                                 "object, and unpickling arbitrary objects can run code from the file; vfmtok reads "
                                 "only tensors and plain containers from .pt files") from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        raise ModelLoadError(f"{path}: cannot read this {what}: not a torch checkpoint, or a truncated or corrupt one "
                             f"(unpickling failed: {detail.group(1).strip() if detail else type(e).__name__})") \
            from None
    except Exception as e:  # noqa: BLE001 - zip, EOF and key errors of a damaged file come in many types
        raise ModelLoadError(f"{path}: cannot read this {what}: the file is truncated or corrupt ({_reason(e)})") \
            from None


def write_training_record(model_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``<model_dir>/training.json`` atomically: how the weights were made.

    Keys used by vfmtok: ``trained`` (bool: False for random initialisations), ``source`` (the command or file the
    weights came from), ``data`` (what the model was trained on, free text or a path) and ``image_size``; any other
    JSON-able keys are kept.
    """
    path = Path(model_dir) / TRAINING_RECORD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_training_record(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``<model_dir>/training.json`` as a dict, or None when it is absent or unreadable (with a warning naming it)."""
    path = Path(model_dir) / TRAINING_RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable training record ignored (%s)", path, _reason(e))
        return None
    return record if isinstance(record, dict) else None


def check_state_dict(expected: dict[str, Tensor], got: dict[str, Tensor], where: str) -> None:
    """Raise :class:`ModelLoadError` naming missing / unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad_shape = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
        for k in expected
        if k in got and tuple(expected[k].shape) != tuple(got[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
        if bad_shape:
            parts.append(f"shape mismatches ({len(bad_shape)}): {bad_shape[:20]}")
        raise ModelLoadError(f"{where}: " + "; ".join(parts))


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` built from ``cls(config)``.

    Subclasses set ``config_class``. The module keeps its config as ``self.config``.
    """

    config_class: ClassVar[type[ConfigBase]]
    config: ConfigBase

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (created if needed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save(path / CONFIG_NAME)
        save_state_dict(self.state_dict(), path / WEIGHTS_NAME)  # type: ignore[attr-defined]
        return path

    @classmethod
    def from_config(cls: type[M], config: ConfigBase) -> M:
        return cls(config)  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(
        cls: type[M],
        path_or_hub_id: str | os.PathLike,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        **config_overrides: Any,
    ) -> M:
        """Build from ``config.json`` and load ``model.safetensors`` strictly; returns the model in eval mode."""
        local = resolve_model_dir(path_or_hub_id, revision=revision)
        config = cls.config_class.load(local / CONFIG_NAME)
        if config_overrides:
            config = config.replace(**config_overrides)
        try:
            model = cls(config)  # type: ignore[call-arg]
        except ModelLoadError:  # e.g. a backbone whose weights are missing: already names its file
            raise
        except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, ZeroDivisionError) as e:
            raise ModelLoadError(f"{local / CONFIG_NAME}: this config does not build a model ({_reason(e)})") from None
        state = load_state_dict(local / WEIGHTS_NAME)
        model.load_pretrained_state_dict(state, where=str(local / WEIGHTS_NAME))  # type: ignore[attr-defined]
        return model.to(device).eval()  # type: ignore[attr-defined,return-value]

    def load_pretrained_state_dict(self, state: dict[str, Tensor], where: str = "state dict") -> None:
        """Strict load with a readable error. Subclasses may override to drop derived buffers."""
        expected = self.state_dict()  # type: ignore[attr-defined]
        check_state_dict(expected, state, where)
        self.load_state_dict(state, strict=True)  # type: ignore[attr-defined]
