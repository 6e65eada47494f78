"""LLM-written queries of the in-domain IR benchmark: one search per held-out document, in place of its title.

:func:`write_benchmark_queries` asks the configured endpoint (``generation.endpoint``), through Instructor and the
:class:`~.models.BenchmarkQuery` schema, for the query a scientist would type to find each document: grounded in the
document, standalone (it names what it asks about), within ``generation.benchmark_queries.{min,max}_query_chars``
and not the title (nor, for titles of ``title_copy_min_words`` words or more, the title wrapped in a question). An
answer that breaks a rule is re-asked with the rule's message (``execution.max_reasks``).

It runs on the machinery of the pair generator (:mod:`.stages`): documents with equal content share one call, each
answer lives in the content-addressed cache ``<cache_dir>/llm/benchmark_queries`` (keyed by content hash, the text
actually sent, prompt version, response schema, model, sampling and the checks), per-document claims let concurrent
runs share work, the sliding-window engine retries transport errors, every request reserves from the run's one
budget (:mod:`.budget`: ``execution.budget_usd`` / ``budget_tokens``, shared with the other LLM stages of the run),
and each request holds a slot of the Prefect global concurrency limit. A re-run pays nothing; a killed or budget-capped run is resumed by calling again, paying only for
the documents still missing.

Nothing here fails a benchmark over a query: documents without one (budget, invalid answers after the re-asks,
transport errors) are listed in :attr:`QueryResult.failures` with ``complete=False``, and the caller keeps their
titles. Only an endpoint that refuses every request (HTTP 401/403/404) raises
:class:`~.resilience.EndpointFatalError`, as in the generator.

Example::

    docs = [QueryDoc(source="arxiv", id="2401.00001", title=title, text=abstract, content_hash=h)]
    result = write_benchmark_queries(cfg, docs, work_dir=benchmark_dir / "llm-queries")
    query = result.queries.get(("arxiv", "2401.00001"), title)   # the title where no query was written
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.config.generation import GenerationConfig
from st_workflow.hashing import code_version, sha256_text, stable_hash
from st_workflow.stage2_generation.accounting import Ledger
from st_workflow.stage2_generation.budget import stage_ledger
from st_workflow.stage2_generation.cache import cache_key
from st_workflow.stage2_generation.clients import sampling_kwargs
from st_workflow.stage2_generation.engine import Job, JobFailed, Outcome
from st_workflow.stage2_generation.llm_stage import ANSWERED, LLMCalls, group_jobs, log_done, model_price
from st_workflow.stage2_generation.models import VALIDATION_CONTEXT, BenchmarkQuery, schema_hash
from st_workflow.stage2_generation.prompts import cut_text, load_prompt
from st_workflow.stage2_generation.resilience import first_line, raise_wrapped_endpoint_error

__all__ = [
    "FAILURES_FILE",
    "NAMESPACE",
    "QUERIES_FILE",
    "RUN_STATS_FILE",
    "QueryDoc",
    "QueryResult",
    "QueryWriter",
    "benchmark_query_fingerprint",
    "write_benchmark_queries",
]

NAMESPACE = "benchmark_queries"
"""Cache namespace: answers live under ``<cache_dir>/llm/benchmark_queries``."""
TASK = "benchmark_query"
LABEL = "benchmark-queries"
QUERIES_FILE = "llm_queries.jsonl"
"""In ``work_dir``: one row per document that got a query (sorted by source, id)."""
FAILURES_FILE = "llm_query_failures.jsonl"
"""In ``work_dir``: one row per document without a query (``failures.jsonl`` rows of the LLM stages)."""
RUN_STATS_FILE = "llm_query_run_stats.json"
"""In ``work_dir``: what this call spent and how the engine went (differs between runs, unlike the two above)."""
_CODE = "stage2_generation"


@dataclasses.dataclass(frozen=True)
class QueryDoc:
    """A document to write a benchmark query for (``text``: what the query must be answerable from)."""

    source: str
    id: str
    title: str
    text: str
    content_hash: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)


@dataclasses.dataclass
class QueryResult:
    """What :func:`write_benchmark_queries` produced."""

    queries: dict[tuple[str, str], str]
    """``(source, id)`` -> query, for every document that got one."""
    failures: dict[tuple[str, str], str]
    """``(source, id)`` -> ``"<cause>: <message>"`` (cause ``budget``, ``invalid_output``, ``connection``...)."""
    complete: bool
    """True when every document got a query."""
    usage: dict[str, Any]
    """This call's spending (:meth:`~.accounting.Ledger.summary`: ``calls``, ``requests``, tokens, ``cost_usd``,
    ``budget_hit``, ``by_source``...), its job counts (``documents``, ``distinct``, ``new``, ``cached``, ``failed``,
    ``skipped_budget``, ``elapsed_s``), and ``produced``: the tokens and USD it took to write the returned queries,
    cached or not (equal across re-runs, unlike the rest)."""
    model: str | None = None
    """The model that wrote the queries (``None`` when skipped)."""
    prompt_version: str | None = None
    """The prompt's ``<name>@<content hash>`` (``None`` when skipped)."""
    skipped: str | None = None
    """Why nothing was asked (no endpoint, ``generation.benchmark_queries.enabled`` false), else ``None``."""


