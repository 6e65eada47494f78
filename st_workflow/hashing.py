"""Content hashing used by manifests and cache keys.

Hashes are over *content* (file bytes, canonical JSON), never over pickled objects or paths, so that a cache key is
stable across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
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
def code_version(*subpackages: str) -> str:
    """Version of our own code: package version + a hash of the sources of the given sub-packages.

    Cache keys include it so that a code change invalidates exactly the stages whose code changed.
    With no arguments the whole package is hashed.

    Example:
        >>> code_version("ingest").startswith("0.")
        True
    """
    from st_workflow import __version__

    pkg_root = Path(__file__).resolve().parent
    roots = [pkg_root / s.replace(".", "/") for s in subpackages] or [pkg_root]
    h = hashlib.sha256()
    for root in roots:
        files = [root.with_suffix(".py")] if root.with_suffix(".py").is_file() else sorted(root.rglob("*.py"))
        for p in files:
            h.update(p.relative_to(pkg_root).as_posix().encode())
            h.update(p.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"
