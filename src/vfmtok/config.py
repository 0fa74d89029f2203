"""Configuration dataclasses that round-trip exactly through ``config.json``.

Every model and training recipe in vfmtok is described by a frozen dataclass deriving from :class:`ConfigBase`.
Fields are JSON-able only (int, float, str, bool, None, tuples and nested configs); paths, devices and dtypes never
live in a model config. ``to_dict`` is exactly what ``config.json`` holds and ``from_dict`` rejects unknown keys, naming
them, so a typo in a config file is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")

CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied (unknown key, wrong type, bad value)."""


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _from_json_value(tp: Any, value: Any, where: str) -> Any:
    """Convert a JSON value into the annotated Python type (nested configs, tuples)."""
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        return tp.from_dict(value, _where=where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_from_json_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _to_json_value(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Base class: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` and ``key=value`` overrides."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (nested configs become nested dicts, tuples become lists)."""
        return {f.name: _to_json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], _where: str | None = None) -> T:
        """Build from a dict; unknown keys raise :class:`ConfigError` naming them."""
        where = _where or cls.__name__
        hints = _resolve_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"_version", "_class"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
        kwargs = {k: _from_json_value(hints[k], v, f"{where}.{k}") for k, v in data.items() if k in names}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # missing required fields, values the config's checks refuse
            if isinstance(e, ConfigError) and str(e).startswith(where):
                raise
            raise ConfigError(f"{where}: {e}") from None

    def to_json(self) -> str:
        return json.dumps({"_class": type(self).__name__, **self.to_dict()}, indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` (or the given file) atomically. A directory path gets ``config.json`` inside."""
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path.mkdir(parents=True, exist_ok=True)
            path = path / CONFIG_NAME
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        """Read a config from a JSON (or YAML) file, or from ``config.json`` inside a directory."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: not a text file ({type(e).__name__})") from None
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - report any parse error with the file name
            raise ConfigError(f"{path}: cannot parse config: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.pop("_class", None)
        return cls.from_dict(data, _where=str(path))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def with_overrides(self: T, overrides: list[str] | tuple[str, ...]) -> T:
        """Apply ``section.key=value`` overrides (values parsed as JSON, falling back to plain strings)."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key, raw = item.split("=", 1)
            key = key.strip().lstrip("-")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {item!r}: {p!r} is not a config section")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"override {item!r}: unknown key {key!r}")
            node[parts[-1]] = value
        return type(self).from_dict(data)
