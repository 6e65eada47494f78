"""The one skeleton of the LLM stages: a stage says what one job is and how its answer becomes a row; this owns the rest.

Two layers:

* :class:`LLMCalls`: answer documents with one cached, claimed, budgeted LLM call each, documents of equal content
  sharing one call. It owns grouping, the engine run (API key, Prefect slot, client, cache namespace), the progress bar
  (``docs`` done of total, with this run's tokens and dollars) and the ``failures.jsonl`` rows. A subclass gives its
  :attr:`~LLMCalls.worker` (``job(doc)`` -> :class:`~.engine.Job`, ``await call(job, client)``), the Instructor mode
  (or its own :meth:`~LLMCalls.make_call`), :meth:`~LLMCalls.columns` and the labels. The benchmark-query writer uses
  only this layer (it commits no stage of its own).
* :class:`LLMStage`: a committed stage around it (docs/ARCHITECTURE.md stage contract): cache key, reuse, staging
  shards, the stage lock, "committed meanwhile", ``failures.jsonl`` / ``run_stats.json``, the manifest (``complete``
  false and an empty key when any document lacks an answer, so the next run re-enters it) and the closing log line. A
  subclass adds what its key depends on (:meth:`~LLMStage.key_parts`), which documents it sends
  (:meth:`~LLMStage.documents`) and :meth:`~LLMStage.commit` (how the staged rows become its files, counts, metrics).

Example (the shape of :class:`~.stages.PairGenerationStage`)::

    class Summaries(LLMStage):
        name, namespace, progress_key, title, verb = "llm-summaries", "summaries", "summaries", "Summaries", "summarizing"
        schema = result_schema([pa.field("summary", pa.string())])
        config_section = property(lambda self: self.gen.summaries)
        worker = functools.cached_property(lambda self: Summarizer(self.gen))  # .job(doc), .call(job, client)
        instructor_mode = "tools"
        def key_parts(self): return {"summaries": self.gen.summaries.model_dump(mode="json")}
        def documents(self): return load_documents(self.upstream)
        def columns(self, doc, o): return {"summary": o.entry["value"]["summary"]}
        def commit(self, staging):  # under the lock: staged shards -> the stage's files
            n = consolidate(staging, self.stage_dir / "out", self.schema, ["source", "doc_id"], 1000)
            return Committed(read_shards(self.stage_dir / "out", self.schema), {"out": ("out", n)}, {"rows": n})
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import SecretStr

from st_workflow import atomic, progress
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, stable_hash
from st_workflow.locks import stage_lock
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.schemas import schema_dict
from st_workflow.stage2_generation.accounting import Ledger
from st_workflow.stage2_generation.availability import llm_skip_reason
from st_workflow.stage2_generation.budget import stage_ledger
from st_workflow.stage2_generation.cache import LLMCache
from st_workflow.stage2_generation.clients import instructor_client, make_openai_client, resolve_api_key
from st_workflow.stage2_generation.columns import usage_columns
from st_workflow.stage2_generation.engine import CallFn, Job, Outcome, RunStats, execute, run_sync
from st_workflow.stage2_generation.shards import ShardWriter
from st_workflow.stage2_generation.slots import prefect_slot_factory

_CODE = "stage2_generation"
ANSWERED = ("ok", "cached")
"""Outcome statuses that carry an answer (every other status becomes a ``failures.jsonl`` row)."""


# ---------------------------------------------------------------------- helpers
def model_price(cfg: PipelineConfig) -> Any:
    """The configured price of the endpoint's model (``execution.price``, else ``execution.prices``), or ``None``
    (its calls then count as $0; a USD budget then refuses to start, see :mod:`.budget`)."""
    return cfg.generation.execution.price_for(cfg.generation.endpoint.model)


def llm_stage_key(cfg: PipelineConfig, stage: str, upstream: list[Manifest], **specific: Any) -> str:
    """Cache key of an LLM stage: what every call depends on (endpoint, re-asks, price, inputs, code) plus
    ``specific`` (the stage's own config section and prompt versions)."""
    ep = cfg.generation.endpoint
    price = model_price(cfg)
    return stable_hash(
        {
            "stage": stage,
            "endpoint": {
                "model": ep.model,
                "temperature": ep.temperature,
                "max_tokens": ep.max_tokens,
                "seed": ep.seed,
            },
            **specific,
            "max_reasks": cfg.generation.execution.max_reasks,
            "price": stable_hash(price) if price else None,
            "upstream": [m.content_hash for m in upstream],
            "code": code_version(_CODE),
        }
    )


def reuse(cfg: PipelineConfig, log: Any, stage: str, stage_dir: Path, key: str) -> Manifest | None:
    """The stage's committed output when caching is on and its key matches (inputs, config and code unchanged)."""
    if cfg.orchestration.cache and (hit := reusable(stage_dir, key)) is not None:
        log.info("%s: reusing %s (inputs, config and code unchanged)", stage, stage_dir)
        return hit
    return None


def staging_dir(stage_dir: Path) -> Path:
    """A staging directory private to this process; stale ones of dead processes on this host are swept."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    for old in stage_dir.glob(".staging-*"):
        prefix, pid, _ = [*old.name.rsplit("-", 2), "", ""][:3]
        if prefix == f".staging-{host}" and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except PermissionError:
                pass
    return stage_dir / f".staging-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def group_jobs(docs: list[Any], make: Callable[[Any], Job]) -> tuple[list[Job], dict[str, list[Any]]]:
    """One job per distinct cache key (documents with equal content share one call): ``make(doc)`` gives a
    document's job; returns the jobs and the documents of each key."""
    groups: dict[str, list[Any]] = defaultdict(list)
    jobs: list[Job] = []
    for d in docs:
        job = make(d)
        if job.key not in groups:
            jobs.append(job)
        groups[job.key].append(d)
    return jobs, groups


def failure_record(doc: Any, o: Outcome, task: str) -> dict[str, Any]:
    """The ``failures.jsonl`` row of a document (anything with ``id``, ``source``, ``content_hash``) whose job
    ended without an answer."""
    return {
        "doc_id": doc.id,
        "source": doc.source,
        "content_hash": doc.content_hash,
        "task": task,
        "status": o.status,
        "cause": o.cause,
        "message": o.message,
    }


def failure_counts(failures: list[dict[str, Any]]) -> dict[str, int]:
    """``failed`` (failed or aborted) and ``skipped_budget`` (not attempted) of the ``failures.jsonl`` rows."""
    return {
        "failed": sum(1 for f in failures if f["status"] in ("failed", "aborted")),
        "skipped_budget": sum(1 for f in failures if f["status"] == "budget"),
    }


def _tok(table: pa.Table, col: str) -> int:
    return int(sum(v or 0 for v in table.column(col).to_pylist())) if table.num_rows else 0


def _sum_by_source(table: pa.Table) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s, c in zip(table.column("source").to_pylist(), table.column("cost_usd").to_pylist(), strict=True):
        out[s] += float(c or 0.0)
    return {k: round(v, 8) for k, v in sorted(out.items())}


def usage_metrics(table: pa.Table) -> dict[str, Any]:
    """Tokens and cost of a stage's result table (cost also per source): what the data took, cached or not."""
    return {
        "prompt_tokens": _tok(table, "prompt_tokens"),
        "completion_tokens": _tok(table, "completion_tokens"),
        "cost_usd": round(sum(table.column("cost_usd").to_pylist()) if table.num_rows else 0.0, 8),
        "cost_by_source": _sum_by_source(table) if table.num_rows else {},
    }


def log_done(log: Any, stage: str, counts: dict[str, int], ledger: Ledger, stats: RunStats) -> None:
    """The one log line that ends an LLM stage: its counts and what this run spent."""
    s = stats.to_dict()
    log.info(
        "%s: done in %.1fs: %s; this run %d calls, %d tokens, $%.4f (cache hits %d)%s",
        stage,
        s["elapsed_s"],
        ", ".join(f"{k}={v}" for k, v in counts.items() if not k.startswith("quality:")),
        ledger.calls,
        ledger.spent_tokens,
        ledger.spent_usd,
        s["statuses"].get("cached", 0),
        f"; failures by cause {s['failures_by_cause']}" if s["failures_by_cause"] else "",
    )


def spent_detail(ledger: Ledger) -> str:
    """The progress detail of an LLM stage: what this run has spent so far."""
    return f"{ledger.spent_tokens} tokens, ${ledger.spent_usd:.4f}"


# ---------------------------------------------------------------------- the engine run
def _api_key(cfg: PipelineConfig, log: Any) -> SecretStr | None:
    """Resolve the key in synchronous code (a Prefect Secret block cannot be loaded inside our event loop)."""
    key = resolve_api_key(cfg.generation.endpoint)
    if key is None:
        ref = cfg.generation.endpoint.api_key
        log.info(
            "no API key configured (%s): requests carry a placeholder key, which local servers such as vLLM and "
            "Ollama accept",
            f"environment variable {ref.env} is unset" if ref.env else "generation.endpoint.api_key is empty",
        )
    return key


async def _run_engine(
    cfg: PipelineConfig,
    api_key: SecretStr | None,
    jobs: list[Job],
    namespace: str,
    ledger: Ledger,
    on_outcome: Callable[[Outcome], None],
    make_call: Callable[[Any], CallFn],
    label: str,
) -> RunStats:
    """Build the client (with the Prefect slot when one applies), run the jobs, close the client."""
    gen = cfg.generation
    log = get_logger()
    slot = await prefect_slot_factory(gen.execution.prefect_concurrency_limit, log)
    client = make_openai_client(gen, api_key, slot, ledger.budget)
    try:
        return await execute(
            jobs,
            make_call(client),
            LLMCache(cfg.cache_path / "llm", namespace),
            ledger,
            concurrency=gen.execution.concurrency,
            on_outcome=on_outcome,
            poll_s=gen.execution.claim_poll_s,
            log=log,
            label=label,
            progress_every_s=gen.execution.progress_every_s,
        )
    finally:
        await client.close()


def run_jobs(
    cfg: PipelineConfig,
    log: Any,
    label: str,
    jobs: list[Job],
    namespace: str,
    ledger: Ledger,
    on_outcome: Callable[[Outcome], None],
    make_call: Callable[[Any], CallFn],
    staging: Path | None = None,
) -> RunStats:
    """Run the jobs through the engine (API key, Prefect slot, client, cached answers under
    ``<cache_dir>/llm/<namespace>``, ledger); on any error (or interrupt) the ``staging`` shards, if any, are
    removed. ``make_call(client)`` returns the per-job call."""
    api_key = _api_key(cfg, log) if jobs else None
    try:
        return run_sync(
            lambda: _run_engine(cfg, api_key, jobs, namespace, ledger, on_outcome, make_call, label)
        )
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------------- layer 1: answering documents
class LLMCalls:
    """Documents in, one answer (or one ``failures.jsonl`` row) per document out; see the module docstring.

    Subclasses set the class attributes and give :attr:`worker`, :attr:`instructor_mode` (or override
    :meth:`make_call`) and :meth:`columns`.
    """

    label: ClassVar[str]
    """Log label (the stage name for a committed stage)."""
    namespace: ClassVar[str]
    """Cache namespace: answers live under ``<cache_dir>/llm/<namespace>``."""
    progress_key: ClassVar[str]
    """Stable key of the progress bar / Prefect progress artifact (lowercase, dashes)."""
    title: ClassVar[str]
    """Human title of the progress bar."""
    verb: ClassVar[str]
    """What the start log line says the stage does to the documents (``judging``, ``generating for``)."""
    task_name: ClassVar[str] = ""
    """The ``task`` of the failure rows (see :meth:`task`)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.gen = cfg.generation
        self.log = get_logger()

    # ------------------------------------------------------------------ what a stage fills in
    def disabled(self) -> str | None:
        """Why the stage is off by its own config (one log line), else ``None``; no endpoint is checked before."""
        return None

    @property
    def worker(self) -> Any:
        """The stage's keys-and-call object (:class:`~.relevancy.RelevancyJudge`, :class:`~.generate.PairGenerator`):
        ``job(doc)`` gives a document's :class:`~.engine.Job`, ``await call(job, client)`` answers it."""
        raise NotImplementedError

    @property
    def instructor_mode(self) -> str:
        """The Instructor mode of the default :meth:`make_call` (``tools``, ``json``...)."""
        raise NotImplementedError

    def job(self, doc: Any) -> Job:
        """The cache key and request of one document (the worker's)."""
        return self.worker.job(doc)  # type: ignore[no-any-return]

    def make_call(self, client: Any) -> CallFn:
        """The per-job call, given the run's OpenAI client: by default the worker's call through Instructor in
        :attr:`instructor_mode` (a Pydantic-AI stage overrides this)."""
        aclient = instructor_client(client, self.instructor_mode)
        return lambda job: self.worker.call(job, aclient)  # type: ignore[no-any-return]

    def columns(self, doc: Any, o: Outcome) -> dict[str, Any]:
        """The stage's own columns of ``doc``'s row, from the answer ``o.entry["value"]``."""
        raise NotImplementedError

    def prompt_version(self, job: Job) -> str:
        """The ``prompt_version`` column of the rows ``job`` answers (the worker's single prompt by default)."""
        return str(self.worker.prompt_version)

    def task(self, job: Job) -> str:
        """The ``task`` of ``job``'s failure rows."""
        return self.task_name

    def checked(self, o: Outcome) -> Outcome:
        """``o``, or a ``failed`` outcome when a (stored) answer is unusable; the default trusts every answer."""
        return o

    def note(self, docs: list[Any]) -> str:
        """Extra words for the start log line (``, mode tools``)."""
        return ""

    # ------------------------------------------------------------------ the skeleton
    def skip_reason(self) -> str | None:
        """Why nothing is asked: no endpoint configured, or the stage disabled."""
        return llm_skip_reason(self.cfg) or self.disabled()

    def row(self, doc: Any, o: Outcome, first: bool) -> dict[str, Any]:
        """``doc``'s result row: identity, the stage's columns, what the answer cost (on the ``first`` document
        of a shared answer only) and which model, prompt and cache entry produced it."""
        assert o.entry is not None
        return {
            "doc_id": doc.id,
            "source": doc.source,
            "content_hash": doc.content_hash,
            **self.columns(doc, o),
            **usage_columns(o.entry, first),
            "model": self.gen.endpoint.model,
            "prompt_version": self.prompt_version(o.job),
            "cache_key": o.job.key,
        }

    def answer(
        self,
        docs: list[Any],
        jobs: list[Job],
        groups: dict[str, list[Any]],
        ledger: Ledger,
        add_row: Callable[[dict[str, Any]], None],
        staging: Path | None = None,
    ) -> tuple[RunStats, list[dict[str, Any]]]:
        """Run ``jobs`` (from :func:`group_jobs`), handing each answered document's :meth:`row` to ``add_row`` as
        its job finishes; returns the engine's stats and the failure rows (sorted by source, id).

        The progress bar counts documents and says what this run spent; it reaches 100 when every job ended
        (answered or not) and stays where it stopped when the run raises.
        """
        failures: list[dict[str, Any]] = []
        with progress.stage(self.progress_key, self.title, total=len(docs), unit="docs") as bar:

            def on_outcome(o: Outcome) -> None:
                o = self.checked(o)
                group = groups[o.job.key]
                for i, d in enumerate(group):
                    if o.status in ANSWERED and o.entry is not None:
                        add_row(self.row(d, o, i == 0))
                    else:
                        failures.append(failure_record(d, o, self.task(o.job)))
                if o.status != "aborted":  # the documents a fatal endpoint error stopped are not done
                    bar.advance(len(group), detail=spent_detail(ledger))

            self.log.info(
                "%s: %s %d documents (%d distinct) with %s, concurrency %d%s",
                self.label,
                self.verb,
                len(docs),
                len(jobs),
                self.gen.endpoint.model,
                self.gen.execution.concurrency,
                self.note(docs),
            )
            stats = run_jobs(
                self.cfg,
                self.log,
                self.label,
                jobs,
                self.namespace,
                ledger,
                on_outcome,
                self.make_call,
                staging,
            )
            missing = f", {len(failures)} documents without an answer" if failures else ""
            bar.done(spent_detail(ledger) + missing)
        failures.sort(key=lambda r: (r["source"], r["doc_id"]))
        return stats, failures


# ---------------------------------------------------------------------- layer 2: a committed stage
@dataclasses.dataclass
class Committed:
    """What :meth:`LLMStage.commit` wrote into the stage directory."""

    table: pa.Table
    """The per-document result table (its usage columns become the manifest's token and cost metrics)."""
    files: dict[str, tuple[str, int | None]]
    """Manifest roles -> (path relative to the stage directory, rows); ``failures`` is added by the skeleton."""
    counts: dict[str, int]
    """The stage's counts; ``failed`` and ``skipped_budget`` are added by the skeleton."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The stage's metrics; ``complete``, ``model`` and the usage metrics are added by the skeleton."""


class LLMStage(LLMCalls):
    """A committed LLM stage (see the module docstring): :meth:`run` returns its manifest, or ``None`` when skipped.

    Subclasses also set :attr:`name` and :attr:`schema` and implement :meth:`key_parts`, :meth:`documents`,
    :attr:`config_section` and :meth:`commit`.
    """

    name: ClassVar[str]
    """Stage name: the directory under the run, the manifest's ``stage`` and the log label."""
    schema: ClassVar[pa.Schema]
    """Schema of the staged result rows (:func:`~.columns.result_schema`)."""

    def __init__(
        self, cfg: PipelineConfig, upstream: list[Manifest], out_dir: str | Path | None = None
    ) -> None:
        super().__init__(cfg)
        self.upstream = list(upstream)
        self.stage_dir = Path(out_dir) if out_dir else cfg.stage_dir(self.name)

    @property
    def label(self) -> str:  # type: ignore[override]
        return self.name

    # ------------------------------------------------------------------ what a stage fills in
    def key_parts(self) -> dict[str, Any]:
        """What the stage's key depends on besides the endpoint, inputs and code: its config and prompt versions."""
        raise NotImplementedError

    @property
    def config_section(self) -> Any:
        """The stage's config section (the manifest's ``config_hash``)."""
        raise NotImplementedError

    def documents(self) -> list[Any]:
        """The documents to send, in a stable order (record what the counts need on ``self``)."""
        raise NotImplementedError

    def commit(self, staging: Path) -> Committed:
        """Under the stage lock: turn the flushed staging shards into the stage's output files (atomically) and
        remove ``staging``; say what was written."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the skeleton
    def _committed_meanwhile(self, key: str, failures: list[Any], staging: Path) -> Manifest | None:
        """Under the stage lock: the complete output another run committed while this one ran, if any."""
        if (
            self.cfg.orchestration.cache
            and not failures
            and (hit := reusable(self.stage_dir, key)) is not None
        ):
            shutil.rmtree(staging, ignore_errors=True)
            self.log.info("%s: another run completed this stage meanwhile; using its output", self.name)
            return hit
        return None

    def run(self) -> Manifest | None:
        """Reuse, or answer the documents and commit; see the module docstring."""
        log = self.log
        if (reason := self.skip_reason()) is not None:
            log.info(reason)
            return None
        key = llm_stage_key(self.cfg, self.name, self.upstream, **self.key_parts())
        if (hit := reuse(self.cfg, log, self.name, self.stage_dir, key)) is not None:
            progress.reused(self.progress_key, self.title)
            return hit

        docs = self.documents()
        jobs, groups = group_jobs(docs, self.job)
        ledger = stage_ledger(
            self.cfg
        )  # the run's shared budget; refuses an unenforceable cap before any call
        staging = staging_dir(self.stage_dir)
        writer = ShardWriter(staging, self.schema, self.gen.execution.shard_size)
        stats, failures = self.answer(docs, jobs, groups, ledger, writer.add, staging)
        with stage_lock(self.stage_dir):  # concurrent runs sharing this run directory commit one at a time
            if (hit := self._committed_meanwhile(key, failures, staging)) is not None:
                return hit
            writer.flush()
            out = self.commit(staging)
            complete = not failures
            atomic.write_jsonl(self.stage_dir / "failures.jsonl", failures)
            run_stats = {"spent": ledger.summary(), "engine": stats.to_dict()}
            atomic.write_json(self.stage_dir / "run_stats.json", run_stats)
            counts = {**out.counts, **failure_counts(failures)}
            m = Manifest.build(
                stage=self.name,
                directory=self.stage_dir,
                files={**out.files, "failures": ("failures.jsonl", len(failures))},
                counts=counts,
                schema=schema_dict(self.schema),
                metrics={
                    "complete": complete,
                    "model": self.gen.endpoint.model,
                    **out.metrics,
                    **usage_metrics(out.table),
                },
                config_hash=stable_hash(self.config_section),
                code_version=code_version(_CODE),
                cache_key=key if complete else "",
                upstream=self.upstream,
            )
            m.write()
        log_done(log, self.name, counts, ledger, stats)
        return m
