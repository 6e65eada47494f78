"""Paths to bundled data (``pkg://...``) and path resolution used by every config that names a file."""

from __future__ import annotations

from pathlib import Path

PKG_SCHEME = "pkg://"
DATA_ROOT = Path(__file__).resolve().parent / "data"


def resolve_path(path: str | Path) -> Path:
    """Resolve ``pkg://samples/cmr/x.jsonl`` to the bundled file, anything else relative to the working directory.

    Example:
        >>> resolve_path("pkg://samples/cmr/SOURCE.md").is_file()
        True
    """
    s = str(path)
    if s.startswith(PKG_SCHEME):
        return DATA_ROOT / s[len(PKG_SCHEME) :]
    return Path(s).expanduser().resolve()
