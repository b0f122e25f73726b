"""YAML values -> typed frozen dataclasses: the one place a config's keys and value types are checked.

A key a dataclass does not have fails naming its section and the valid keys (or, for a key that moved, its new
place); a value is converted to the field's annotated type or fails naming ``section.key``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from rmm.errors import ConfigError


def build_dataclass(cls: type, data: Any, section: str, extra_valid: Sequence[str] = ()) -> Any:
    """Instantiate frozen dataclass ``cls`` from a mapping, rejecting unknown keys and coercing types.

    A class may name keys that moved elsewhere in a ``moved_keys`` mapping (old key -> new dotted place under
    ``section``), so an old config fails with one line saying where the key lives now.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    moved: Mapping[str, str] = getattr(cls, "moved_keys", {})
    for key in unknown:
        if key in moved:
            raise ConfigError(f"{section}.{key} moved to {section}.{moved[key]}; write it there")
    if unknown:
        valid = sorted(set(fields) | set(extra_valid))
        raise ConfigError(f"unknown key {unknown[0]!r} in section {section!r}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"section {section!r}: {err}") from err


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, raising ConfigError naming ``where`` on mismatch."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items, got {list(value)}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (Mapping, dict) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def to_plain(value: Any) -> Any:
    """Mappings and sequences (tuples included) as dicts and lists, the form YAML and JSON write."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys laid over it, merging nested mappings key by key (a model entry's
    ``train: {eval: {patience: 5}}`` changes the patience and keeps the rest of ``train.eval``)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_fields(cls: type, prefix: str = "") -> tuple[str, ...]:
    """The leaf keys of dataclass ``cls`` as dotted paths (``epochs``, ``eval.patience``, ...): what a search or
    an override can address."""
    hints = typing.get_type_hints(cls)
    paths: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += dotted_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return tuple(paths)


def set_dotted(data: Any, key: str, value: Any) -> None:
    """Set ``data[a][b]...`` for ``key='a.b...'``, creating mappings on the way; digits index lists.

    A single-model ``model`` section (a mapping) is addressed as ``model.key``."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:depth])!r} is a value, not a section")
