"""A local HTTP server that speaks the Hugging Face Hub *upload* protocol, as ``huggingface_hub`` and ``datasets``
call it.

It exists so that the push after promotion (``st_workflow.training.hub``), its retries and its error messages run
against the real client code paths offline. Point a process at it with ``HF_ENDPOINT=<server.url>`` (read when
``huggingface_hub``/``datasets`` are imported) and ``HF_HUB_OFFLINE=0``. It is a ``ThreadingHTTPServer`` on
``127.0.0.1`` that answers what ``HfApi.create_repo``, ``upload_folder``/``create_commit`` and
``Dataset.push_to_hub`` send:

* ``POST /api/repos/create`` (``{"name", "organization", "type", "visibility"|"private"}``): 200 with the repo URL,
  409 when it exists. A new repo holds one commit with ``.gitattributes``, as on the Hub.
* ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: repo info (``id``, ``sha``, ``siblings``, ``private``).
* ``POST /api/{type}s/{repo}/preupload/{rev}``: ``uploadMode`` ``"lfs"`` for a file the repo's
  ``.gitattributes`` routes to LFS (``*.safetensors``, ``*.parquet``, ...) or over 10 MiB, ``"regular"`` otherwise,
  as the Hub decides; with the ``oid`` of a file the revision already holds, so unchanged files are skipped.
* The legacy Git LFS upload: ``POST /[datasets/]{repo}.git/info/lfs/objects/batch`` (``basic`` transfer, no
  actions for an object already stored), the ``PUT`` of the content (checked against its sha256) and ``verify``.
  The server does not speak Xet: run clients with ``HF_HUB_DISABLE_XET=1`` (``datasets.push_to_hub`` needs LFS for
  its Parquet shards: it deletes a shard once it is pre-uploaded).
* ``POST /api/{type}s/{repo}/commit/{rev}``: the NDJSON commit (``header``, ``file`` base64, ``lfsFile`` of an
  uploaded object, ``deletedFile``, ``deletedFolder``); ``parentCommit`` other than the head is the Hub's 412.
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``), ``POST .../paths-info/{rev}``, ``GET|HEAD
  /[datasets/]{repo}/resolve/{rev}/{path}`` (``Range``), ``POST /api/validate-yaml``, ``GET /api/whoami-v2``.

Errors are the Hub's: no or an unknown token is 401 (``X-Error-Message: Invalid credentials in Authorization
header`` for an unknown one); a token without write access to the namespace is 403; an unknown repo, revision or
file is 404 with ``X-Error-Code`` ``RepoNotFound``/``RevisionNotFound``/``EntryNotFound``; a private repo is 404 to
a reader without access. Faults are injected on demand (:meth:`HubUploadServer.fail`) and consumed by the next
matching requests. Every request is logged in ``requests`` (method, path, status, whether it was authenticated;
never the token), and every commit's files are kept in memory (:meth:`HubUploadServer.files`).

Example::

    with HubUploadServer(tokens={"hf_test": "alice"}) as hub:
        hub.fail("commit", status=500)         # the first commit answers 500
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        ...                                    # run a process that pushes to alice/model
        hub.files("alice/model")               # {"config.json": b"...", ...}
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import re
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from st_workflow.testing.background import BackgroundHTTPServer
from st_workflow.testing.http import QuietHandler, Reply

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

_API_REPO = re.compile(r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
_LFS_BATCH = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"
)
_LFS_OBJECT = re.compile(
    r"^/lfs/(?P<action>upload|verify)/(?P<kind>\w+)/(?P<repo>[^/]+/[^/]+)(?:/(?P<oid>[0-9a-f]{64}))?$"
)
LFS_THRESHOLD = 10 * 1024 * 1024
_RESOLVE = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def git_blob_oid(content: bytes) -> str:
    """The git blob id of ``content`` (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclasses.dataclass
class Commit:
    """One commit: its id, message, the whole tree after it (path -> bytes) and which paths are LFS files."""

    oid: str
    summary: str
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()


@dataclasses.dataclass
class Repo:
    """A repository: type, id, visibility, its linear ``main`` history and its LFS store (sha256 -> bytes)."""

    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit]
    lfs_objects: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def is_lfs(self, path: str, size: int) -> bool:
        """Whether the Hub would store ``path`` in LFS: a ``filter=lfs`` pattern of ``.gitattributes``, or size."""
        attributes = self.head.files.get(".gitattributes", b"").decode(errors="replace")
        patterns = [ln.split()[0] for ln in attributes.splitlines() if "filter=lfs" in ln and ln.split()]
        name = path.rsplit("/", 1)[-1]
        return size > LFS_THRESHOLD or any(
            fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns
        )

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        """The commit a revision names: a branch (``main``) or a full commit id."""
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


