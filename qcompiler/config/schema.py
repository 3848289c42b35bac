"""A strict loader from plain YAML data into typed dataclasses.

The dataclasses are the schema: field names are the allowed keys, type hints
the allowed values (bool, int, float, str, Literal choices, Optional, lists,
string-keyed dicts, nested dataclasses). Anything else is an error that
gives the path of the offending key, e.g.
``quantizers.weight.bitz: unknown key; known keys: bits, granularity, ...``.
A dataclass may define ``from_scalar(value)`` to accept a shorthand.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from qcompiler.errors import UsageError


class SchemaError(UsageError):
    """A configuration value does not fit its schema (exit 2)."""


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict) and hasattr(cls, "from_scalar"):
        data = cls.from_scalar(data, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SchemaError(f"{_where(path)}expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise SchemaError(f"{_join(path, key)}: unknown key; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = coerce(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{_join(path, name)}: required key is missing")
    return cls(**values)


def coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type hint ``tp`` and return it converted."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise SchemaError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {_describe(value)}")
        (item_type,) = typing.get_args(tp)
        return [coerce(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        return _coerce_tuple(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a mapping, got {_describe(value)}")
        _, value_type = typing.get_args(tp)
        return {str(k): coerce(value_type, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return _coerce_scalar(tp, value, path)


def to_plain(obj: Any) -> Any:
    """The inverse of ``build``: dataclasses back to plain dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _coerce_tuple(tp: Any, value: Any, path: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise SchemaError(f"{path}: expected a list, got {_describe(value)}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if len(value) != len(args):
        raise SchemaError(f"{path}: expected {len(args)} values, got {len(value)}")
    return tuple(coerce(t, item, f"{path}[{i}]") for i, (t, item) in enumerate(zip(args, value)))


def _coerce_union(tp: Any, value: Any, path: str) -> Any:
    options = typing.get_args(tp)
    if value is None:
        if type(None) in options:
            return None
        raise SchemaError(f"{path}: a value is required")
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(option, value, path)
        except SchemaError as exc:
            errors.append(str(exc))
    if len(errors) == 1:
        raise SchemaError(errors[0])
    forms = " or ".join(_form(option) for option in options if option is not type(None))
    raise SchemaError(f"{path}: {value!r} is not {forms}")


def _form(tp: Any) -> str:
    """A type hint as a user reads it: int, 'auto', a mapping."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "a mapping"
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _coerce_scalar(tp: type, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"schema type {tp!r} at {path} is not supported")
    raise SchemaError(f"{path}: expected {tp.__name__}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return f"{path}: " if path else ""
