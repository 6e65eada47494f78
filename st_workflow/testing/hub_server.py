"""A local Hugging Face Hub for downloads: enough of the protocol for ``model_info`` and ``hf_hub_download``.

It serves model repositories held in memory over real HTTP on 127.0.0.1, so ``huggingface_hub`` (pointed at it with
``HF_ENDPOINT``) runs unchanged:

* ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``: the model info (``id``, ``sha``,
  ``siblings`` with ``rfilename``); ``rev`` is a branch or a 40-hex commit sha;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a file, with the headers ``huggingface_hub`` reads (``X-Repo-Commit``,
  ``ETag``, ``Content-Length``);
* unknown repositories, revisions and files answer 404 with the Hub's ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``), so the client raises the same exceptions as against the real Hub.

Every request is recorded (:attr:`HubServer.requests`), so a test can assert which files a client fetched. Uploads
are not served (see ``hub_upload_server``).

Example:
    >>> from urllib.request import urlopen
    >>> with HubServer() as hub:
    ...     sha = hub.add_commit("org/m", {"config.json": b"{}", "onnx/model.onnx": b"x"})
    ...     info = json.load(urlopen(f"{hub.endpoint}/api/models/org/m/revision/main"))
    ...     (info["sha"] == sha, [s["rfilename"] for s in info["siblings"]], hub.requested_files("org/m"))
    (True, ['config.json', 'onnx/model.onnx'], set())
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from st_workflow.testing.background import BackgroundHTTPServer
from st_workflow.testing.http import QuietHandler, Reply

__all__ = ["HubServer", "files_of"]

_SHA = re.compile(r"^[0-9a-f]{40}$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def files_of(directory: str | Path) -> dict[str, bytes]:
    """Every file under ``directory`` keyed by its POSIX path relative to it (what :meth:`add_commit` takes)."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class _Repo:
    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}

    def commit_of(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


class HubServer(BackgroundHTTPServer):
    """In-memory model repositories served with the Hub's download protocol; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        server = self

        class Handler(_Handler):
            hub = server

        super().__init__(ThreadingHTTPServer((host, port), Handler), "hub-server")

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def add_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of ``repo_id`` and return the commit sha."""
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[sha] = dict(files)
            repo.branches[branch] = sha
        return sha

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requested_files(self, repo_id: str) -> set[str]:
        """Paths of ``repo_id`` that were asked for through ``resolve`` (HEAD or GET)."""
        out = set()
        for _, path in self.requests:
            m = _RESOLVE.match(path)
            if m and m["repo"] == repo_id:
                out.add(m["path"])
        return out

    # ---------------------------------------------------------------- used by the handler
    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))

    def _lookup(self, repo_id: str, rev: str) -> tuple[str | None, str | None, dict[str, bytes] | None]:
        """(error code, commit sha, files) of ``repo_id`` at ``rev``."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return "RepoNotFound", None, None
            sha = repo.commit_of(rev)
            if sha is None:
                return "RevisionNotFound", None, None
            return None, sha, repo.commits[sha]


class _Handler(QuietHandler):  # quiet: tests read hub.requests instead
    hub: HubServer

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub._record(self.command, path)
        if m := _INFO.match(path):
            err, sha, files = self.hub._lookup(m["repo"], m["rev"] or "main")
            if err:
                return self._error(404, err, body)
            assert files is not None
            info = {
                "id": m["repo"],
                "modelId": m["repo"],
                "sha": sha,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
            return self._send(200, json.dumps(info).encode(), "application/json", {}, body)
        if m := _RESOLVE.match(path):
            err, sha, files = self.hub._lookup(m["repo"], m["rev"])
            if err:
                return self._error(404, err, body)
            assert files is not None and sha is not None
            if m["path"] not in files:
                return self._error(404, "EntryNotFound", body, {"X-Repo-Commit": sha})
            data = files[m["path"]]
            etag = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "none"}
            return self._send(200, data, "application/octet-stream", headers, body)
        self._error(404, "EntryNotFound", body)

    def _error(self, status: int, code: str, body: bool, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps({"error": code}).encode()
        self._send(status, payload, "application/json", {"X-Error-Code": code, **(headers or {})}, body)

    def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str], body: bool) -> None:
        self.send_reply(Reply(status, data, ctype, headers), with_body=body)
