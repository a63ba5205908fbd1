"""Strict typed configs from plain data: a dict becomes nested frozen dataclasses with every key known
(a typo is an error that suggests the closest key), every value of its field's type, every ``Literal`` one
of its choices and every float finite; ``key=value`` overrides from the command line."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import fields
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

from .errors import ConfigError


def apply_overrides(d: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``d`` with ``{"a.b": v}`` changes applied; unknown paths are errors."""
    out = json.loads(json.dumps(d))
    for path, value in changes.items():
        node = out
        parts = path.split(".")
        for i, p in enumerate(parts):
            if not isinstance(node, dict) or p not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(unknown_key_message(".".join(parts[: i + 1]), p, known))
            if i == len(parts) - 1:
                node[p] = list(value) if isinstance(value, tuple) else value
            else:
                node = node[p]
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value`` override; the value is read as JSON when it parses
    (numbers, true/false, lists), otherwise as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.max_iters=100)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def unknown_key_message(path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {path!r}{hint} (valid here: {', '.join(known)})"


def to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x


def from_dict(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(unknown_key_message(path, key, names))
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, path + ".")
        else:
            kwargs[key] = _coerce(value, typ, path)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, path: str) -> Any:
    origin = get_origin(typ)
    if origin is Literal:
        if value not in get_args(typ):
            raise ConfigError(f"{path}={value!r} is not one of {list(get_args(typ))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path} must be a list of integers, got {value!r}")
        return tuple(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {typ}")  # pragma: no cover - a bug in this module


def check_literals(obj: Any, prefix: str = "") -> None:
    """Dataclasses do not check Literal fields on construction; do it here so a typo made in Python code
    (not only in a dict) is caught as well."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        typ = hints[f.name]
        if dataclasses.is_dataclass(v):
            check_literals(v, f"{prefix}{f.name}.")
        elif get_origin(typ) is Literal and v not in get_args(typ):
            raise ConfigError(f"{prefix}{f.name}={v!r} is not one of {list(get_args(typ))}")


def check_finite(obj: Any, prefix: str = "") -> None:
    """Every float field of ``obj`` (and of its sections) finite, also for a config built in Python."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            check_finite(v, f"{prefix}{f.name}.")
        elif hints[f.name] is float and isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{prefix}{f.name}={v!r} is not a finite number; every float setting must be "
                              f"finite (the default is {f.default!r})")
