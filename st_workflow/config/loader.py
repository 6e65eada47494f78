"""Load a :class:`PipelineConfig` from YAML, with ``extends:`` inheritance and ``--set key=value`` overrides.

Errors name the file and the dotted key, and suggest the closest valid key for a typo:

    configs/demo.yaml: unknown key 'training.lerning_rate' (did you mean 'training.learning_rate'?)
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from st_workflow.config.root import PipelineConfig


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and resolve its ``extends:`` chain (paths relative to the extending file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'extends' chain: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / parent).resolve()
    return deep_merge(load_raw(parent_path, (*_seen, path)), data)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply one ``dotted.key=value`` override in place.

    List elements are addressed by index (``ingest.sources.0.max_records=10``) or, when the elements have a
    ``name``, by name (``ingest.sources.cmr.max_records=10``). Values are parsed as YAML (``true``, ``3``, ``[a, b]``).

    Example:
        >>> apply_override({"training": {"epochs": 1}}, "training.epochs=2")
        {'training': {'epochs': 2}}
    """
    parts, value = _parse_override(item)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: i + 1], item, create=True)
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, item)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping or list")
    return data


def _list_index(node: list[Any], part: str, item: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError(f"--set {item!r}: index {idx} out of range (list has {len(node)} items)")
        return idx
    for idx, elem in enumerate(node):
        if isinstance(elem, dict) and elem.get("name") == part:
            return idx
    names = [e.get("name") for e in node if isinstance(e, dict)]
    raise ConfigError(f"--set {item!r}: no list element named {part!r}; names are {names}")


def _step(node: Any, part: str, path: list[str], item: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, item)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            if not create:
                raise ConfigError(f"--set {item!r}: no key {'.'.join(path)}")
            node[part] = {}
        return node[part]
    raise ConfigError(f"--set {item!r}: {'.'.join(path[:-1])} is not a mapping or list")


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        for ann in _model_types(field.annotation):
            keys.extend(_known_keys(ann, dotted + "."))
    return keys


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    import typing

    out: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
            continue
        stack.extend(typing.get_args(a))
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    from st_workflow.ingest.sources.base import source_kinds

    known = _known_keys(PipelineConfig)
    tags = {*source_kinds(), "pipeline", "beir", "hf", "local"}  # discriminator tags: sources, benchmarks
    lines = []
    for e in err.errors():
        # Drop discriminator tags and list indices from the dotted key for suggestions, keep them for display.
        loc = [str(p) for p in e["loc"]]
        dotted = ".".join(loc)
        plain = ".".join(p for p in loc if not p.isdigit() and p not in tags)
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(plain, known, n=1, cutoff=0.75)
            msg = f"{source}: unknown key '{dotted}'"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
        else:
            given = e.get("input")
            shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
            msg = f"{source}: invalid value for '{dotted}': {e['msg']}{shown}"
        lines.append(msg)
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Load and validate a config file, then apply ``--set`` overrides.

    Args:
        path: YAML file; ``None`` gives the built-in defaults.
        overrides: ``dotted.key=value`` strings applied in order.

    Raises:
        ConfigError: naming the file and the key of the first problem(s).

    Example:
        >>> cfg = load_config(None, ["run_name=smoke", "training.epochs=2"])
        >>> (cfg.run_name, cfg.training.epochs)
        ('smoke', 2.0)
    """
    data = load_raw(path) if path is not None else {}
    overrides = list(overrides)
    for item in overrides:
        apply_override(data, item)
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        source += f" (with --set {' '.join(overrides)})"
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (secrets are references, never values)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
