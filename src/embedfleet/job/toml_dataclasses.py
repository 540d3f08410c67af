"""TOML tables -> dataclasses, with errors that name the offending key.

The job spec (:mod:`.spec`) and the destination tables are plain dataclasses; this
turns parsed TOML into them field by field, following the type hints, so a typo or a
wrong type is reported as ``spec.toml: unknown key 'source.txt_column' (known here:
...)`` or ``spec.toml: output.rows_per_shard: expected int, got str '10k'`` instead of
a TypeError from a constructor.
"""

from __future__ import annotations

import dataclasses
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from embedfleet.errors import ConfigError


def build_dataclass(cls: type, data: Any, prefix: str, origin: str) -> Any:
    """Instantiate a dataclass from a dict, naming unknown keys and wrong types."""
    where = f"{origin}: {prefix or 'top level'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{origin}: unknown key {key!r} (known here: {', '.join(fields)})")
    values = {
        name: _convert(hints[name], value, f"{prefix}.{name}" if prefix else name, origin)
        for name, value in data.items()
    }
    for name, item in fields.items():
        required = (
            item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        )
        if required and name not in values:
            key = f"{prefix}.{name}" if prefix else f"[{name}]"
            raise ConfigError(f"{origin}: missing required key {key!r}")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, origin: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key, origin)
    wrong = ConfigError(
        f"{origin}: {key}: expected {_name(hint)}, got {type(value).__name__} {value!r}"
    )
    origin_type = get_origin(hint)
    if origin_type in (Union, UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for option in get_args(hint):
            if option is type(None):
                continue
            if dataclasses.is_dataclass(option):  # a table: its own errors name the key
                return _convert(option, value, key, origin)
            try:
                return _convert(option, value, key, origin)
            except ConfigError:
                continue
        raise wrong
    if origin_type is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list):
            raise wrong
        return [_convert(item_type, item, f"{key}[{i}]", origin) for i, item in enumerate(value)]
    if origin_type is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    if hint is Any:
        return value
    if isinstance(value, bool) and hint is not bool:
        raise wrong
    if hint is float and isinstance(value, int):
        return float(value)
    if isinstance(value, hint):
        return value
    raise wrong


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
