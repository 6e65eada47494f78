"""A local NASA ADS search API (``/v1/search/query``) that speaks the documented protocol, for tests.

What it does as ADS does: bearer-token auth (401 without or with a wrong token); Solr ``q`` and ``fq`` over simple
fields (``*:*``, ``field:value``, ``field:"phrase"``, ``field:[A TO B]`` with ``*`` open ends, terms joined by
whitespace or ``AND``, parentheses); ``fl`` projection (default ``id``); ``sort`` on one or more fields with ties
broken by the following ones; cursor paging (``cursorMark=*``, then ``nextCursorMark``; the same mark comes back once
the listing is exhausted; a cursor without a sort ending in the unique ``bibcode`` is a 400, as in Solr); ``rows`` up
to 2000; ``X-RateLimit-Limit/Remaining/Reset`` (epoch seconds) on every answer, decrementing per request, and 429
when the quota is used up until the window resets. Faults (``429``, ``503``, ``drop``, ``stall``, ``truncate``)
come from the shared :mod:`st_workflow.testing.faults` queue on route ``ads``.

Records: :func:`sample_docs` maps the bundled real arXiv OAI-DC sample records (new-style ids only) to ADS fields,
since no ADS sample data is bundled: bibcode ``YYYYarXivNNNN.NNNNX`` or ``YYYYarXivNNNNNNNNNX`` (ADS's 19-character
e-print bibcode: year, ``arXiv``, the id, the first author's initial), title as a one-element list (ADS sends titles as lists), abstract, authors,
subjects as keywords, ``pubdate`` ``YYYY-MM-00``, ``entry_date``/``indexed`` from the first version's date.

Example::

    with AdsServer(token="t") as srv:
        src = AdsSource(name="ads", base_url=srv.base_url, token=SecretRef(env="ADS_API_TOKEN"))
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from st_workflow.testing.background import BackgroundHTTPServer
from st_workflow.testing.faults import FaultQueue, apply
from st_workflow.testing.http import LoggedRequest, QuietHandler, Reply, json_reply
from st_workflow.testing.samples import load_jsonl, sample_path

__all__ = ["AdsQueryError", "AdsServer", "parse_ads_query", "sample_docs"]

SEARCH_PATH = "/v1/search/query"
SAMPLE = "arxiv/arxiv_meta.oai_dc.astro_earth_space.220.jsonl"
MAX_ROWS = 2000
UNIQUE = "bibcode"
_NEW_ID = re.compile(r"^\d{4}\.\d{4,5}$")
_TEXT_FIELDS = {"title", "abstract", "abs", "keyword", "author", "pub"}


class AdsQueryError(ValueError):
    """A ``q``/``fq`` this simulator does not understand (answered 400, like a Solr syntax error)."""


# ================================================================================================ records
def sample_docs() -> list[dict[str, Any]]:
    """The bundled real arXiv records with new-style ids, as ADS documents (see the module docstring)."""
    docs = []
    for n, (arxiv_id, rec) in enumerate(load_jsonl(sample_path(SAMPLE)), 1):
        if not _NEW_ID.match(arxiv_id) or not rec.get("title") or not rec.get("description"):
            continue
        date = rec["date"][0]
        creators = rec.get("creator") or []
        initial = (creators[0][:1].upper() if creators else ".") or "."
        number = (
            arxiv_id.replace(".", "") if len(arxiv_id) == 10 else arxiv_id
        )  # ADS drops the dot of 5-digit ids
        bibcode = f"{date[:4]}arXiv{number}{initial}"
        stamp = f"{date}T00:00:00Z"
        docs.append(
            {
                "id": str(n),
                "bibcode": bibcode,
                "title": [" ".join(rec["title"][0].split())],
                "abstract": rec["description"][0].strip(),
                "author": creators,
                "year": date[:4],
                "pubdate": f"{date[:7]}-00",
                "date": f"{date[:7]}-01T00:00:00Z",
                "pub": "arXiv e-prints",
                "doctype": "eprint",
                "keyword": rec.get("subject") or [],
                "identifier": [f"arXiv:{arxiv_id}", bibcode],
                "entry_date": stamp,
                "indexed": stamp,
            }
        )
    return docs


# ================================================================================================ queries
_TOKEN = re.compile(
    r'\s*(\(|\)|AND\b|OR\b|[A-Za-z_]+:\[[^\]]*\]|[A-Za-z_]+:"[^"]*"|\*:\*|[A-Za-z_]+:[^\s()]+)'
)


def _values(doc: dict[str, Any], field: str) -> list[str]:
    v = doc.get("abstract" if field == "abs" else field)
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _term(tok: str) -> Callable[[dict[str, Any]], bool]:
    if tok == "*:*":
        return lambda d: True
    field, _, value = tok.partition(":")
    if value.startswith("["):
        lo, sep, hi = value[1:-1].partition(" TO ")
        if not sep:
            raise AdsQueryError(f"range {tok!r}: expected [A TO B]")
        lo, hi = lo.strip().strip('"'), hi.strip().strip('"')
        return lambda d: any((lo == "*" or v >= lo) and (hi == "*" or v <= hi) for v in _values(d, field))
    value = value.strip('"').casefold()
    if field in _TEXT_FIELDS:  # phrase/word containment, case-insensitive
        return lambda d: any(value in v.casefold() for v in _values(d, field))
    return lambda d: any(value == v.casefold() for v in _values(d, field))


def parse_ads_query(q: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for ``q``: terms joined by whitespace/``AND`` (all must hold) or ``OR``, parentheses.

    Example:
        >>> p = parse_ads_query('(year:2007) AND entry_date:["2007-06-01T00:00:00Z" TO *]')
        >>> p({"year": "2007", "entry_date": "2007-06-14T00:00:00Z"}), p({"year": "2007", "entry_date": "2007-01-01"})
        (True, False)
    """
    pos, toks = 0, []
    q = q.strip()
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if m is None:
            raise AdsQueryError(f"cannot parse q at {q[pos : pos + 30]!r}")
        toks.append(m.group(1))
        pos = m.end()
        while pos < len(q) and q[pos].isspace():
            pos += 1
    if not toks:
        raise AdsQueryError("empty q")
    i = 0

    def expr() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        parts = [conj()]
        while i < len(toks) and toks[i] == "OR":
            i += 1
            parts.append(conj())
        return lambda d: any(p(d) for p in parts)

    def conj() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        parts = [atom()]
        while i < len(toks) and toks[i] not in (")", "OR"):
            if toks[i] == "AND":
                i += 1
            parts.append(atom())
        return lambda d: all(p(d) for p in parts)

    def atom() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        if i >= len(toks):
            raise AdsQueryError("q ends early")
        tok = toks[i]
        i += 1
        if tok == "(":
            inner = expr()
            if i >= len(toks) or toks[i] != ")":
                raise AdsQueryError("unbalanced parentheses in q")
            i += 1
            return inner
        if tok in (")", "AND", "OR"):
            raise AdsQueryError(f"unexpected {tok!r} in q")
        return _term(tok)

    pred = expr()
    if i != len(toks):
        raise AdsQueryError(f"unexpected {toks[i]!r} in q")
    return pred


