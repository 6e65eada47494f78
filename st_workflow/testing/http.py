"""The plumbing the local API servers share: a quiet keep-alive handler, one way to send a reply, the request log.

Each simulator (``cmr``, ``pds``, ``arxiv``, ``ads``, the hubs, the OpenAI-compatible server) answers with a
:class:`Reply`; how it is written to the socket, and what a vanished client does to the server (nothing), lives here
once.

Example:
    >>> from http.server import ThreadingHTTPServer
    >>> from urllib.request import urlopen
    >>> from st_workflow.testing.background import BackgroundHTTPServer
    >>> class Hello(QuietHandler):
    ...     def do_GET(self) -> None:
    ...         self.send_reply(Reply(200, b"hi", "text/plain"))
    >>> class Srv(BackgroundHTTPServer):
    ...     def __init__(self) -> None:
    ...         super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Hello), "hello")
    >>> with Srv() as srv:
    ...     urlopen(f"http://127.0.0.1:{srv.port}/").read()
    b'hi'
"""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from st_workflow.testing.background import BackgroundHTTPServer

__all__ = ["ApiRequest", "GetServer", "LoggedRequest", "QuietHandler", "Reply", "json_reply"]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body, ``Content-Type`` and the other headers."""

    status: int
    body: bytes
    ctype: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def but(self, **changes: Any) -> Reply:
        """A copy with some fields changed (a fault's version of an answer)."""
        return dataclasses.replace(self, **changes)


def json_reply(
    status: int, obj: Any, headers: dict[str, str] | None = None, ctype: str = "application/json"
) -> Reply:
    """``obj`` as a JSON reply (UTF-8, non-ASCII kept as is, as the real APIs send it)."""
    return Reply(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), ctype, dict(headers or {}))


@dataclasses.dataclass
class LoggedRequest:
    """A request a server received (what the tests assert on)."""

    route: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    at: float
    fault: str | None = None
    status: int | None = None

    def param(self, name: str) -> str | None:
        """First value of a query parameter."""
        return next((v for k, v in self.params if k == name), None)


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    """What an API simulator answers: the request (headers lower-cased) and the serving server's settings."""

    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    base_url: str
    """``http://127.0.0.1:<port>``: for links the answer carries."""
    max_page_items: int | None = None
    """Cap on items per page (fewer than asked, as real servers may), or None."""


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive: clients reuse connections, as against the real endpoints) without the stderr access
    log (the servers keep their own request logs), with :meth:`send_reply` as the one way to answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_reply(self, reply: Reply, *, with_body: bool = True) -> None:
        """Write ``reply`` (``Content-Length`` always set; no body for ``HEAD``: ``with_body=False``). A client that
        hung up meanwhile closes this connection and nothing else: a test server must outlive a killed client."""
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(reply.body)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if with_body:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class GetServer(BackgroundHTTPServer):
    """A threaded server on ``127.0.0.1`` (a free port unless ``port`` is given) that hands every ``GET`` to
    :meth:`handle_get`; :attr:`closing` is set on :meth:`stop`, so a stalled answer waiting on it is cut short."""

    def __init__(self, thread_name: str, port: int = 0) -> None:
        self.closing = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.handle_get(self)

        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        httpd.daemon_threads = True
        super().__init__(httpd, thread_name)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def handle_get(self, handler: QuietHandler) -> None:
        """Answer one ``GET`` (``handler.path``, ``handler.headers``) with ``handler.send_reply``."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and release the port (stalled responses are cut short)."""
        self.closing.set()
        super().stop()