@dataclasses.dataclass
class Fault:
    """An injected failure: the next ``times`` requests to ``endpoint`` (of ``repo_type``, if set) get ``status``."""

    endpoint: str
    status: int
    times: int
    repo_type: str | None = None


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it (the token itself is never kept)."""

    method: str
    path: str
    endpoint: str
    status: int
    authenticated: bool
    repo_id: str | None = None
    repo_type: str | None = None


class HubError(Exception):
    """An error answer: status, message and the Hub's ``X-Error-Code`` (if any)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubUploadServer(BackgroundHTTPServer):
    """The Hub's upload API over in-memory repositories.

    ``tokens`` maps a token to the user it authenticates; that user may write to its own namespace and to the
    ``orgs`` it belongs to (``{user: [org, ...]}``). ``read_only`` tokens authenticate but may not write (403).
    """

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        *,
        orgs: dict[str, list[str]] | None = None,
        read_only: set[str] | None = None,
        port: int = 0,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.read_only = set(read_only or ())
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._counter = 0
        handler = type("HubUploadHandler", (_Handler,), {"hub": self})
        super().__init__(ThreadingHTTPServer(("127.0.0.1", port), handler), "hub-upload-server")

    @property
    def url(self) -> str:
        """The endpoint to put in ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def fail(self, endpoint: str, status: int = 500, times: int = 1, repo_type: str | None = None) -> None:
        """Answer the next ``times`` requests to ``endpoint`` (``create``, ``preupload``, ``commit``, ``info``,
        ``tree``, ``paths-info``, ``resolve``) with ``status``, optionally only for ``repo_type`` repos."""
        with self._lock:
            self._faults.append(Fault(endpoint, status, times, repo_type))

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repository at a revision (a copy), or ``{}`` when the repo does not exist."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            commit = repo.at(revision) if repo else None
            return dict(commit.files) if commit else {}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """The commits of a repository, oldest first."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            return list(repo.commits) if repo else []

    def requests_to(self, endpoint: str, repo_type: str | None = None) -> list[RequestRecord]:
        """The logged requests to one endpoint (optionally one repo type)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.endpoint == endpoint and (repo_type is None or r.repo_type == repo_type)
            ]

    # -- state changes (called by the handler under the lock) --------------------------------------------------

    def _new_oid(self, summary: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._counter}:{summary}:{time.time_ns()}".encode()).hexdigest()

    def _take_fault(self, endpoint: str, repo_type: str | None) -> int | None:
        for f in self._faults:
            if f.endpoint == endpoint and (f.repo_type is None or f.repo_type == repo_type):
                f.times -= 1
                if f.times <= 0:
                    self._faults.remove(f)
                return f.status
        return None

    def _user(self, token: str | None) -> str | None:
        if token is None:
            return None
        if token not in self.tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.tokens[token]

    def _may_write(self, user: str | None, token: str | None, repo_id: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource.")
        namespace = repo_id.split("/", 1)[0]
        if token in self.read_only or (namespace != user and namespace not in self.orgs.get(user, [])):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")

    def _readable(self, kind: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((kind, repo_id))
        namespace = repo_id.split("/", 1)[0]
        if repo is None or (
            repo.private
            and (user is None or (namespace != user and namespace not in self.orgs.get(user, [])))
        ):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, kind: str, repo_id: str, user: str | None, token: str | None) -> Repo:
        self._may_write(user, token, repo_id)
        return self._readable(kind, repo_id, user)


def _revision(repo: Repo, revision: str) -> Commit:
    commit = repo.at(unquote(revision))
    if commit is None:
        raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
    return commit


def _entries(commit: Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree entries under ``prefix`` (files and folders), in the Hub's shape, sorted by path."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    out: dict[str, dict[str, Any]] = {}
    for path in commit.files:
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        if len(parts) == 1 or recursive:
            out[path] = _file_entry(commit, path)
        if len(parts) > 1:
            depth = len(parts) - 1 if recursive else 1
            for i in range(1, depth + 1):
                folder = base + "/".join(parts[:i])
                out.setdefault(
                    folder, {"type": "directory", "oid": git_blob_oid(folder.encode()), "path": folder}
                )
    return [out[k] for k in sorted(out)]


def _file_entry(commit: Commit, path: str) -> dict[str, Any]:
    content = commit.files[path]
    entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": path}
    if path in commit.lfs:
        pointer = _lfs_pointer(content)
        entry["oid"] = git_blob_oid(pointer)
        entry["lfs"] = {
            "oid": hashlib.sha256(content).hexdigest(),
            "size": len(content),
            "pointerSize": len(pointer),
        }
    return entry


def _lfs_pointer(content: bytes) -> bytes:
    oid = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n".encode()


class _Handler(QuietHandler):  # quiet: the request log is in ``hub.requests``
    hub: HubUploadServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT") else b""
        token = self._token()
        record = RequestRecord(method, url.path, "unknown", 500, token is not None)
        try:
            with self.hub._lock:
                status, payload, headers = self._route(method, url.path, query, body, token, record)
        except HubError as e:
            status, payload = e.status, {"error": e.message}
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
        record.status = status
        with self.hub._lock:
            self.hub.requests.append(record)
        self._send(method, status, payload, headers)

    def _send(self, method: str, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        ctype = headers.pop("Content-Type", ctype)
        self.send_reply(Reply(status, data, ctype, headers), with_body=method != "HEAD")

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes,
        token: str | None,
        record: RequestRecord,
    ) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        user = hub._user(token)
        if path == "/api/whoami-v2" and method == "GET":
            record.endpoint = "whoami"
            if user is None:
                raise HubError(401, INVALID_CREDENTIALS)
            return (
                200,
                {"type": "user", "name": user, "orgs": [{"name": o} for o in hub.orgs.get(user, [])]},
                {},
            )
        if path == "/api/validate-yaml" and method == "POST":
            record.endpoint = "validate-yaml"
            return self._validate_yaml(json.loads(body or b"{}"))
        if path == "/api/repos/create" and method == "POST":
            record.endpoint = "create"
            req = json.loads(body or b"{}")
            kind = req.get("type") or "model"
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else str(req["name"])
            if "/" not in repo_id and user:
                repo_id = f"{user}/{repo_id}"
            record.repo_id, record.repo_type = repo_id, kind
            self._fault("create", kind)
            hub._may_write(user, token, repo_id)
            url = f"{hub.url}/{URL_PREFIX[kind]}{repo_id}"
            if (kind, repo_id) in hub.repos:
                return 409, {"error": f"You already created this {kind} repo", "url": url}, {}
            private = req.get("visibility") == "private" or bool(req.get("private"))
            first = Commit(
                hub._new_oid("initial commit"), "initial commit", {".gitattributes": GITATTRIBUTES}
            )
            hub.repos[(kind, repo_id)] = Repo(kind, repo_id, private, [first])
            return 200, {"url": url, "name": repo_id, "id": hub._new_oid(repo_id)[:24]}, {}
        m = _API_REPO.match(path)
        if m:
            kind, repo_id = REPO_TYPES[m["kind"]], m["repo"]
            record.repo_id, record.repo_type = repo_id, kind
            return self._repo_api(method, kind, repo_id, m["rest"] or "", query, body, user, token, record)
        m = _LFS_BATCH.match(path)
        if m and method == "POST":
            kind, repo_id = REPO_TYPES.get(m["kind"] or "models", "model"), m["repo"]
            record.endpoint, record.repo_id, record.repo_type = "lfs-batch", repo_id, kind
            self._fault("lfs-batch", kind)
            return self._lfs_batch(hub._writable(kind, repo_id, user, token), json.loads(body or b"{}"))
        m = _LFS_OBJECT.match(path)
        if m:  # a pre-signed storage URL (as S3's): no token is needed, the URL is the credential
            repo = hub.repos.get((m["kind"], m["repo"]))
            record.endpoint, record.repo_id, record.repo_type = f"lfs-{m['action']}", m["repo"], m["kind"]
            self._fault(record.endpoint, m["kind"])
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            if m["action"] == "upload" and method == "PUT" and m["oid"]:
                if hashlib.sha256(body).hexdigest() != m["oid"]:
                    raise HubError(400, f"content does not match sha256 {m['oid']}")
                repo.lfs_objects[m["oid"]] = body
                return 200, b"", {}
            if m["action"] == "verify" and method == "POST":
                req = json.loads(body or b"{}")
                stored = repo.lfs_objects.get(str(req.get("oid")))
                if stored is None or len(stored) != req.get("size"):
                    raise HubError(404, f"LFS object {req.get('oid')} was not uploaded")
                return 200, {"success": True}, {}
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            kind, repo_id = REPO_TYPES.get(m["kind"] or "models", "model"), m["repo"]
            record.endpoint, record.repo_id, record.repo_type = "resolve", repo_id, kind
            self._fault("resolve", kind)
            commit = _revision(hub._readable(kind, repo_id, user), m["rev"])
            name = unquote(m["path"])
            if name not in commit.files:
                raise HubError(404, "Entry not found", "EntryNotFound")
            return self._file(commit, name)
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    def _fault(self, endpoint: str, kind: str | None) -> None:
        status = self.hub._take_fault(endpoint, kind)
        if status is not None:
            raise HubError(status, f"injected {status} on {endpoint}")

    def _file(self, commit: Commit, name: str) -> tuple[int, Any, dict[str, str]]:
        content = commit.files[name]
        headers = {
            "ETag": f'"{git_blob_oid(content)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if rng:
            start = int(rng[1]) if rng[1] else max(0, len(content) - int(rng[2] or 0))
            end = min(int(rng[2]), len(content) - 1) if rng[1] and rng[2] else len(content) - 1
            if start >= len(content):
                headers["Content-Range"] = f"bytes */{len(content)}"
                return 416, b"", headers
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, content[start : end + 1], headers
        return 200, content, headers

    def _validate_yaml(self, req: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        content = str(req.get("content") or "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        if not m:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        try:
            meta = yaml.safe_load(m[1])
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []}, {}
        if meta is not None and not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _repo_api(
        self,
        method: str,
        kind: str,
        repo_id: str,
        rest: str,
        query: dict[str, list[str]],
        body: bytes,
        user: str | None,
        token: str | None,
        record: RequestRecord,
    ) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        parts = rest.strip("/").split("/", 1) if rest.strip("/") else []
        action = parts[0] if parts else "info"
        arg = parts[1] if len(parts) > 1 else "main"
        record.endpoint = "info" if action == "revision" else action
        if action in ("preupload", "commit"):
            self._fault(action, kind)
            repo = hub._writable(kind, repo_id, user, token)
            if unquote(arg) != "main":
                raise HubError(404, f"Invalid rev id: {unquote(arg)}", "RevisionNotFound")
            return self._preupload(repo, body) if action == "preupload" else self._commit(repo, body)
        if action in ("info", "revision") and method == "GET":
            self._fault("info", kind)
            repo = hub._readable(kind, repo_id, user)
            commit = _revision(repo, arg)
            info = {
                "id": repo_id,
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "author": repo_id.split("/", 1)[0],
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                "tags": [],
            }
            return 200, info, {}
        if action == "tree" and method == "GET":
            self._fault("tree", kind)
            rev, _, sub = arg.partition("/")
            commit = _revision(hub._readable(kind, repo_id, user), rev)
            sub = unquote(sub)
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
            if (
                sub
                and sub not in commit.files
                and not any(p.startswith(sub.rstrip("/") + "/") for p in commit.files)
            ):
                raise HubError(404, f"{sub} does not exist on {rev}", "EntryNotFound")
            if sub in commit.files:
                return 200, [_file_entry(commit, sub)], {}
            return 200, _entries(commit, sub, recursive), {}
        if action == "paths-info" and method == "POST":
            self._fault("paths-info", kind)
            commit = _revision(hub._readable(kind, repo_id, user), arg)
            ctype = self.headers.get("Content-Type") or ""
            req = json.loads(body) if "json" in ctype else {k: v for k, v in parse_qs(body.decode()).items()}
            paths = req.get("paths") or []
            out: list[dict[str, Any]] = []
            for p in [paths] if isinstance(paths, str) else paths:
                p = p.strip("/")
                if p in commit.files:
                    out.append(_file_entry(commit, p))
                elif any(f.startswith(p + "/") for f in commit.files) or p == "":
                    out.append({"type": "directory", "oid": git_blob_oid(p.encode()), "path": p})
            return 200, out, {}
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    def _preupload(self, repo: Repo, body: bytes) -> tuple[int, Any, dict[str, str]]:
        files = json.loads(body or b"{}").get("files") or []
        head = repo.head
        out = []
        for f in files:
            lfs = repo.is_lfs(f["path"], int(f.get("size") or 0))
            entry: dict[str, Any] = {
                "path": f["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            if f["path"] in head.files:  # the client compares it with its own oid to skip unchanged files
                content = head.files[f["path"]]
                entry["oid"] = hashlib.sha256(content).hexdigest() if lfs else git_blob_oid(content)
            out.append(entry)
        return 200, {"files": out, "commitOid": head.oid}, {}

    def _lfs_batch(self, repo: Repo, req: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if req.get("operation") != "upload":
            raise HubError(400, f"unsupported LFS operation {req.get('operation')!r}")
        if "basic" not in (req.get("transfers") or ["basic"]):
            raise HubError(400, "only the basic LFS transfer is offered")
        base = f"{self.hub.url}/lfs"
        objects = []
        for obj in req.get("objects") or []:
            out: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in repo.lfs_objects:
                where = f"{repo.repo_type}/{repo.repo_id}"
                out["actions"] = {
                    "upload": {"href": f"{base}/upload/{where}/{obj['oid']}"},
                    "verify": {"href": f"{base}/verify/{where}"},
                }
            objects.append(out)
        return (
            200,
            {"transfer": "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _commit(self, repo: Repo, body: bytes) -> tuple[int, Any, dict[str, str]]:
        ops = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((o["value"] for o in ops if o.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "Missing commit header with a summary")
        parent = header.get("parentCommit")
        if parent and parent != repo.head.oid:
            raise HubError(412, f"A commit has happened since. Please refresh and try again. ({parent})")
        files = dict(repo.head.files)
        lfs = set(repo.head.lfs)
        for op in ops:
            key, value = op.get("key"), op.get("value") or {}
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(
                        404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound"
                    )
                del files[value["path"]]
                lfs.discard(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
                    lfs.discard(p)
            elif key == "lfsFile":
                content = repo.lfs_objects.get(str(value.get("oid")))
                if content is None or len(content) != value.get("size"):
                    raise HubError(
                        422, f"LFS object {value.get('oid')} for {value.get('path')} was never uploaded"
                    )
                files[value["path"]] = content
                lfs.add(value["path"])
            elif key != "header":
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit = Commit(self.hub._new_oid(header["summary"]), header["summary"], files, frozenset(lfs))
        repo.commits.append(commit)
        url = f"{self.hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}, {}


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="A local Hugging Face Hub upload API (in memory).")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--token", action="append", default=[], metavar="TOKEN=USER")
    args = ap.parse_args()
    with HubUploadServer(dict(t.split("=", 1) for t in args.token), port=args.port) as srv:
        print(f"HF_ENDPOINT={srv.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
