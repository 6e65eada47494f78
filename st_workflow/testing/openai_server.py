"""A local OpenAI-compatible chat-completions server for tests, benchmarks and the offline demo.

It speaks the real protocol over real HTTP on 127.0.0.1 (``POST /v1/chat/completions``), so the production client
stack (``openai.AsyncOpenAI`` + Instructor + Pydantic AI) runs unchanged against it. Answers are *grounded*: it finds
the ``<document>`` block in the prompt and builds question/context pairs whose contexts are copied verbatim from the
document text, queries that name the document's title, multi-word search terms from the title and text, a
quality label for the relevancy judge, and benchmark queries (``BenchmarkQuery``) that name the document's subject
and ask about a phrase of its text without copying its title. It answers in the shape the request asked for: a
forced tool call (Instructor ``TOOLS``, Pydantic AI tool output), JSON content (Instructor ``JSON``,
``response_format`` json_object/json_schema).

Misbehaviour is scripted per document so that tests are deterministic: the first ``n`` requests about each document
can be answered with 429 + ``Retry-After``, 500, a dropped connection, a slow answer, a schema-violating answer or an
answer with non-verbatim contexts (:class:`Faults`). Every request is counted per document (by title and by a hash of
the document block), and token usage is reported in every answer so cost accounting is real.

Example:
    >>> import openai
    >>> with OpenAICompatServer() as srv:
    ...     client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
    ...     r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    ...     srv.stats()["requests"]
    1

Command line (integration tests and benchmarks run it as a separate process)::

    python -m st_workflow.testing.openai_server --port 0 --latency 0.05 --port-file /tmp/llm.port \
        [--rate-limit 1 --retry-after 0.1 --server-error 1 --drop 1 --invalid 1 ...] [--api-key-env VAR]

It prints ``READY http://127.0.0.1:PORT/v1`` once listening and stops on SIGTERM/SIGINT. HTTP endpoints besides
the OpenAI ones (``POST /v1/chat/completions``, ``GET /v1/models``): ``GET /health``; ``GET /_stats`` (requests,
max in flight, tokens, and ``by_task[task][title]`` = ``{requests, answered, <fault>...}`` where ``answered`` counts
paid answers; tasks are ``qa``, ``search_terms``, ``relevancy``, ``benchmark_query``); ``POST /_admin/faults`` (a
:class:`Faults` as JSON); ``POST /_admin/reset`` (zero the counts).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from st_workflow.testing.background import BackgroundHTTPServer
from st_workflow.testing.http import QuietHandler, Reply

__all__ = ["Faults", "OpenAICompatServer", "document_key", "main"]

_DOC_RE = re.compile(r"<document>\s*\n(.*?)\n\s*</document>", re.S)
_TITLE_RE = re.compile(r"^Title:[ \t]*(.*)$", re.M)
_RANGE_RE = re.compile(r"Number of ([a-z/ ]+?): between (\d+) and (\d+)", re.I)
_QUERY_LEN_RE = re.compile(r"Query length: between (\d+) and (\d+) characters", re.I)
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-]{2,}")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "that",
        "this",
        "these",
        "those",
        "into",
        "over",
        "under",
        "about",
        "between",
        "using",
        "used",
        "use",
        "are",
        "was",
        "were",
        "has",
        "have",
        "had",
        "been",
        "being",
        "its",
        "their",
        "our",
        "your",
        "which",
        "what",
        "when",
        "where",
        "while",
        "than",
        "then",
        "also",
        "such",
        "via",
        "per",
        "not",
        "can",
        "may",
        "will",
        "would",
        "should",
        "could",
        "each",
        "other",
        "more",
        "most",
        "some",
        "many",
        "much",
        "all",
        "any",
        "both",
        "only",
        "well",
        "very",
    ]
)
_QUESTION_TEMPLATES = (
    "What does {title} report about {topic}?",
    "How does {title} describe {topic}?",
    "Which details about {topic} are given for {title}?",
    "Why is {topic} relevant to {title}?",
    "What is stated about {topic} in {title}?",
    "How is {topic} characterised for {title}?",
    "What information on {topic} does {title} provide?",
    "Which findings about {topic} are associated with {title}?",
)


# Words a benchmark query's topic should not be made of (they say what a record is, not what it is about).
_GENERIC = frozenset(
    [
        "data",
        "dataset",
        "datasets",
        "document",
        "documents",
        "paper",
        "study",
        "present",
        "presents",
        "presented",
        "contains",
        "provides",
        "provided",
        "describes",
        "described",
        "collected",
        "show",
        "shows",
        "shown",
    ]
)
_BENCHMARK_TEMPLATES = (
    "What is known about {topic} in {subject}?",
    "How is {topic} treated in {subject} research?",
    "{subject} {topic}",
    "Which results on {topic} are reported for {subject}?",
)


def document_key(block: str) -> str:
    """Short hash of a prompt's document block: the per-document counting key when titles are not unique."""
    return hashlib.sha256(block.strip().encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass
class Faults:
    """Scripted misbehaviour, applied to the first requests about each (task, document).

    Request ``k`` (0-based) about a document gets, in this order: ``rate_limit`` answers 429 with ``Retry-After``,
    then ``server_error`` answers 500, then ``drop`` closed connections, then ``slow`` answers delayed by
    ``slow_latency``, then ``invalid`` schema-violating answers, then ``nonverbatim`` answers whose contexts are not
    in the document; every later request gets a valid answer. ``nonverbatim_always`` makes one context of every
    answer non-verbatim (what gates must catch). For ``benchmark_query`` a ``nonverbatim`` answer is the document's
    title itself (a query that copies the title, which the validator refuses). ``tasks`` limits the faults to some
    tasks (``qa``, ``search_terms``, ``relevancy``, ``benchmark_query``); empty means all.
    """

    rate_limit: int = 0
    retry_after: float = 0.05
    server_error: int = 0
    drop: int = 0
    slow: int = 0
    slow_latency: float = 2.0
    invalid: int = 0
    nonverbatim: int = 0
    nonverbatim_always: bool = False
    tasks: tuple[str, ...] = ()

    def schedule(self) -> list[str]:
        return (
            ["rate_limit"] * self.rate_limit
            + ["server_error"] * self.server_error
            + ["drop"] * self.drop
            + ["slow"] * self.slow
            + ["invalid"] * self.invalid
            + ["nonverbatim"] * self.nonverbatim
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Faults:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown fault settings {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "tasks" in d:
            d["tasks"] = tuple(d["tasks"])
        return cls(**d)


class _Stats:
    """Thread-safe counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.by_task_doc: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.titles: dict[str, str] = {}
        self.auth_headers: Counter[str] = Counter()


class _Handler(QuietHandler):
    server: _Server

    # ------------------------------------------------------------------ plumbing
    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send_reply(
            Reply(status, json.dumps(obj).encode("utf-8"), "application/json", dict(headers or {}))
        )

    def _read_json(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if len(raw) < n:  # the client died mid-send: a truncated request is no request, and is never counted
            raise ValueError(f"truncated body: {len(raw)} of {n} bytes")
        return json.loads(raw or b"{}")

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health"):
            self._send_json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "local-stub", "object": "model"}]})
        elif path == "/_stats":
            self._send_json(200, self.server.owner.stats())
        else:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = self._read_json()
        except ValueError:
            self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if path == "/_admin/faults":
            try:
                self.server.owner.faults = Faults.from_dict(body)
            except (TypeError, ValueError) as e:
                self._send_json(400, {"error": {"message": str(e)}})
                return
            self._send_json(200, dataclasses.asdict(self.server.owner.faults))
        elif path == "/_admin/reset":
            self.server.owner.reset()
            self._send_json(200, {"reset": True})
        elif path == "/v1/chat/completions":
            if not isinstance(body, dict) or not body.get("messages"):
                self._send_json(  # what the OpenAI API answers; such a request is not counted either
                    400,
                    {
                        "error": {
                            "message": "'messages' is a required property",
                            "type": "invalid_request_error",
                        }
                    },
                )
                return
            self._chat(body)
        else:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    # ------------------------------------------------------------------ chat
    def _chat(self, body: dict[str, Any]) -> None:
        owner = self.server.owner
        st = owner._stats
        with st.lock:
            st.requests += 1
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
            auth = self.headers.get("Authorization", "")
            st.auth_headers["bearer" if auth.startswith("Bearer ") and len(auth) > 7 else "none"] += 1
        try:
            self._chat_inner(owner, body)
        finally:
            with st.lock:
                st.inflight -= 1

    def _chat_inner(self, owner: OpenAICompatServer, body: dict[str, Any]) -> None:
        if owner.api_key is not None and self.headers.get("Authorization", "") != f"Bearer {owner.api_key}":
            self._send_json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
            return
        messages = body.get("messages") or []
        text = "\n".join(_message_text(m) for m in messages)
        task, schema, tool_name = _detect_task(body, text)
        m = _DOC_RE.search(text)
        block = m.group(1) if m else ""
        doc = document_key(block) if block else "-"
        tm = _TITLE_RE.search(block)
        title = tm.group(1).strip() if tm else ""
        st = owner._stats
        with st.lock:
            counter = st.by_task_doc[(task, doc)]
            k = counter["requests"]
            counter["requests"] += 1
            if title:
                st.titles[doc] = title
        faults = owner.faults
        action = "ok"
        if not faults.tasks or task in faults.tasks:
            sched = faults.schedule()
            action = sched[k] if k < len(sched) else "ok"
        if action != "ok":
            with st.lock:
                counter[action] += 1
        latency = owner.latency + (faults.slow_latency if action == "slow" else 0.0)
        if latency > 0:
            time.sleep(latency)
        if action == "rate_limit":
            self._send_json(
                429,
                {
                    "error": {
                        "message": "Rate limit reached, retry later.",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
                {
                    "Retry-After": f"{faults.retry_after:g}",
                    "retry-after-ms": str(int(faults.retry_after * 1000)),
                },
            )
            return
        if action == "server_error":
            self._send_json(500, {"error": {"message": "The server had an error.", "type": "server_error"}})
            return
        if action == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)  # socket.SHUT_RDWR: the client sees a disconnect, no response
            return

        answer = _answer(
            task,
            block,
            text,
            schema,
            invalid=action == "invalid",
            nonverbatim=action == "nonverbatim" or (faults.nonverbatim_always and action == "ok"),
            qualities=owner.qualities,
        )
        args = json.dumps(answer, ensure_ascii=False)
        prompt_tokens = max(1, len(text) // 4 + len(json.dumps(body.get("tools") or [])) // 4)
        completion_tokens = max(1, len(args) // 4)
        with st.lock:
            counter["answered"] += 1
            st.prompt_tokens += prompt_tokens
            st.completion_tokens += completion_tokens
        if body.get("tools"):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{st.requests}",
                        "type": "function",
                        "function": {"name": tool_name, "arguments": args},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": args}
            finish = "stop"
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{st.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or "local-stub",
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: OpenAICompatServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) closes the socket before a slow answer is written: expected, not news.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class OpenAICompatServer(BackgroundHTTPServer):
    """The server, run in a background thread; use it as a context manager.

    Args:
        latency: Seconds every answer waits before it is sent (a fixed model latency).
        faults: Scripted misbehaviour (:class:`Faults`); can be replaced while running.
        api_key: When set, requests without ``Authorization: Bearer <api_key>`` get 401.
        qualities: Title -> relevancy label overrides (otherwise the label follows the document's length).
        host, port: Where to listen; port 0 picks a free port.
    """

    def __init__(
        self,
        latency: float = 0.0,
        faults: Faults | None = None,
        *,
        api_key: str | None = None,
        qualities: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.faults = faults or Faults()
        self.api_key = api_key
        self.qualities = dict(qualities or {})
        self._stats = _Stats()
        httpd = _Server((host, port), _Handler)
        httpd.owner = self
        super().__init__(httpd, "openai-stub")

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give an OpenAI client (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ counts
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (slow answers to clients that timed out are still counted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._stats.lock:
                if self._stats.inflight == 0:
                    return True
            time.sleep(0.01)
        return False

    def reset(self) -> None:
        """Forget every count (faults restart from the first request of each document)."""
        with self._stats.lock:
            self._stats.reset()

    def calls(self, task: str | None = None, what: str = "answered") -> Counter[str]:
        """Per-document-title counts of ``what`` (``answered`` = paid 200 answers, ``requests``, or a fault name).

        Documents without a title are keyed by their block hash.
        """
        out: Counter[str] = Counter()
        with self._stats.lock:
            for (t, doc), c in self._stats.by_task_doc.items():
                if task is None or t == task:
                    out[self._stats.titles.get(doc, doc)] += c[what]
        return +out

    def stats(self) -> dict[str, Any]:
        """JSON-able counts (also served at ``GET /_stats``)."""
        st = self._stats
        with st.lock:
            by_task: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
            for (t, doc), c in st.by_task_doc.items():
                by_task[t][st.titles.get(doc, doc)] = dict(c)
            return {
                "requests": st.requests,
                "max_inflight": st.max_inflight,
                "prompt_tokens": st.prompt_tokens,
                "completion_tokens": st.completion_tokens,
                "auth": dict(st.auth_headers),
                "by_task": dict(by_task),
            }


# ---------------------------------------------------------------------- request analysis
def _message_text(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return ""


def _schema_task(schema: dict[str, Any] | None) -> str | None:
    props = (schema or {}).get("properties") or {}
    if "question_context" in props:
        return "qa"
    if "quality" in props:
        return "relevancy"
    if "search_terms" in props:
        return "search_terms"
    if "query" in props:
        return "benchmark_query"
    return None


def _detect_task(body: dict[str, Any], text: str) -> tuple[str, dict[str, Any] | None, str]:
    """(task, JSON schema when one was sent, tool name to answer with)."""
    tools = body.get("tools") or []
    if tools:
        wanted = None
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
        chosen = None
        for t in tools:
            fn = t.get("function") or {}
            if wanted and fn.get("name") == wanted:
                chosen = fn
                break
            if chosen is None and _schema_task(fn.get("parameters")):
                chosen = fn
        chosen = chosen or (tools[0].get("function") or {})
        schema = chosen.get("parameters")
        return _schema_task(schema) or "other", schema, chosen.get("name", "answer")
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return _schema_task(schema) or "other", schema, ""
    # Instructor JSON mode and prompted output: the schema is written into the messages.
    if '"question_context"' in text:
        return "qa", None, ""
    if '"quality"' in text:
        return "relevancy", None, ""
    if '"search_terms"' in text:
        return "search_terms", None, ""
    if '"query"' in text:  # after "qa": its pairs have a "query" too
        return "benchmark_query", None, ""
    return "other", None, ""


def _ranges(text: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for what, lo, hi in _RANGE_RE.findall(text):
        key = "terms" if "term" in what.lower() else "pairs"
        out[key] = (int(lo), int(hi))
    return out


def _body_text(block: str) -> tuple[str, str]:
    """(title, body) of a document block ``Title: ...`` + header lines, blank line, text."""
    tm = _TITLE_RE.search(block)
    title = tm.group(1).strip() if tm else ""
    parts = block.split("\n\n", 1)
    body = parts[1] if len(parts) == 2 else block
    return title, body.strip()


def _contexts(body: str, n: int) -> list[str]:
    """Up to ``n`` verbatim passages: 2-sentence windows (1 when long), at least 40 characters."""
    sents = [s for s in _SENT_RE.split(body) if s.strip()]
    out: list[str] = []
    i = 0
    while i < len(sents) and len(out) < n:
        ctx = sents[i]
        j = i + 1
        while len(ctx) < 160 and j < len(sents):
            ctx = ctx + " " + sents[j]
            j += 1
        if len(ctx.strip()) >= 40:
            out.append(ctx.strip())
        i = j
    if not out and body.strip():
        out.append(body.strip()[:400])
    return out


def _topic(context: str) -> str:
    words = [w for w in _WORD_RE.findall(context) if w.lower() not in _STOP]
    return " ".join(words[:4]) or "its content"


def _terms(title: str, body: str, n: int) -> list[str]:
    terms: list[str] = []
    seen: set[str] = set()

    def add(t: str) -> None:
        t = " ".join(t.split())
        if len(t.split()) >= 2 and t.lower() not in seen and len(t) <= 100:
            seen.add(t.lower())
            terms.append(t)

    tw = [w for w in _WORD_RE.findall(title) if w.lower() not in _STOP]
    add(" ".join(tw[:6]))
    for size in (3, 2):
        for i in range(0, max(0, len(tw) - size + 1)):
            add(" ".join(tw[i : i + size]))
    words = [w for w in _WORD_RE.findall(body) if w.lower() not in _STOP]
    bigrams = Counter(f"{a} {b}" for a, b in itertools.pairwise(words))
    for bg, _ in bigrams.most_common():
        add(bg)
        if len(terms) >= n:
            break
    i = 0
    while len(terms) < n:  # very short documents: fall back to numbered variants of the title
        add(f"{' '.join(tw[:3]) or 'science data'} topic {i + 1}")
        i += 1
    return terms[:n]


def _quality(title: str, body: str, qualities: dict[str, str]) -> tuple[str, list[str]]:
    if title in qualities:
        return qualities[title], [f"label set for {title!r} by the test server"]
    n = len(body)
    if n < 400:
        return "POOR", ["The document is too short to support ten distinct grounded questions."]
    if n < 1500:
        return "GOOD", ["The document is focused and clear but of moderate information density."]
    return "VERY_GOOD", ["The document is dense with specific, clearly stated scientific facts."]


def _answer(
    task: str,
    block: str,
    text: str,
    schema: dict[str, Any] | None,
    *,
    invalid: bool,
    nonverbatim: bool,
    qualities: dict[str, str],
) -> dict[str, Any]:
    title, body = _body_text(block)
    ranges = _ranges(text)
    if task == "relevancy":
        if invalid:
            return {"quality": "EXCELLENT", "reasons": "not a list"}
        q, reasons = _quality(title, body, qualities)
        return {"quality": q, "reasons": reasons}
    if task == "qa":
        lo, hi = ranges.get("pairs", (5, 15))
        _tlo, thi = ranges.get("terms", (lo, hi))
        if invalid:
            return {"question_context": "no pairs", "search_terms": 7}
        ctxs = _contexts(body, hi)
        pairs = []
        name = title or "the record"
        for i in range(max(lo, min(hi, len(ctxs)))):
            ctx = ctxs[i % len(ctxs)] if ctxs else body
            q = _QUESTION_TEMPLATES[i % len(_QUESTION_TEMPLATES)].format(title=name, topic=_topic(ctx))
            if i >= len(ctxs):
                q = q[:-1] + f" (aspect {i + 1})?"
            pairs.append({"query": q, "context": ctx})
        if nonverbatim and pairs:
            p = pairs[0]
            p["context"] = "In summary, " + " ".join(reversed(p["context"].split())) + " (paraphrased)"
        return {"question_context": pairs, "search_terms": _terms(title, body, thi)}
    if task == "search_terms":
        lo, hi = ranges.get("terms", (3, 6))
        if invalid:
            return {"search_terms": []}
        return {"search_terms": _terms(title, body, hi)}
    if task == "benchmark_query":
        if invalid:
            return {"query": 7}
        if nonverbatim:
            return {"query": title}
        qm = _QUERY_LEN_RE.search(text)
        lo, hi = (int(qm.group(1)), int(qm.group(2))) if qm else (10, 300)
        return {"query": _benchmark_query(title, body, document_key(block), lo, hi)}
    return _dummy(schema)


def _benchmark_query(title: str, body: str, doc_key: str, lo: int, hi: int) -> str:
    """A grounded, standalone query that is not the title: the subject (the title's first three content words,
    so a long title never appears whole) and the body's most frequent content-word pair that the title lacks, in
    one of a few question or keyword-search shapes chosen by the document."""
    tw = [w for w in _WORD_RE.findall(title) if w.lower() not in _STOP]
    subject = " ".join(tw[:3]) or "NASA science data"
    in_title = {w.lower() for w in tw}
    words = [w for w in _WORD_RE.findall(body) if w.lower() not in _STOP | _GENERIC]
    bigrams = Counter(f"{a} {b}" for a, b in itertools.pairwise(words))
    fresh = [bg for bg, _ in bigrams.most_common() if not set(bg.lower().split()) <= in_title]
    topic = fresh[0] if fresh else (next(iter(bigrams), None) or _topic(body))
    shape = (
        _BENCHMARK_TEMPLATES[int(doc_key, 16) % len(_BENCHMARK_TEMPLATES)]
        if doc_key
        else _BENCHMARK_TEMPLATES[0]
    )
    q = shape.format(subject=subject, topic=topic)
    if len(q) > hi:
        q = q[:hi].rsplit(" ", 1)[0]
    while len(q) < lo:
        q = f"{q} {topic}"
    return q


def _dummy(schema: dict[str, Any] | None) -> Any:
    """A minimal instance of an arbitrary JSON schema (unknown tasks)."""
    if not schema:
        return {"answer": "ok"}
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if t == "object" or "properties" in schema:
        return {k: _dummy(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [_dummy(schema.get("items"))]
    if t == "integer":
        return 1
    if t == "number":
        return 1.0
    if t == "boolean":
        return True
    return "ok"


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(
        prog="python -m st_workflow.testing.openai_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", type=Path, help="write the chosen port here once listening")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    p.add_argument(
        "--api-key-env", metavar="VAR", help="require this environment variable's value as the API key"
    )
    for f in dataclasses.fields(Faults):
        if f.name in ("tasks", "nonverbatim_always"):
            continue
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"fault setting {f.name} (see Faults)",
        )
    p.add_argument("--nonverbatim-always", action="store_true")
    p.add_argument("--fault-tasks", nargs="*", default=[], help="restrict faults to these tasks")
    args = p.parse_args(argv)
    import os

    faults = Faults(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Faults) if f.name not in ("tasks",)},
        tasks=tuple(args.fault_tasks),
    )
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    srv = OpenAICompatServer(args.latency, faults, api_key=api_key, host=args.host, port=args.port)
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(srv.port))
        tmp.replace(args.port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv.start()
    print(f"READY {srv.base_url}", flush=True)
    stop.wait()
    srv.stop()
    print(json.dumps({k: v for k, v in srv.stats().items() if k != "by_task"}), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