def _parse_sort(sort: str) -> list[tuple[str, bool]]:
    out = []
    for part in sort.split(","):
        bits = part.split()
        if not bits:
            continue
        if len(bits) != 2 or bits[1] not in ("asc", "desc"):
            raise AdsQueryError(f"sort {part.strip()!r}: expected 'field asc|desc'")
        out.append((bits[0], bits[1] == "desc"))
    return out


def _sort_key(doc: dict[str, Any], field: str) -> str:
    vals = _values(doc, field)
    return vals[0] if vals else ""


class _Desc:
    """Reverses the order of a string inside a sort key (for ``desc`` fields)."""

    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return self.v > other.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.v == other.v


def _encode_cursor(values: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def _decode_cursor(mark: str) -> list[str]:
    try:
        values = json.loads(base64.urlsafe_b64decode(mark.encode()))
    except (ValueError, json.JSONDecodeError) as e:
        raise AdsQueryError(f"unable to parse cursorMark {mark!r}") from e
    if not isinstance(values, list):
        raise AdsQueryError(f"unable to parse cursorMark {mark!r}")
    return [str(v) for v in values]


# ================================================================================================ the server
class AdsServer(BackgroundHTTPServer):
    """The ADS search API on ``127.0.0.1`` (a free port): :attr:`base_url` is the value for ``AdsSource.base_url``.

    Args:
        token: the one bearer token accepted.
        docs: the records (default: :func:`sample_docs`).
        rate_limit: requests per window (``X-RateLimit-Limit``).
        window_s: window length; the quota resets at ``X-RateLimit-Reset`` (whole epoch seconds, as ADS sends).
    """

    def __init__(
        self,
        token: str = "test-ads-token",
        docs: list[dict[str, Any]] | None = None,
        *,
        rate_limit: int = 5000,
        window_s: float = 86400.0,
    ) -> None:
        self.token = token
        self.docs: dict[str, dict[str, Any]] = {
            d["bibcode"]: dict(d) for d in (sample_docs() if docs is None else docs)
        }
        self.rate_limit = rate_limit
        self.window_s = window_s
        self.faults = FaultQueue(("429", "503", "stall", "truncate", "drop"))
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._used = 0
        self._reset = 0
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server._handle(self)

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "ads-server")

    @property
    def base_url(self) -> str:
        """Value for ``AdsSource.base_url`` (``/search/query`` is appended by the client)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self._closing.set()
        super().stop()

    # ------------------------------------------------------------------------------------------ records
    def put(self, doc: dict[str, Any]) -> None:
        """Add or replace a record (by bibcode)."""
        with self._lock:
            self.docs[doc["bibcode"]] = dict(doc)

    def revise(self, bibcode: str, indexed: str, **changes: Any) -> None:
        """Change a record's fields and stamp it ``indexed`` (what ADS does when it re-indexes a corrected record)."""
        with self._lock:
            self.docs[bibcode] = {**self.docs[bibcode], **changes, "indexed": indexed}

    def search_requests(self) -> list[LoggedRequest]:
        """Requests on the search route, in arrival order."""
        return [r for r in self.requests if r.route == "ads"]

    # ------------------------------------------------------------------------------------------ rate limit
    def _quota(self) -> tuple[bool, dict[str, str]]:
        """Take one request from the quota; ``(allowed, X-RateLimit headers)``."""
        now = time.time()
        with self._lock:
            if now >= self._reset:
                self._used = 0
                self._reset = math.ceil(now + self.window_s)
            allowed = self._used < self.rate_limit
            if allowed:
                self._used += 1
            headers = {
                "X-RateLimit-Limit": str(self.rate_limit),
                "X-RateLimit-Remaining": str(self.rate_limit - self._used),
                "X-RateLimit-Reset": str(self._reset),
            }
        return allowed, headers

    # ------------------------------------------------------------------------------------------ answering
    def _handle(self, h: QuietHandler) -> None:
        parts = urlsplit(h.path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        route = "ads" if parts.path.rstrip("/") == SEARCH_PATH else "other"
        log = LoggedRequest(
            route, parts.path, params, {k.lower(): v for k, v in h.headers.items()}, time.time()
        )
        self.requests.append(log)
        if route != "ads":
            reply: Reply | None = json_reply(404, {"error": f"no route {parts.path}"})
        elif h.headers.get("Authorization") != f"Bearer {self.token}":
            reply = json_reply(401, {"error": "Unauthorized"})
        else:
            allowed, limits = self._quota()
            if not allowed:
                reply = json_reply(429, {"error": "Too many requests"}, limits)
            else:
                fault = self.faults.take("ads")
                log.fault = fault.kind if fault else None
                reply = apply(fault, h, lambda: self._answer(params, limits), closing=self._closing)
                if reply is not None and fault is not None and fault.kind in ("429", "503"):
                    reply = reply.but(headers={**limits, **reply.headers})
        if reply is None:
            return
        log.status = reply.status
        h.send_reply(reply)

    def _answer(self, params: list[tuple[str, str]], limits: dict[str, str]) -> Reply:
        p: dict[str, list[str]] = {}
        for k, v in params:
            p.setdefault(k, []).append(v)
        try:
            return json_reply(200, self._search(p), limits)
        except AdsQueryError as e:
            return json_reply(400, {"error": str(e)}, limits)

    def _search(self, p: dict[str, list[str]]) -> dict[str, Any]:
        q = (p.get("q") or [""])[0]
        if not q.strip():
            raise AdsQueryError("q is required")
        preds = [parse_ads_query(q), *(parse_ads_query(f) for f in p.get("fq", []))]
        fl = [f.strip() for f in (p.get("fl") or ["id"])[0].split(",") if f.strip()]
        try:
            rows = int((p.get("rows") or ["10"])[0])
        except ValueError as e:
            raise AdsQueryError("rows must be an integer") from e
        rows = max(0, min(rows, MAX_ROWS))
        sort = _parse_sort((p.get("sort") or ["date desc"])[0])
        cursor = (p.get("cursorMark") or [None])[0]
        with self._lock:
            hits = [d for d in self.docs.values() if all(pr(d) for pr in preds)]

        def key(d: dict[str, Any]) -> list[Any]:
            return [_Desc(_sort_key(d, f)) if desc else _sort_key(d, f) for f, desc in sort]

        hits.sort(key=key)
        header = {"status": 0, "QTime": 1, "params": {k: v[0] for k, v in p.items()}}
        if cursor is None:
            start = int((p.get("start") or ["0"])[0])
            page = hits[start : start + rows]
            return {
                "responseHeader": header,
                "response": {"numFound": len(hits), "start": start, "docs": _project(page, fl)},
            }
        if not sort or sort[-1][0] != UNIQUE:
            raise AdsQueryError(
                "Cursor functionality requires a sort containing a uniqueKey field tie breaker (bibcode)"
            )
        if cursor != "*":
            after = _decode_cursor(cursor)
            if len(after) != len(sort):
                raise AdsQueryError(f"cursorMark {cursor!r} does not match the sort")
            probe = {f: v for (f, _), v in zip(sort, after, strict=True)}
            mark = key(probe)
            hits = [d for d in hits if mark < key(d)]
        page = hits[:rows]
        nxt = _encode_cursor([_sort_key(page[-1], f) for f, _ in sort]) if page else cursor
        total = len([d for d in self.docs.values() if all(pr(d) for pr in preds)])
        return {
            "responseHeader": header,
            "response": {"numFound": total, "start": 0, "docs": _project(page, fl)},
            "nextCursorMark": nxt,
        }


def _project(docs: list[dict[str, Any]], fl: list[str]) -> list[dict[str, Any]]:
    return [{f: d[f] for f in fl if f in d} for d in docs]
