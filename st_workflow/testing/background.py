"""An HTTP server on a background thread, used as a context manager by the local test servers."""

from __future__ import annotations

import threading
from http.server import HTTPServer
from typing import Self


class BackgroundHTTPServer:
    """Owns ``self._httpd`` (set by the subclass) and the thread that serves it.

    Example:
        >>> from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        >>> class Hello(BackgroundHTTPServer):
        ...     def __init__(self):
        ...         super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler), "hello")
        >>> with Hello() as srv:
        ...     srv.port > 0
        True
    """

    def __init__(self, httpd: HTTPServer, thread_name: str) -> None:
        self._httpd = httpd
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (a free one when it was created with port 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> Self:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
