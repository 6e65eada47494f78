"""arXiv export API simulator: Atom feeds of the bundled Kaggle-format papers.

``GET /api/query`` with ``search_query`` (``cat:``, ``ti:``, ``abs:``, ``au:``, ``all:``, ``AND``/``OR``/``ANDNOT``,
``*`` wildcards), ``start``, ``max_results`` (at most 2,000), ``sortBy``/``sortOrder``; entries carry the version
id, ``published``/``updated`` from the version history, authors, DOI, journal reference and categories.
:class:`ArxivApi` is served by :class:`~st_workflow.testing.replay_server.ReplayServer`.
"""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import fnmatch
import re
import threading
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

from st_workflow.testing.http import ApiRequest, Reply
from st_workflow.testing.samples import load_jsonl, sample_path

__all__ = ["ARXIV_FILES", "ArxivApi", "ArxivPapers", "atom_feed"]

ARXIV_FILES = (
    "arxiv/arxiv-metadata-oai-snapshot.head60.jsonl",
    "arxiv/arxiv-browse.abs_converted.physics_astro.519.jsonl",
)


def _rfc2822_to_iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None


class ArxivPapers:
    """Kaggle-format papers served as export-API Atom entries."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        for r in rows:
            self._rows.setdefault(r["id"], r)

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        """Every paper id."""
        with self._lock:
            return sorted(self._rows)

    def put(self, row: dict[str, Any], updated: str | None = None) -> None:
        """Add or revise a paper (a new version dated ``updated``, default now)."""
        row = copy.deepcopy(row)
        when = email.utils.format_datetime(
            dt.datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else dt.datetime.now(dt.UTC),
            usegmt=True,
        )
        versions = list(row.get("versions") or [])
        versions.append({"version": f"v{len(versions) + 1}", "created": when})
        row["versions"] = versions
        with self._lock:
            self._rows[row["id"]] = row

    @staticmethod
    def _entry(r: dict[str, Any]) -> dict[str, Any]:
        versions = r.get("versions") or []
        published = _rfc2822_to_iso(versions[0]["created"]) if versions else None
        updated = _rfc2822_to_iso(versions[-1]["created"]) if versions else None
        return {
            **r,
            "_published": published or "2000-01-01T00:00:00Z",
            "_updated": updated or published or "2000-01-01T00:00:00Z",
            "_version": f"{r['id']}v{max(1, len(versions))}",
        }

    def search(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], int, int]:
        """Entries of one page, the total and the start."""
        pred = _arxiv_query(params.get("search_query", "all:*"))
        with self._lock:
            rows = [self._entry(r) for r in self._rows.values()]
        rows = [r for r in rows if pred(r)]
        sort_by = params.get("sortBy", "relevance")
        field = {"lastUpdatedDate": "_updated", "submittedDate": "_published"}.get(sort_by)
        rows.sort(
            key=(lambda r: (r[field], r["id"])) if field else (lambda r: r["id"]),
            reverse=params.get("sortOrder", "descending") == "descending" and field is not None,
        )
        start, size = int(params.get("start", 0)), min(int(params.get("max_results", 10)), 2000)
        return rows[start : start + size], len(rows), start


def _arxiv_query(q: str) -> Callable[[dict[str, Any]], bool]:
    clauses = re.split(r"\s+(AND|OR|ANDNOT)\s+", q.strip())

    def one(c: str) -> Callable[[dict[str, Any]], bool]:
        prefix, _, value = c.partition(":")
        value = value.strip().strip('"').lower()
        pattern = value

        def hay(r: dict[str, Any]) -> list[str]:
            if prefix == "cat":
                return str(r.get("categories", "")).lower().split()
            if prefix == "ti":
                return [str(r.get("title", "")).lower()]
            if prefix == "abs":
                return [str(r.get("abstract", "")).lower()]
            if prefix == "au":
                return [str(r.get("authors", "")).lower()]
            return [f"{r.get('title', '')} {r.get('abstract', '')} {r.get('categories', '')}".lower()]

        if prefix == "cat":
            return lambda r: any(fnmatch.fnmatchcase(h, pattern) for h in hay(r))
        return lambda r: value == "*" or any(fnmatch.fnmatchcase(h, f"*{pattern}*") for h in hay(r))

    pred = one(clauses[0])
    for i in range(1, len(clauses), 2):
        op, nxt = clauses[i], one(clauses[i + 1])
        if op == "AND":
            pred = (lambda a, b: lambda r: a(r) and b(r))(pred, nxt)
        elif op == "OR":
            pred = (lambda a, b: lambda r: a(r) or b(r))(pred, nxt)
        else:
            pred = (lambda a, b: lambda r: a(r) and not b(r))(pred, nxt)
    return pred


def atom_feed(entries: list[dict[str, Any]], total: int, start: int, query: str) -> bytes:
    """One export-API Atom page: OpenSearch totals and an ``<entry>`` per paper (from :meth:`ArxivPapers.search`)."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
        'xmlns:arxiv="http://arxiv.org/schemas/atom">',
        f"<title>arXiv Query: {escape(query)}</title>",
        f"<opensearch:totalResults>{total}</opensearch:totalResults>",
        f"<opensearch:startIndex>{start}</opensearch:startIndex>",
        f"<opensearch:itemsPerPage>{len(entries)}</opensearch:itemsPerPage>",
    ]
    for e in entries:
        out.append("<entry>")
        out.append(f"<id>http://arxiv.org/abs/{escape(e['_version'])}</id>")
        out.append(f"<updated>{e['_updated']}</updated><published>{e['_published']}</published>")
        out.append(f"<title>{escape(e.get('title') or '')}</title>")
        out.append(f"<summary>{escape(e.get('abstract') or '')}</summary>")
        for name in re.split(r",\s*|\s+and\s+", e.get("authors") or ""):
            if name.strip():
                out.append(f"<author><name>{escape(name.strip())}</name></author>")
        if e.get("doi"):
            out.append(f"<arxiv:doi>{escape(e['doi'])}</arxiv:doi>")
        if e.get("journal-ref"):
            out.append(f"<arxiv:journal_ref>{escape(e['journal-ref'])}</arxiv:journal_ref>")
        cats = str(e.get("categories") or "").split()
        if cats:
            out.append(f'<arxiv:primary_category term="{escape(cats[0])}"/>')
        out.extend(f'<category term="{escape(c)}"/>' for c in cats)
        out.append("</entry>")
    out.append("</feed>")
    return "\n".join(out).encode("utf-8")


class ArxivApi:
    """The export API endpoint over an :class:`ArxivPapers` store."""

    route = "arxiv"
    prefix = "/api/query"

    def __init__(self, papers: ArxivPapers | None = None) -> None:
        if papers is None:
            rows: list[dict[str, Any]] = []
            for f in ARXIV_FILES:
                rows += load_jsonl(sample_path(f))
            papers = ArxivPapers(rows)
        self.papers = papers

    def answer(self, req: ApiRequest) -> Reply:
        """The Atom page for ``GET /api/query?params``."""
        get = dict(req.params)
        entries, total, start = self.papers.search(get)
        if req.max_page_items is not None:
            entries = entries[: req.max_page_items]
        body = atom_feed(entries, total, start, get.get("search_query", ""))
        return Reply(200, body, "application/atom+xml; charset=utf-8", {})

    partial = None
    """No ``partial`` failure mode: the export API has none."""
