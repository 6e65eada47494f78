"""Content hashing used by manifests and cache keys.

Hashes are over *content* (file bytes, canonical JSON), never over pickled objects or paths, so that a cache key is
stable across processes, machines and Python versions. What identifies a *model* is in :mod:`st_workflow.fingerprints`,
what identifies a *benchmark* in :mod:`st_workflow.benchmark_hashes` (``benchmark_hash`` is still importable from
here).
"""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: str | Path, pattern: str = "**/*") -> str:
    """Hash of every file under ``root`` (relative path + content), in sorted order.

    Used for model directories and other multi-file artifacts.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.glob(pattern) if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_hash(obj: Any, length: int | None = None) -> str:
    """sha256 of the canonical JSON of ``obj`` (pydantic models are dumped in JSON mode first).

    Example:
        >>> stable_hash({"b": 1, "a": [1, 2]}) == stable_hash({"a": [1, 2], "b": 1})
        True
    """
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    digest = sha256_text(canonical_json(obj))
    return digest[:length] if length else digest


def seeded_unit(seed: int, *parts: str) -> float:
    """A seeded uniform number in [0, 1) from ``sha256("<seed>:<part>:<part>...")``: the same in every process.

    Every seeded choice of a subset (held-out families, validation queries) uses it, so adding items never moves
    an existing one across the line.

    Example:
        >>> 0.0 <= seeded_unit(42, "cmr", "C1-PODAAC") < 1.0
        True
    """
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def combine_hashes(parts: Iterable[str]) -> str:
    """Order-sensitive combination of several hex digests into one."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@cache
def code_version(*names: str) -> str:
    """Version of our own code: package version + a hash of the named modules and everything they import.

    ``names`` are sub-packages or modules of ``st_workflow`` (``"training"``, ``"training.interpolate"``). The hash
    covers their sources *and* every ``st_workflow`` module they import, transitively (see :func:`code_closure`),
    so ``code_version("training")`` changes when ``models/resolve.py`` or ``evaluation/trainer_evaluator.py``
    changes, and a cache key that includes it invalidates exactly the stages whose code (direct or imported)
    changed. With no arguments the whole package is hashed.

    Example:
        >>> code_version("ingest").startswith("0.")
        True
    """
    from st_workflow import __version__

    pkg_root = Path(__file__).resolve().parent
    return f"{__version__}+{code_hash(pkg_root, *names)[:12]}"


