"""Fault injection for the local API servers: a queue of scripted failures and the one place they are applied.

A test says what should go wrong (``queue.inject("429", route="cmr", retry_after=1, after=1)``); the server takes
the next matching fault for each request (:meth:`FaultQueue.take`) and lets :func:`apply` shape its answer. The kinds
are the ways real APIs fail a paging client:

* ``429`` / ``503``: answered at once, with ``Retry-After`` when given, nothing else computed;
* ``drop``: the connection is closed without an answer;
* ``stall``: the answer is held ``stall_s`` seconds (past the client's timeout), cut short when the server stops;
* ``truncate``: half the body is sent with a matching ``Content-Length``, so the client gets a complete HTTP
  message whose payload does not parse;
* ``partial``: API-specific (CMR flags a timed-out page, PDS silently loses a shard's items): the server passes
  its own ``partial`` function to :func:`apply`; without one the answer is unchanged.

Example:
    >>> q = FaultQueue()
    >>> q.inject("503", route="pds", after=1)
    >>> q.take("cmr") is None, q.take("pds") is None, q.take("pds").kind, q.pending()
    (True, True, '503', 0)
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import deque
from collections.abc import Callable

from st_workflow.testing.http import QuietHandler, Reply

__all__ = ["FAULT_KINDS", "Fault", "FaultQueue", "apply"]

FAULT_KINDS = ("429", "503", "stall", "truncate", "drop", "partial")


@dataclasses.dataclass
class Fault:
    """One injected failure, applied to the next request on ``route`` (a server's route name; None: any)."""

    kind: str
    route: str | None = None
    retry_after: str | None = None
    stall_s: float = 5.0
    after: int = 0
    """Let this many matching requests through untouched before failing (e.g. fail mid-way through paging)."""


class FaultQueue:
    """Injected faults, consumed first-in first-out by the requests they match; thread-safe."""

    def __init__(self, kinds: tuple[str, ...] = FAULT_KINDS) -> None:
        self.kinds = kinds
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()

    def inject(
        self,
        kind: str,
        *,
        route: str | None = None,
        times: int = 1,
        after: int = 0,
        retry_after: str | int | None = None,
        stall_s: float = 5.0,
    ) -> None:
        """Make ``times`` requests on ``route`` (None: any) fail with ``kind``, after letting ``after`` matching
        requests through (``after=1``: the first page succeeds, the next ones fail)."""
        if kind not in self.kinds:
            raise ValueError(f"unknown fault {kind!r}; use one of {self.kinds}")
        ra = None if retry_after is None else str(retry_after)
        with self._lock:
            for i in range(times):
                self._faults.append(Fault(kind, route, ra, stall_s, after if i == 0 else 0))

    def pending(self) -> int:
        """Injected faults not yet consumed."""
        with self._lock:
            return len(self._faults)

    def take(self, route: str) -> Fault | None:
        """The fault for this request on ``route``, if any: the first one queued for it (or for any route), unless
        it still lets requests through (then one fewer)."""
        with self._lock:
            for i, f in enumerate(self._faults):
                if f.route in (None, route):
                    if f.after > 0:
                        f.after -= 1
                        return None
                    del self._faults[i]
                    return f
        return None


def apply(
    fault: Fault | None,
    handler: QuietHandler,
    answer: Callable[[], Reply],
    *,
    closing: threading.Event,
    partial: Callable[[Reply], Reply] | None = None,
) -> Reply | None:
    """The reply to send for one request under ``fault`` (None: ``answer()`` unchanged), or None when the fault
    dropped the connection (nothing may be sent then). ``answer`` is not called for ``429``/``503``/``drop``;
    ``closing`` cuts a ``stall`` short when the server stops."""
    if fault is None:
        return answer()
    if fault.kind == "drop":
        handler.close_connection = True
        return None
    if fault.kind in ("429", "503"):
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        body = json.dumps({"errors": [f"injected {fault.kind}"]}).encode()
        return Reply(int(fault.kind), body, "application/json", headers)
    reply = answer()
    if fault.kind == "stall":
        closing.wait(fault.stall_s)
    elif fault.kind == "truncate":
        reply = reply.but(body=reply.body[: max(1, len(reply.body) // 2)])
    elif fault.kind == "partial" and partial is not None and reply.status == 200:
        reply = partial(reply)
    return reply
