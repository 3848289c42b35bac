"""Loading a backend file: shipped names and paths, ``extends:``, ``--set`` overrides, strict validation.

``extends:`` starts from another file (a shipped name, a shipped partial such
as ``_base``, or a path relative to the file that names it) and deep-merges
this one over it: mappings merge key by key, lists and scalars replace.
``--set a.b[0].c=value`` edits the merged data before validation, so an
override is checked like a file. ``scheme: N`` then fills the placement
fields it presets, under any that the data sets itself.

Binding the pipeline's passes and the emitters to their registries is not
done here but by the driver: loading a backend imports no pass, no emitter
and no onnxruntime.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from qcompiler.config import schema
from qcompiler.config.backend import SCHEMES, BackendConfig
from qcompiler.config.schema import SchemaError
from qcompiler.config.validate import validate
from qcompiler.errors import UsageError

# Shipped files whose name starts with this are partials other files extend, not backends.
PARTIAL_PREFIX = "_"


def shipped_backends() -> list[str]:
    """Names of the backend files that ship with qcompiler."""
    return sorted(name for name in _shipped_files() if not name.startswith(PARTIAL_PREFIX))


def load_backend(name_or_path: str, overrides: list[str] = ()) -> BackendConfig:
    """Resolve ``extends``, apply ``--set`` overrides, expand the scheme, validate, and build."""
    data = _load_resolved(name_or_path, chain=())
    _expand_short_entries(data)
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        _expand_scheme(data)
        config = schema.build(BackendConfig, data)
        validate(config)
    except SchemaError as exc:
        raise SchemaError(f"backend {backend_label(name_or_path)}: {exc}") from None
    return config


def backend_label(name_or_path: str) -> str:
    """How messages name a backend: its shipped name, or its file's name."""
    return Path(name_or_path).name if _is_path(name_or_path) else name_or_path


def resolved_yaml(config: BackendConfig) -> str:
    """The final configuration as YAML, unset (null) fields left out."""
    return yaml.safe_dump(_without_nulls(schema.to_plain(config)), sort_keys=False, width=100)


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _without_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_nulls(v) for v in data]
    return data


def _expand_scheme(data: dict) -> None:
    """Fill the placement fields that ``scheme`` presets, keeping any the data sets explicitly."""
    scheme = data.get("scheme", 1)
    placement = data.get("placement", {})
    if scheme in SCHEMES and isinstance(placement, dict):
        data["placement"] = {**SCHEMES[scheme], **placement}


def _expand_short_entries(data: dict) -> None:
    """Pipeline and emit entries given by name alone become ``{name: ...}``, so --set can reach their options."""
    for key in ("pipeline", "emit"):
        entries = data.get(key)
        if isinstance(entries, list):
            data[key] = [{"name": entry} if isinstance(entry, str) else entry for entry in entries]


def _load_resolved(name_or_path: str, chain: tuple[str, ...], partial: bool = False) -> dict:
    path = _locate(name_or_path, partial)
    key = str(path)
    if key in chain:
        raise UsageError(f"backend {backend_label(name_or_path)}: extends itself through {' -> '.join(chain)}")
    data = read_yaml_mapping(path, f"backend file {path.name}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SchemaError(f"backend {backend_label(name_or_path)}: extends: expected a backend name or path")
    # a relative path is relative to the file that names it; a bare name is shipped
    parent_ref = str(path.parent / parent) if _is_path(parent) else parent
    return deep_merge(_load_resolved(parent_ref, chain + (key,), partial=True), data)


def _locate(name_or_path: str, partial: bool) -> Path:
    """The file of a backend; ``partial`` also finds the shipped partials (only ``extends`` names those)."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"backend file {name_or_path} does not exist; give a shipped name or a YAML path")
        return path
    known = _shipped_files() if partial else shipped_backends()
    if name_or_path not in known:
        raise UsageError(
            f"unknown backend {name_or_path!r}; shipped backends: {', '.join(shipped_backends())} "
            "(or give the path of a YAML file)"
        )
    return Path(str(resources.files("qcompiler.backends") / f"{name_or_path}.yaml"))


def _shipped_files() -> list[str]:
    folder = resources.files("qcompiler.backends")
    return [p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")]


def _is_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The mapping a YAML file holds (empty for an empty file), or a one-line UsageError about ``what``."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} is not valid YAML ({_yaml_problem(exc)}); fix it there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} must be a mapping of keys to values (key: value lines)")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, as 'line 3, column 7: expected ',' or ']', but got '<stream end>''."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b[2].c=value`` (value parsed as YAML) to the raw config data."""
    key_path, sep, raw_value = assignment.partition("=")
    if not sep or not key_path:
        raise UsageError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set quantizers.weight.bits=4")
    try:
        value = yaml.safe_load(raw_value) if raw_value else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {assignment!r}: the value is not YAML ({str(exc).splitlines()[0]}); quote it, "
                         "e.g. --set 'description=\"a: b\"'") from None
    keys = [k for k in re.split(r"\.|\[(\d+)\]", key_path) if k]
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UsageError(f"--set {key_path}: {where} is not an index of the list")
            key = int(key)
        elif not isinstance(node, dict):
            raise UsageError(f"--set {key_path}: {'.'.join(keys[:depth])} is not a mapping or list")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