def code_hash(pkg_root: str | Path, *names: str) -> str:
    """Hash of the sources in :func:`code_closure` of ``names`` under the package directory ``pkg_root``."""
    pkg_root = Path(pkg_root)
    h = hashlib.sha256()
    for p in code_closure(pkg_root, *names):
        h.update(p.relative_to(pkg_root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def code_closure(pkg_root: str | Path, *names: str) -> list[Path]:
    """The ``.py`` files of the named modules/sub-packages and of every package module they import, sorted.

    The import graph is read statically with :mod:`ast`: ``import``/``from ... import`` statements anywhere in a
    file (functions, ``TYPE_CHECKING`` blocks included), relative imports, names re-exported lazily through
    :func:`st_workflow.lazy.lazy_exports` (a ``{name: submodule}`` dict literal in a package ``__init__``), and
    dotted ``st_workflow.*`` strings (``python -m`` targets, ``modules.json`` types). The parent packages'
    ``__init__`` files are included, since Python runs them on import. Over-inclusion only costs a re-run;
    a missed import would reuse a stale result.

    Raises:
        ValueError: a name that is neither a module nor a sub-package of the package.
    """
    root = Path(pkg_root).resolve()
    pkg = root.name
    todo: list[Path] = []
    if not names:
        todo = sorted(root.rglob("*.py"))
    for name in names:
        target = root.joinpath(*name.split("."))
        if target.with_suffix(".py").is_file():
            todo.append(target.with_suffix(".py"))
        elif target.is_dir():
            todo += sorted(target.rglob("*.py"))
        else:
            raise ValueError(f"code_version: {pkg}.{name} is neither a module nor a sub-package of {root}")
    seen: set[Path] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += [q for q in _imported_files(root, p) if q not in seen]
    return sorted(seen)


def _module_file(root: Path, dotted: list[str]) -> Path | None:
    """File of the package module ``dotted`` (parts after the package name): ``x/y.py`` or ``x/y/__init__.py``."""
    target = root.joinpath(*dotted) if dotted else root
    if dotted and target.with_suffix(".py").is_file():
        return target.with_suffix(".py")
    if (target / "__init__.py").is_file():
        return target / "__init__.py"
    return None


def _with_parents(root: Path, dotted: list[str]) -> list[Path]:
    """The module ``dotted`` and the ``__init__`` of every package above it (all run on import)."""
    out = [f for i in range(len(dotted)) if (f := _module_file(root, dotted[:i])) is not None]
    if (f := _module_file(root, dotted)) is not None:
        out.append(f)
    return out


def _lazy_map(init: Path) -> dict[str, str]:
    """``{name: submodule}`` of the string-to-string dict literals in a package ``__init__`` (lazy exports)."""
    out: dict[str, str] = {}
    for node in ast.walk(_parse(init)):
        if not isinstance(node, ast.Dict) or not node.keys:
            continue
        pairs = list(zip(node.keys, node.values, strict=True))
        if all(_is_str(k) and _is_str(v) for k, v in pairs):
            out.update({k.value: v.value for k, v in pairs})  # type: ignore[union-attr]
    return out


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


_PARSE_LOCK = threading.Lock()
"""``ast.parse`` is not thread-safe on CPython 3.11 (concurrent ingest threads computing code versions raised
``SystemError: AST constructor recursion depth mismatch``): one parse at a time."""


@cache
def _parse_cached(path: Path, mtime_ns: int, size: int) -> ast.Module:
    source = path.read_bytes()
    with _PARSE_LOCK:
        return ast.parse(source, filename=str(path))


def _parse(path: Path) -> ast.Module:
    st = path.stat()
    return _parse_cached(path, st.st_mtime_ns, st.st_size)


def _imported_files(root: Path, path: Path) -> list[Path]:
    """Package files that ``path`` imports (see :func:`code_closure` for what counts as an import)."""
    pkg = root.name
    rel = path.relative_to(root).with_suffix("")
    here = list(
        rel.parts[:-1]
    )  # the package a relative import starts from (for __init__: the package itself)
    targets: list[tuple[list[str], list[str]]] = []  # (module parts below the package, imported names)
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == pkg:
                    targets.append((parts[1:], []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == pkg:
                parts = node.module.split(".")[1:]
            else:
                continue
            targets.append((parts, [a.name for a in node.names]))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = node.value.split(".")
            if len(parts) > 1 and parts[0] == pkg and all(x.isidentifier() for x in parts):
                # Longest prefix that is a module: "st_workflow.training.binarization.Binarize" -> binarization.
                for i in range(len(parts), 1, -1):
                    if _module_file(root, parts[1:i]) is not None:
                        targets.append((parts[1:i], []))
                        break
    out: list[Path] = []
    for parts, imported in targets:
        out += _with_parents(root, parts)
        init = _module_file(root, parts)
        for name in imported:
            if (sub := _module_file(root, [*parts, name])) is not None and sub != init:
                out.append(sub)  # from pkg.x import submodule
                continue
            lazy = _lazy_map(init).get(name) if init is not None and init.name == "__init__.py" else None
            if lazy and (f := _module_file(root, [*parts, *lazy.split(".")])) is not None:
                out.append(f)  # a lazily re-exported name: the submodule that defines it
    return out


def __getattr__(name: str) -> Any:
    """``benchmark_hash``, which lives in :mod:`st_workflow.benchmark_hashes` (that module imports this one)."""
    if name == "benchmark_hash":
        from st_workflow.benchmark_hashes import benchmark_hash

        return benchmark_hash
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
