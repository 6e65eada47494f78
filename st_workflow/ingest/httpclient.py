"""HTTP for the live sources: bounded exponential backoff with full jitter, ``Retry-After``, rate limiting.

One :class:`RetryingClient` per source run. It retries what is transient — HTTP 429 (honouring ``Retry-After``,
capped), 5xx, timeouts, dropped connections and bodies that do not parse (a truncated JSON page) — and fails at once,
with the server's own error message, on other 4xx (a bad query will not get better by asking again). Headers are
never logged, so a bearer token cannot leak into a log line.

Example:
    >>> from st_workflow.config.ingest import RetryConfig
    >>> client = RetryingClient(RetryConfig(max_attempts=3), min_interval_s=0.0)
    >>> client.backoff(0) <= RetryConfig().backoff_base_s
    True
    >>> client.close()
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from st_workflow.ingest.logs import logger as get_logger

if TYPE_CHECKING:
    from st_workflow.ingest.sources.base import RetryConfig

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class HttpSourceError(RuntimeError):
    """A request failed for good: a non-retryable status, or every attempt used up."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        """True when the failure was of a retryable kind (a later run may succeed)."""


class RetryableBody(ValueError):
    """Raised by a response parser when a 200 body is unusable but a retry may fix it (truncated, partial)."""


@dataclass
class Response:
    """A parsed response: the parser's value plus what paging needs (headers, URL, status)."""

    value: Any
    headers: httpx.Headers
    url: str
    status: int
    attempts: int


def parse_json(resp: httpx.Response) -> Any:
    """JSON body, or :class:`RetryableBody` when it does not parse (a truncated page is worth another try)."""
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError as e:
        raise RetryableBody(f"body is not valid JSON ({len(resp.content)} bytes): {e}") from None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad.

    Example:
        >>> retry_after_seconds("7")
        7.0
        >>> retry_after_seconds("soon") is None
        True
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryingClient:
    """``GET`` with retries, backoff, ``Retry-After`` and a minimum interval between requests."""

    def __init__(
        self,
        retry: RetryConfig,
        *,
        headers: Mapping[str, str] | None = None,
        min_interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        label: str = "http",
    ) -> None:
        self.retry = retry
        self.min_interval_s = min_interval_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._last_request = float("-inf")
        self._label = label
        self.requests = 0
        """Requests sent, retries included."""
        self.retries = 0
        """Retries made."""
        timeout = httpx.Timeout(retry.timeout_s, connect=min(retry.timeout_s, 30.0))
        self._client = httpx.Client(headers=dict(headers or {}), timeout=timeout, follow_redirects=True)

    def __enter__(self) -> RetryingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before retry number ``attempt + 1``: uniform in [0, min(max, base * 2**attempt)]."""
        cap = min(self.retry.backoff_max_s, self.retry.backoff_base_s * (2**attempt))
        return self._rng.uniform(0.0, cap)

    def get(
        self,
        url: str,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        parse: Callable[[httpx.Response], T] = parse_json,  # type: ignore[assignment]
        check: Callable[[httpx.Response], str | None] | None = None,
        wait_hint: Callable[[httpx.Response], float | None] | None = None,
    ) -> Response:
        """GET ``url`` until it succeeds and ``parse`` accepts the body.

        Args:
            parse: turns a 200 response into a value; raising :class:`RetryableBody` asks for another attempt.
            check: returns a reason string when an otherwise good response must be retried (e.g. CMR's
                ``CMR-Time-Out: true`` partial results).
            wait_hint: seconds a retryable response asks us to wait when it has no ``Retry-After`` (ADS's
                ``X-RateLimit-Reset`` on 429); capped like ``Retry-After``.

        Raises:
            HttpSourceError: on a non-retryable status (with the server's message) or when attempts run out.
        """
        log = get_logger()
        last = ""
        max_attempts = self.retry.max_attempts
        for attempt in range(max_attempts):
            self._pace()
            self.requests += 1
            delay: float | None = None
            try:
                resp = self._client.get(url, params=params, headers=headers)
            except httpx.TimeoutException as e:
                last = f"timed out after {self.retry.timeout_s:g} s ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__}: {e})"
            else:
                shown = _shown_url(resp)
                if resp.status_code in RETRY_STATUSES:
                    last = f"HTTP {resp.status_code} from {shown}"
                    ra = retry_after_seconds(resp.headers.get("retry-after"))
                    if ra is not None:
                        delay = min(ra, self.retry.backoff_max_s)
                        last += f" (Retry-After {resp.headers.get('retry-after')})"
                    elif wait_hint is not None and (hint := wait_hint(resp)) is not None:
                        delay = min(max(0.0, hint), self.retry.backoff_max_s)
                        last += f" (server asks to wait {hint:.1f} s)"
                elif resp.status_code >= 400:
                    raise HttpSourceError(
                        f"HTTP {resp.status_code} from {shown}: {_error_message(resp)}",
                        status=resp.status_code,
                    )
                else:
                    reason = check(resp) if check else None
                    if reason is None:
                        try:
                            value = parse(resp)
                        except RetryableBody as e:
                            last = f"{shown}: {e}"
                        else:
                            return Response(value, resp.headers, str(resp.url), resp.status_code, attempt + 1)
                    else:
                        last = f"{shown}: {reason}"
            if attempt + 1 >= max_attempts:
                break
            if delay is None:
                delay = self.backoff(attempt)
            self.retries += 1
            log.warning(
                "%s: attempt %d/%d failed: %s; retrying in %.2f s",
                self._label,
                attempt + 1,
                max_attempts,
                last,
                delay,
            )
            self._sleep(delay)
        raise HttpSourceError(f"GET {url} failed after {max_attempts} attempts: {last}", transient=True)

    def pause(self, seconds: float) -> None:
        """Wait before the next request (a source honouring its server's rate-limit headers)."""
        if seconds > 0:
            self._sleep(seconds)

    def _pace(self) -> None:
        if self.min_interval_s > 0:
            wait = self._last_request + self.min_interval_s - time.monotonic()
            if wait > 0:
                self._sleep(wait)
        self._last_request = time.monotonic()


def _shown_url(resp: httpx.Response) -> str:
    return str(resp.request.url) if resp.request is not None else "?"


def _error_message(resp: httpx.Response) -> str:
    """The server's own error text: CMR's ``{"errors": [...]}``, PDS's ``{"message": ...}``, or the body start."""
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.text[:500].strip() or resp.reason_phrase
    if isinstance(body, dict):
        for key in ("errors", "message", "error", "detail"):
            if key in body:
                value = body[key]
                return "; ".join(map(str, value)) if isinstance(value, list) else str(value)
    return str(body)[:500]
