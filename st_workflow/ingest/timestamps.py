"""ISO 8601 timestamps for watermarks and state files (UTC, second precision)."""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    """Now, as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def minus_seconds(ts: str, seconds: float) -> str:
    """``ts`` (ISO 8601) minus ``seconds``, as ``YYYY-MM-DDTHH:MM:SSZ``; ``ts`` unchanged if it does not parse.

    Example:
        >>> minus_seconds("2024-01-01T01:00:00Z", 3600)
        '2024-01-01T00:00:00Z'
    """
    try:
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - dt.timedelta(seconds=seconds)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
