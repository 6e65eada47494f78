"""Transport-level retries under both LLM clients, plus per-document usage capture.

The OpenAI client is built with ``max_retries=0`` and its ``chat.completions.create`` is wrapped (:func:`install`), so
Instructor *and* Pydantic AI send every HTTP request through one layer that

* retries 429, 408/409, 5xx, timeouts and connection errors with exponential backoff and full jitter, honouring
  ``Retry-After`` / ``retry-after-ms`` (capped by ``backoff_max_s``);
* fails fast on 401/403/404 (:class:`EndpointFatalError`: a wrong key or model fails every document the same way);
* occupies one slot of the Prefect global concurrency limit per request, when one applies (``slot``);
* adds each answer's token ``usage`` to the :class:`~.accounting.CallUsage` of the document being processed, found
  through a context variable, so validation re-asks are accounted too.

Retrying *under* Instructor means a 429 on a re-ask retries only that request, never the answers already paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai

from st_workflow.stage2_generation.accounting import CallUsage

#: The usage record of the document the current asyncio task is working on.
CURRENT_USAGE: contextvars.ContextVar[CallUsage | None] = contextvars.ContextVar("st_llm_usage", default=None)

SlotFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class EndpointFatalError(RuntimeError):
    """The endpoint refuses every request (bad key, no permission, unknown model): stop the stage."""


class TransportError(RuntimeError):
    """A request still failed after every transport retry."""

    def __init__(self, cause: str, attempts: int, message: str) -> None:
        super().__init__(f"{cause} after {attempts} attempts: {message}")
        self.cause = cause
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``k`` waits ``uniform(0, min(max, base * 2**(k-1)))``."""

    max_attempts: int = 6
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1``; a server's ``Retry-After`` wins (capped by ``max_s``)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        cap = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)


def classify(exc: BaseException) -> str | None:
    """The retryable cause of an OpenAI client error, or ``None`` when retrying cannot help."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429:
            return "rate_limit"
        if code in (408, 409):
            return "timeout" if code == 408 else "conflict"
        if code >= 500:
            return "server_error"
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    """``Retry-After`` of an error response in seconds (``retry-after-ms``, delta-seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return float(ms) / 1000.0
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return float(ra)
    except ValueError:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, when.timestamp() - time.time())
    return None


@contextlib.asynccontextmanager
async def no_slot() -> AsyncIterator[None]:
    yield


def resilient(
    create: Callable[..., Awaitable[Any]],
    policy: RetryPolicy,
    slot: SlotFactory = no_slot,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Callable[..., Awaitable[Any]]:
    """Wrap an async ``chat.completions.create`` with retries, slots and usage capture."""

    async def create_with_retries(*args: Any, **kwargs: Any) -> Any:
        usage = CURRENT_USAGE.get()
        attempt = 0
        while True:
            attempt += 1
            if usage is not None:
                usage.attempts += 1
            try:
                async with slot():
                    response = await create(*args, **kwargs)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise EndpointFatalError(
                    f"the LLM endpoint refused the request with HTTP {e.status_code} "
                    f"({type(e).__name__}): check generation.endpoint.base_url, model and the API key variable"
                ) from None
            except openai.OpenAIError as e:
                cause = classify(e)
                if cause is None:
                    raise
                if usage is not None:
                    usage.retries[cause] += 1
                if attempt >= policy.max_attempts:
                    raise TransportError(cause, attempt, first_line(e)) from e
                await sleep(policy.delay(attempt, retry_after_seconds(e)))
                continue
            if usage is not None:
                usage.add_usage(getattr(response, "usage", None))
            return response

    create_with_retries.__wrapped__ = create  # type: ignore[attr-defined]
    return create_with_retries


def install(
    client: openai.AsyncOpenAI, policy: RetryPolicy, slot: SlotFactory = no_slot
) -> openai.AsyncOpenAI:
    """Route ``client.chat.completions.create`` through :func:`resilient` (before handing the client to
    Instructor or Pydantic AI, which both call that method)."""
    completions = client.chat.completions
    completions.create = resilient(completions.create, policy, slot)  # type: ignore[method-assign]
    return client


def first_line(e: BaseException) -> str:
    """An exception's first non-blank line (its type name when it has none), at most 300 characters: enough to
    tell failures apart in ``failures.jsonl`` and logs without copying whole provider payloads."""
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def raise_wrapped_endpoint_error(exc: BaseException) -> None:
    """Raise the :class:`EndpointFatalError` or :class:`TransportError` that a client library (Instructor,
    Pydantic AI) wrapped in ``exc``, so the engine aborts or counts the retry instead of seeing a validation
    failure; return when there is none."""
    for kind in (EndpointFatalError, TransportError):
        inner = find_in_chain(exc, kind)
        if inner is not None:
            raise inner from None


def find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s cause/context chain (clients wrap ours)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
