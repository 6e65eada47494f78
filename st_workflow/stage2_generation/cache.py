"""Content-addressed store of LLM answers, shared by runs and safe under concurrent runs and ``kill -9``.

Layout: ``<cache_dir>/llm/<namespace>/<key[:2]>/<key>.json`` (the answer, written atomically) next to
``<key>.lock`` (the claim). The key hashes everything that determines the answer: document content hash, prompt
version, output schema hash, model and sampling parameters (see :func:`cache_key`), never a row position or run id.

Claims are ``flock`` locks on the ``.lock`` file, taken without blocking. A worker that gets the claim re-checks the
store, calls the LLM, writes the answer, then releases. A worker in another run that finds the claim held skips the
document for now and comes back to it later (by then the answer is usually in the store). Because the kernel releases
``flock`` locks when a process dies, a ``kill -9`` leaves no stale claim: the next run simply re-claims the documents
that were in flight, and every finished document is already in the store. (``flock`` works on local file systems;
on NFS use a local ``cache_dir``.)

Example:
    >>> import tempfile, pathlib
    >>> store = LLMCache(pathlib.Path(tempfile.mkdtemp()), "demo")
    >>> claim = store.try_claim("ab12")
    >>> store.try_claim("ab12") is None        # held: a concurrent worker would defer
    True
    >>> store.put("ab12", {"value": {"x": 1}}); claim.release()
    >>> store.get("ab12")["value"]
    {'x': 1}
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.hashing import stable_hash


def cache_key(**parts: Any) -> str:
    """The content address of one LLM answer (sha256 of the canonical JSON of ``parts``)."""
    return stable_hash(parts)


class Claim:
    """A held claim on one key (an ``flock`` on its lock file)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LLMCache:
    """Answers of one kind (``namespace``: ``pairs``, ``relevancy``) under ``root``."""

    def __init__(self, root: Path, namespace: str) -> None:
        self.dir = Path(root) / namespace

    def _path(self, key: str, suffix: str) -> Path:
        return self.dir / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or ``None`` (a corrupt entry is treated as missing and will be overwritten)."""
        p = self._path(key, ".json")
        try:
            with open(p, encoding="utf-8") as fh:
                entry = json.load(fh)
        except (FileNotFoundError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store an entry atomically (a reader never sees half of it)."""
        atomic.write_text(self._path(key, ".json"), json.dumps({**entry, "key": key}, ensure_ascii=False))

    def try_claim(self, key: str) -> Claim | None:
        """Claim ``key`` without blocking; ``None`` when another worker or process holds it."""
        p = self._path(key, ".lock")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Claim(fd)

    def __contains__(self, key: str) -> bool:
        return self._path(key, ".json").is_file()