class QueryWriter:
    """Cache keys, requests and the Instructor call of the benchmark-query writer for one generation config."""

    def __init__(self, gen: GenerationConfig) -> None:
        self.gen = gen
        self.cfg = gen.benchmark_queries
        self.prompt = load_prompt(self.cfg.prompt)
        self.schema = schema_hash(BenchmarkQuery)
        self.sampling = sampling_kwargs(gen.endpoint)
        self.checks = {
            "query_chars": [self.cfg.min_query_chars, self.cfg.max_query_chars],
            "title_copy_min_words": self.cfg.title_copy_min_words,
        }

    @property
    def prompt_version(self) -> str:
        return self.prompt.version

    def settings(self) -> dict[str, Any]:
        """Everything besides the document that an answer depends on (hashed into every cache key)."""
        return {
            "kind": NAMESPACE,
            "prompt_version": self.prompt_version,
            "schema": self.schema,
            "model": self.gen.endpoint.model,
            "sampling": self.sampling,
            "max_doc_chars": self.cfg.max_doc_chars,
            "checks": self.checks,
        }

    def job(self, doc: QueryDoc) -> Job:
        """The cache key and request for ``doc``.

        The key holds the document's content hash and also a hash of the title and (cut) text actually sent, so a
        caller that changes which text it passes (abstract, structured description) never gets an old answer.
        """
        text = cut_text(doc.text, self.cfg.max_doc_chars)
        key = cache_key(
            **self.settings(),
            content_hash=doc.content_hash,
            input=sha256_text(f"{doc.title}\n{text}"),
        )
        lo, hi = self.checks["query_chars"]
        messages = self.prompt.render(title=doc.title, source=doc.source, text=text, qlo=lo, qhi=hi)
        vctx = {
            "title": doc.title,
            "query_chars": (lo, hi),
            "title_copy_min_words": self.cfg.title_copy_min_words,
        }
        size = sum(len(m["content"]) for m in messages)
        return Job(key=key, source=doc.source, payload={"messages": messages, "vctx": vctx}, size=size)

    async def call(self, job: Job, client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """One Instructor call with bounded re-asks; returns (answer, meta) or raises :class:`~.engine.JobFailed`."""
        from instructor.core import InstructorRetryException

        # Not Instructor's context=: that would also render the prompt as a Jinja template (see models.py).
        token = VALIDATION_CONTEXT.set(job.payload["vctx"])
        try:
            obj = await client.create(
                response_model=BenchmarkQuery,
                messages=job.payload["messages"],
                max_retries=self.gen.execution.max_reasks,
                model=self.gen.endpoint.model,
                **self.sampling,
            )
        except InstructorRetryException as e:
            raise_wrapped_endpoint_error(e)
            raise JobFailed("invalid_output", _last_problem(e)) from None
        finally:
            VALIDATION_CONTEXT.reset(token)
        return obj.model_dump(mode="json"), {"status": "ok"}


def _last_problem(e: Any) -> str:
    """What was wrong with the last answer (the validator's words), else the exception's first line."""
    from pydantic import ValidationError

    attempts = getattr(e, "failed_attempts", None) or []
    last = attempts[-1].exception if attempts else None
    if isinstance(last, ValidationError):
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in last.errors())
        return f"no valid query after {len(attempts)} answers: {problems}"[:300]
    return first_line(e)


def benchmark_query_fingerprint(cfg: PipelineConfig) -> str:
    """Hash of everything besides the documents that the queries depend on (prompt, schema, model, sampling, checks,
    re-asks, price, code): for the cache key of a stage that embeds the queries."""
    gen = cfg.generation
    price = model_price(cfg)
    return stable_hash(
        {
            "enabled": gen.benchmark_queries.enabled and gen.endpoint.configured,
            "settings": QueryWriter(gen).settings(),
            "mode": gen.benchmark_queries.mode,
            "max_reasks": gen.execution.max_reasks,
            "price": stable_hash(price) if price else None,
            "code": code_version(_CODE),
        }
    )


class _QueryCalls(LLMCalls):
    """The benchmark-query writer on the LLM-call skeleton (no stage of its own: the hold-out commits)."""

    label = LABEL
    namespace = NAMESPACE
    progress_key = "benchmark-queries"
    title = "Writing benchmark queries"
    verb = "writing queries for"
    task_name = TASK

    @functools.cached_property
    def worker(self) -> QueryWriter:
        return QueryWriter(self.gen)

    def disabled(self) -> str | None:
        if not self.gen.benchmark_queries.enabled:
            return "benchmark queries skipped: generation.benchmark_queries.enabled is false (titles are the queries)"
        return None

    def note(self, docs: list[Any]) -> str:
        return f", mode {self.worker.cfg.mode}"

    @property
    def instructor_mode(self) -> str:
        return self.worker.cfg.mode

    def checked(self, o: Outcome) -> Outcome:
        """A stored answer without a query is a failure (the caller keeps the title)."""
        if o.status in ANSWERED and not _query(o):
            return dataclasses.replace(
                o, status="failed", cause="invalid_output", message="stored answer has no query"
            )
        return o

    def columns(self, doc: QueryDoc, o: Outcome) -> dict[str, Any]:
        return {"query": _query(o)}


def _query(o: Outcome) -> str | None:
    query = ((o.entry or {}).get("value") or {}).get("query")
    return query if isinstance(query, str) and query else None


def _check_unique(docs: list[QueryDoc]) -> None:
    seen: dict[tuple[str, str], QueryDoc] = {}
    for d in docs:
        if (prev := seen.setdefault(d.key, d)) is not d and prev != d:
            raise ValueError(f"document {d.source}:{d.id} is given twice with different content")


def _usage(
    ledger: Ledger,
    n_docs: int,
    n_jobs: int,
    statuses: Counter[str],
    rows: list[dict[str, Any]],
    fail_rows: list[dict[str, Any]],
    elapsed_s: float = 0.0,
) -> dict[str, Any]:
    """:attr:`QueryResult.usage`."""
    by_status = Counter(f["status"] for f in fail_rows)
    return {
        **ledger.summary(),
        "documents": n_docs,
        "distinct": n_jobs,
        "new": statuses.get("ok", 0),
        "cached": statuses.get("cached", 0),
        "failed": by_status["failed"] + by_status["aborted"],
        "skipped_budget": by_status["budget"],
        "elapsed_s": round(elapsed_s, 3),
        "produced": {
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "cost_usd": round(sum(r["cost_usd"] for r in rows), 8),
        },
    }


def write_benchmark_queries(cfg: PipelineConfig, docs: list[QueryDoc], *, work_dir: Path) -> QueryResult:
    """Write one benchmark query per document with the configured LLM (see the module docstring).

    Args:
        docs: The held-out documents; a ``(source, id)`` given twice must be the same document.
        work_dir: Directory (created when missing) for :data:`QUERIES_FILE`, :data:`FAILURES_FILE` and
            :data:`RUN_STATS_FILE`, each written atomically; the first two are sorted and equal across re-runs.

    Returns:
        The queries, the documents without one and why, and the spending. When no endpoint is configured or the
        writer is disabled, nothing is asked or written: ``skipped`` says why (logged once) and ``complete`` is false.

    Raises:
        EndpointFatalError: the endpoint refused a request for good (bad key, unknown model); nothing is written.
        ValueError: a ``(source, id)`` is given twice with different content.
    """
    calls = _QueryCalls(cfg)
    if (reason := calls.skip_reason()) is not None:
        calls.log.info(reason)
        return QueryResult(
            {},
            {},
            complete=False,
            usage=_usage(Ledger(None), len(docs), 0, Counter(), [], []),
            skipped=reason,
        )
    _check_unique(docs)
    gen = cfg.generation
    writer = calls.worker
    docs = sorted(dict.fromkeys(docs), key=lambda d: d.key)
    jobs, groups = group_jobs(docs, writer.job)
    ledger = stage_ledger(cfg)  # the run's shared budget; refuses an unenforceable cap before any call
    rows: list[dict[str, Any]] = []
    stats, fail_rows = calls.answer(docs, jobs, groups, ledger, rows.append)

    rows.sort(key=lambda r: (r["source"], r["doc_id"]))
    work_dir = Path(work_dir)
    atomic.write_jsonl(work_dir / QUERIES_FILE, rows)
    atomic.write_jsonl(work_dir / FAILURES_FILE, fail_rows)
    atomic.write_json(work_dir / RUN_STATS_FILE, {"spent": ledger.summary(), "engine": stats.to_dict()})

    failures = {(f["source"], f["doc_id"]): f"{f['cause'] or f['status']}: {f['message']}" for f in fail_rows}
    usage = _usage(ledger, len(docs), len(jobs), stats.statuses, rows, fail_rows, stats.elapsed_s)
    counts = {
        "documents": len(docs),
        "queries": len(rows),
        "failed": usage["failed"],
        "skipped_budget": usage["skipped_budget"],
    }
    log_done(calls.log, LABEL, counts, ledger, stats)
    return QueryResult(
        queries={(r["source"], r["doc_id"]): r["query"] for r in rows},
        failures=failures,
        complete=not failures,
        usage=usage,
        model=gen.endpoint.model,
        prompt_version=writer.prompt_version,
    )
