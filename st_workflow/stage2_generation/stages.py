"""The three LLM stages as plain functions (the Prefect tasks wrap them): ``llm-filter``, ``llm-pairs``, ``llm-gates``.

Each follows the stage contract (docs/ARCHITECTURE.md): cache key -> reuse, outputs written atomically under its own
directory, ``manifest.json`` last. On top of that the LLM answers live in the shared content-addressed cache
(``<cache_dir>/llm``), so an interrupted, budget-capped or failed run is simply run again: finished documents cost
nothing, only the missing ones are called. A stage that ended incomplete (failures, budget) writes its manifest with
an empty cache key and ``metrics.complete = false``, so the next run re-enters it instead of reusing it.

Manifest ``metrics`` and ``counts`` describe the *data* (tokens and USD it took to produce every answer, cached or
not), so a fully cached re-run yields the same manifest content hash; what *this* run spent, its cache hits, retries
and speed go to ``run_stats.json`` beside the manifest and to the log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import SecretStr

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, stable_hash
from st_workflow.leakage import BenchmarkGuard, LeakageTarget, benchmarks_hash
from st_workflow.locks import stage_lock
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.near_duplicates import NearDuplicateRule
from st_workflow.schemas import PAIR_SCHEMA, schema_dict
from st_workflow.stage2_generation import generate as gen_mod
from st_workflow.stage2_generation import relevancy as rel_mod
from st_workflow.stage2_generation.accounting import Ledger
from st_workflow.stage2_generation.availability import llm_skip_reason
from st_workflow.stage2_generation.budget import stage_ledger
from st_workflow.stage2_generation.cache import LLMCache
from st_workflow.stage2_generation.clients import instructor_client, make_openai_client, resolve_api_key
from st_workflow.stage2_generation.columns import usage_columns
from st_workflow.stage2_generation.documents import load_documents
from st_workflow.stage2_generation.engine import Job, Outcome, execute, run_sync
from st_workflow.stage2_generation.gates import QA_TYPE, TERM_TYPE, Candidate, apply_gates
from st_workflow.stage2_generation.report import build_summary, publish_artifact
from st_workflow.stage2_generation.shards import ShardWriter, consolidate, read_shards, write_table_atomic
from st_workflow.stage2_generation.slots import prefect_slot_factory

STAGE_FILTER = "llm-filter"
STAGE_PAIRS = "llm-pairs"
STAGE_GATES = "llm-gates"
_CODE = "stage2_generation"

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("type", pa.string()),
        pa.field("source", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("gate", pa.string()),
    ]
)


# ---------------------------------------------------------------------- helpers
def model_price(cfg: PipelineConfig) -> Any:
    """The configured price of the endpoint's model (``execution.price``, else ``execution.prices``), or ``None``
    (its calls then count as $0; a USD budget then refuses to start, see :mod:`.budget`)."""
    return cfg.generation.execution.price_for(cfg.generation.endpoint.model)


def _llm_stage_key(cfg: PipelineConfig, stage: str, upstream: list[Manifest], **specific: Any) -> str:
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


def _reuse(cfg: PipelineConfig, log: Any, stage: str, stage_dir: Path, key: str) -> Manifest | None:
    """The stage's committed output when caching is on and its key matches (inputs, config and code unchanged)."""
    if cfg.orchestration.cache and (hit := reusable(stage_dir, key)) is not None:
        log.info("%s: reusing %s (inputs, config and code unchanged)", stage, stage_dir)
        return hit
    return None


def _staging_dir(stage_dir: Path) -> Path:
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


def group_jobs(docs: list[Any], make: Any) -> tuple[list[Job], dict[str, list[Any]]]:
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


def _sum_by_source(table: pa.Table) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for s, c in zip(table.column("source").to_pylist(), table.column("cost_usd").to_pylist(), strict=True):
        out[s] += float(c or 0.0)
    return {k: round(v, 8) for k, v in sorted(out.items())}


def _tok(table: pa.Table, col: str) -> int:
    return int(sum(v or 0 for v in table.column(col).to_pylist())) if table.num_rows else 0


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
    on_outcome: Any,
    make_call: Any,
    label: str,
) -> Any:
    """Build the client (with the Prefect slot when one applies), run the jobs, close the client."""
    gen = cfg.generation
    log = get_logger()
    slot = await prefect_slot_factory(gen.execution.prefect_concurrency_limit, log)
    client = make_openai_client(gen, api_key, slot, ledger.budget)
    try:
        call = make_call(client)
        return await execute(
            jobs,
            call,
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
    stage: str,
    jobs: list[Job],
    namespace: str,
    ledger: Ledger,
    on_outcome: Any,
    make_call: Any,
    staging: Path | None = None,
) -> Any:
    """Run the jobs through the engine (API key, Prefect slot, client, cached answers under
    ``<cache_dir>/llm/<namespace>``, ledger); on any error (or interrupt) the ``staging`` shards, if any, are
    removed. ``make_call(client)`` returns the per-job call; returns the engine's :class:`~.engine.RunStats`."""
    api_key = _api_key(cfg, log) if jobs else None
    try:
        return run_sync(
            lambda: _run_engine(cfg, api_key, jobs, namespace, ledger, on_outcome, make_call, stage)
        )
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _committed_meanwhile(
    cfg: PipelineConfig, log: Any, stage: str, stage_dir: Path, key: str, failures: list[Any], staging: Path
) -> Manifest | None:
    """Under the stage lock: the complete output another run committed while this one ran, if any."""
    if cfg.orchestration.cache and not failures and (hit := reusable(stage_dir, key)) is not None:
        shutil.rmtree(staging, ignore_errors=True)
        log.info("%s: another run completed this stage meanwhile; using its output", stage)
        return hit
    return None


def _failure_counts(failures: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "failed": sum(1 for f in failures if f["status"] in ("failed", "aborted")),
        "skipped_budget": sum(1 for f in failures if f["status"] == "budget"),
    }


def _usage_metrics(table: pa.Table) -> dict[str, Any]:
    """Tokens and cost of a stage's result table (cost also per source)."""
    return {
        "prompt_tokens": _tok(table, "prompt_tokens"),
        "completion_tokens": _tok(table, "completion_tokens"),
        "cost_usd": round(sum(table.column("cost_usd").to_pylist()) if table.num_rows else 0.0, 8),
        "cost_by_source": _sum_by_source(table) if table.num_rows else {},
    }


def _write_common(stage_dir: Path, failures: list[dict[str, Any]], run_stats: dict[str, Any]) -> None:
    atomic.write_jsonl(stage_dir / "failures.jsonl", failures)
    atomic.write_json(stage_dir / "run_stats.json", run_stats)


def _read_kept(filter_manifest: Manifest) -> set[tuple[str, str]]:
    data = json.loads(filter_manifest.path("kept_ids").read_text(encoding="utf-8"))
    return {(d["source"], d["id"]) for d in data["documents"]}


# ---------------------------------------------------------------------- llm-filter
def run_relevancy_filter(
    cfg: PipelineConfig, doc_manifests: list[Manifest], *, out_dir: str | Path | None = None
) -> Manifest | None:
    """Judge every document with the Pydantic-AI relevancy agent (stage ``llm-filter``).

    Writes ``judgements.parquet`` (doc_id, source, content_hash, quality, reasons, kept, tokens, cost, model,
    prompt_version), ``kept_ids.json`` (documents that pass: kept labels plus sources not judged),
    ``failures.jsonl`` and ``run_stats.json``. Returns ``None`` (after one log line) when no endpoint is configured
    or the filter is disabled.

    Args:
        out_dir: Write here instead of ``cfg.stage_dir("llm-filter")`` (the CLI uses it).
    """
    log = get_logger()
    if (reason := llm_skip_reason(cfg)) is not None:
        log.info(reason)
        return None
    gen = cfg.generation
    if not gen.filter.enabled:
        log.info("llm-filter skipped: generation.filter.enabled is false")
        return None
    judge = rel_mod.RelevancyJudge(gen)
    stage_dir = Path(out_dir) if out_dir else cfg.stage_dir(STAGE_FILTER)
    key = _llm_stage_key(
        cfg,
        STAGE_FILTER,
        doc_manifests,
        filter=gen.filter.model_dump(mode="json"),
        prompt=judge.prompt_version,
    )
    if (hit := _reuse(cfg, log, STAGE_FILTER, stage_dir, key)) is not None:
        return hit

    docs = load_documents(doc_manifests)
    judged_docs = [d for d in docs if judge.judges(d)]
    passed = [d for d in docs if not judge.judges(d)]
    jobs, groups = group_jobs(judged_docs, judge.job)
    ledger = stage_ledger(cfg)  # the run's shared budget; refuses an unenforceable cap before any call
    staging = _staging_dir(stage_dir)
    writer = ShardWriter(staging, rel_mod.JUDGEMENT_SCHEMA, gen.execution.shard_size)
    failures: list[dict[str, Any]] = []

    def on_outcome(o: Outcome) -> None:
        for i, d in enumerate(groups[o.job.key]):
            if o.status in ("ok", "cached") and o.entry is not None:
                v = o.entry["value"]
                writer.add(
                    {
                        "doc_id": d.id,
                        "source": d.source,
                        "content_hash": d.content_hash,
                        "quality": v.get("quality"),
                        "reasons": list(v.get("reasons") or []),
                        "kept": judge.kept(v.get("quality")),
                        **usage_columns(o.entry, i == 0),
                        "model": gen.endpoint.model,
                        "prompt_version": judge.prompt_version,
                        "cache_key": o.job.key,
                    }
                )
            else:
                failures.append(failure_record(d, o, "relevancy"))

    log.info(
        "llm-filter: judging %d documents (%d distinct) with %s, concurrency %d%s",
        len(judged_docs),
        len(jobs),
        gen.endpoint.model,
        gen.execution.concurrency,
        f", {len(passed)} pass unjudged" if passed else "",
    )

    def make_call(client: Any) -> Any:
        agent = judge.agent(client)
        return lambda job: judge.call(job, agent)

    stats = run_jobs(cfg, log, STAGE_FILTER, jobs, rel_mod.NAMESPACE, ledger, on_outcome, make_call, staging)
    with stage_lock(stage_dir):  # concurrent runs sharing this run directory commit one at a time
        if (
            hit := _committed_meanwhile(cfg, log, STAGE_FILTER, stage_dir, key, failures, staging)
        ) is not None:
            return hit
        writer.flush()
        table = read_shards(staging, rel_mod.JUDGEMENT_SCHEMA)
        table = table.sort_by([("source", "ascending"), ("doc_id", "ascending")]) if table.num_rows else table
        write_table_atomic(stage_dir / "judgements.parquet", table)
        shutil.rmtree(staging, ignore_errors=True)

        kept_rows = [
            {"source": s, "id": i}
            for s, i, k in zip(
                table.column("source").to_pylist(),
                table.column("doc_id").to_pylist(),
                table.column("kept").to_pylist(),
                strict=True,
            )
            if k
        ]
        kept_rows += [{"source": d.source, "id": d.id} for d in passed]
        kept_rows.sort(key=lambda r: (r["source"], r["id"]))
        atomic.write_json(
            stage_dir / "kept_ids.json", {"keep": list(gen.filter.keep), "documents": kept_rows}
        )
        failures.sort(key=lambda r: (r["source"], r["doc_id"]))
        complete = not failures
        qualities = Counter(q for q in table.column("quality").to_pylist() if q)
        _write_common(stage_dir, failures, {"spent": ledger.summary(), "engine": stats.to_dict()})
        counts = {
            "documents": len(docs),
            "judged": table.num_rows,
            "kept": len(kept_rows),
            "rejected": table.num_rows - (len(kept_rows) - len(passed)),
            "passed_unjudged": len(passed),
            **_failure_counts(failures),
            **{f"quality:{q}": n for q, n in sorted(qualities.items())},
        }
        m = Manifest.build(
            stage=STAGE_FILTER,
            directory=stage_dir,
            files={
                "judgements": ("judgements.parquet", table.num_rows),
                "kept_ids": ("kept_ids.json", len(kept_rows)),
                "failures": ("failures.jsonl", len(failures)),
            },
            counts=counts,
            schema=schema_dict(rel_mod.JUDGEMENT_SCHEMA),
            metrics={
                "complete": complete,
                "model": gen.endpoint.model,
                "prompt_version": judge.prompt_version,
                **_usage_metrics(table),
            },
            config_hash=stable_hash(gen.filter),
            code_version=code_version(_CODE),
            cache_key=key if complete else "",
            upstream=doc_manifests,
        )
        m.write()
    log_done(log, STAGE_FILTER, counts, ledger, stats)
    return m


def log_done(log: Any, stage: str, counts: dict[str, int], ledger: Ledger, stats: Any) -> None:
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


# ---------------------------------------------------------------------- llm-pairs
def run_generation(
    cfg: PipelineConfig,
    doc_manifests: list[Manifest],
    filter_manifest: Manifest | None,
    *,
    out_dir: str | Path | None = None,
) -> Manifest | None:
    """Generate question/context pairs and search terms with Instructor (stage ``llm-pairs``).

    With ``generation.filter_before_generation`` (default) and a filter manifest, only the documents the filter kept
    are sent. When it is false every document is sent and each row records ``kept_by_filter`` so that
    :func:`run_gates` drops the rejected documents' pairs afterwards (the filter still judges each document once).

    Writes ``generated/part-*.parquet`` (one row per document, :data:`generate.GENERATED_SCHEMA`, sorted),
    ``failures.jsonl`` and ``run_stats.json``. Returns ``None`` when no endpoint is configured or generation is off.
    """
    log = get_logger()
    if (reason := llm_skip_reason(cfg)) is not None:
        log.info(reason)
        return None
    gen = cfg.generation
    if not gen.pairs.enabled:
        log.info("llm-pairs skipped: generation.pairs.enabled is false")
        return None
    generator = gen_mod.PairGenerator(gen)
    stage_dir = Path(out_dir) if out_dir else cfg.stage_dir(STAGE_PAIRS)
    upstream = list(doc_manifests) + ([filter_manifest] if filter_manifest is not None else [])
    key = _llm_stage_key(
        cfg,
        STAGE_PAIRS,
        upstream,
        pairs=gen.pairs.model_dump(mode="json"),
        filter_before_generation=gen.filter_before_generation,
        prompts={t: generator.prompt_version(t) for t in (gen_mod.QA, gen_mod.TERMS)},
    )
    if (hit := _reuse(cfg, log, STAGE_PAIRS, stage_dir, key)) is not None:
        return hit

    docs = load_documents(doc_manifests, gen.pairs.sources or None)
    kept = _read_kept(filter_manifest) if filter_manifest is not None else None
    n_in = len(docs)
    if kept is not None and gen.filter_before_generation:
        docs = [d for d in docs if (d.source, d.id) in kept]
    if gen.pairs.max_documents is not None:
        docs = docs[: gen.pairs.max_documents]
    jobs, groups = group_jobs(docs, generator.job)
    ledger = stage_ledger(cfg)  # the run's shared budget; refuses an unenforceable cap before any call
    staging = _staging_dir(stage_dir)
    writer = ShardWriter(staging, gen_mod.GENERATED_SCHEMA, gen.execution.shard_size)
    failures: list[dict[str, Any]] = []

    def on_outcome(o: Outcome) -> None:
        task = o.job.payload["task"]
        for i, d in enumerate(groups[o.job.key]):
            if o.status in ("ok", "cached") and o.entry is not None:
                v = o.entry["value"]
                writer.add(
                    {
                        "doc_id": d.id,
                        "source": d.source,
                        "content_hash": d.content_hash,
                        "task": task,
                        "status": o.entry.get("meta", {}).get("status", "ok"),
                        "question_context": v.get("question_context") or [],
                        "search_terms": v.get("search_terms") or [],
                        **usage_columns(o.entry, i == 0),
                        "model": gen.endpoint.model,
                        "prompt_version": generator.prompt_version(task),
                        "cache_key": o.job.key,
                        "kept_by_filter": None if kept is None else (d.source, d.id) in kept,
                    }
                )
            else:
                failures.append(failure_record(d, o, task))

    log.info(
        "llm-pairs: generating for %d documents (%d distinct; %d before the filter) with %s, mode %s, concurrency %d",
        len(docs),
        len(jobs),
        n_in,
        gen.endpoint.model,
        gen.pairs.mode,
        gen.execution.concurrency,
    )

    def make_call(client: Any) -> Any:
        aclient = instructor_client(client, gen.pairs.mode)
        return lambda job: generator.call(job, aclient)

    stats = run_jobs(cfg, log, STAGE_PAIRS, jobs, gen_mod.NAMESPACE, ledger, on_outcome, make_call, staging)
    with stage_lock(stage_dir):  # concurrent runs sharing this run directory commit one at a time
        if (
            hit := _committed_meanwhile(cfg, log, STAGE_PAIRS, stage_dir, key, failures, staging)
        ) is not None:
            return hit
        writer.flush()
        n_rows = consolidate(
            staging,
            stage_dir / "generated",
            gen_mod.GENERATED_SCHEMA,
            ["source", "doc_id", "task"],
            gen.execution.shard_size,
        )
        table = read_shards(stage_dir / "generated", gen_mod.GENERATED_SCHEMA)
        failures.sort(key=lambda r: (r["source"], r["doc_id"]))
        complete = not failures
        _write_common(stage_dir, failures, {"spent": ledger.summary(), "engine": stats.to_dict()})
        statuses = Counter(table.column("status").to_pylist())
        counts = {
            "documents_in": n_in,
            "documents": len(docs),
            "generated": n_rows,
            "salvaged": statuses.get("salvaged", 0),
            **_failure_counts(failures),
            "question_context_pairs": sum(len(x or []) for x in table.column("question_context").to_pylist()),
            "search_terms": sum(len(x or []) for x in table.column("search_terms").to_pylist()),
        }
        m = Manifest.build(
            stage=STAGE_PAIRS,
            directory=stage_dir,
            files={"generated": ("generated", n_rows), "failures": ("failures.jsonl", len(failures))},
            counts=counts,
            schema=schema_dict(gen_mod.GENERATED_SCHEMA),
            metrics={
                "complete": complete,
                "model": gen.endpoint.model,
                "prompt_versions": {t: generator.prompt_version(t) for t in (gen_mod.QA, gen_mod.TERMS)},
                "filter_applied": "before"
                if (kept is not None and gen.filter_before_generation)
                else ("after" if kept is not None else "none"),
                **_usage_metrics(table),
            },
            config_hash=stable_hash(gen.pairs),
            code_version=code_version(_CODE),
            cache_key=key if complete else "",
            upstream=upstream,
        )
        m.write()
    log_done(log, STAGE_PAIRS, counts, ledger, stats)
    return m


# ---------------------------------------------------------------------- llm-gates
def _find_filter(generated: Manifest) -> Manifest | None:
    for ref in generated.upstream:
        if ref.stage == STAGE_FILTER and Path(ref.path).is_file():
            return Manifest.read(ref.path)
    return None


def run_gates(
    cfg: PipelineConfig,
    generated: Manifest,
    doc_manifests: list[Manifest],
    benchmark_dirs: list[LeakageTarget | dict[str, str] | str | Path],
    *,
    filter_manifest: Manifest | None = None,
    out_dir: str | Path | None = None,
    publish: bool = True,
) -> Manifest:
    """Turn generated answers into pairs and apply the gates (stage ``llm-gates``).

    Writes ``pairs.parquet`` (exactly :data:`st_workflow.schemas.PAIR_SCHEMA`: ``question-answer`` for query ->
    context, ``search_term-document`` for term -> title + text; ``synthesized`` true, ``model``,
    ``prompt_version``), ``rejected.parquet`` (every dropped pair with its gate) and ``summary.json`` (the report),
    and publishes the report as a Prefect table artifact inside a Prefect run.

    Args:
        benchmark_dirs: the benchmarks of the leakage gate (:func:`st_workflow.leakage.leakage_targets`; a bare
            BEIR directory is guarded with the default ``answers`` rule).
        filter_manifest: The ``llm-filter`` manifest; by default the one ``generated`` consumed. Its verdicts are
            applied here when generation ran before (or without) filtering.
    """
    log = get_logger()
    g = cfg.generation.gates
    stage_dir = Path(out_dir) if out_dir else cfg.stage_dir(STAGE_GATES)
    filter_m = filter_manifest or _find_filter(generated)
    targets = [LeakageTarget.coerce(b) for b in benchmark_dirs]
    rule = NearDuplicateRule.from_config(cfg.pairs.near_duplicates)
    key = stable_hash(
        {
            "stage": STAGE_GATES,
            "gates": g.model_dump(mode="json"),
            "near_duplicates": cfg.pairs.near_duplicates.model_dump(mode="json"),
            "generated": generated.content_hash,
            "documents": [m.content_hash for m in doc_manifests],
            "filter": filter_m.content_hash if filter_m else None,
            "benchmarks": benchmarks_hash(targets) if g.leakage_check else [],
            "code": code_version(_CODE, "leakage", "near_duplicates"),
        }
    )
    if (hit := _reuse(cfg, log, STAGE_GATES, stage_dir, key)) is not None:
        return hit

    docs = {(d.source, d.id): d for d in load_documents(doc_manifests)}
    table = read_shards(generated.path("generated"), gen_mod.GENERATED_SCHEMA)
    cands: list[Candidate] = []
    missing_docs = 0
    for row in table.to_pylist():
        d = docs.get((row["source"], row["doc_id"]))
        if d is None:
            missing_docs += 1
            continue
        for qc in row["question_context"] or []:
            cands.append(
                Candidate(
                    qc["query"],
                    qc["context"],
                    QA_TYPE,
                    d.source,
                    d.id,
                    d.text,
                    row["model"],
                    row["prompt_version"],
                )
            )
        for term in row["search_terms"] or []:
            cands.append(
                Candidate(
                    term,
                    d.retrieval_text,
                    TERM_TYPE,
                    d.source,
                    d.id,
                    d.text,
                    row["model"],
                    row["prompt_version"],
                )
            )
    if missing_docs:
        log.warning(
            "llm-gates: %d generated rows name documents not in the given document manifests", missing_docs
        )

    rejected_docs: set[tuple[str, str]] | None = None
    if filter_m is not None and generated.metrics.get("filter_applied") != "before":
        kept = _read_kept(filter_m)
        rejected_docs = {(r["source"], r["doc_id"]) for r in table.to_pylist()} - kept
    leakage = BenchmarkGuard(targets, rule) if (g.leakage_check and targets) else None
    kept_pairs, rejected, gate_report = apply_gates(cands, g, leakage, rejected_docs, rule)

    pairs = pa.Table.from_pylist(
        [
            {
                "anchor": c.anchor,
                "positive": c.positive,
                "negative": None,
                "type": c.type,
                "source": c.source,
                "synthesized": True,
                "doc_id": c.doc_id,
                "model": c.model,
                "prompt_version": c.prompt_version,
            }
            for c in kept_pairs
        ],
        schema=PAIR_SCHEMA,
    )
    with stage_lock(stage_dir):
        if cfg.orchestration.cache and (hit := reusable(stage_dir, key)) is not None:
            return hit
        write_table_atomic(stage_dir / "pairs.parquet", pairs)
        write_table_atomic(
            stage_dir / "rejected.parquet", pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)
        )
        by_source = Counter(c.source for c in kept_pairs)
        by_type = Counter(c.type for c in kept_pairs)
        summary = build_summary(
            filter_m, generated, gate_report, dict(by_source), dict(sorted(by_type.items())), len(cands)
        )
        atomic.write_json(stage_dir / "summary.json", summary)
        counts = {
            "generated_pairs": len(cands),
            "pairs": pairs.num_rows,
            "rejected": len(rejected),
            **{f"type:{t}": n for t, n in sorted(by_type.items())},
            **{f"source:{s}": n for s, n in sorted(by_source.items())},
            **{f"gate:{r['gate']}:dropped": r["dropped"] for r in gate_report},
        }
        m = Manifest.build(
            stage=STAGE_GATES,
            directory=stage_dir,
            files={
                "pairs": ("pairs.parquet", pairs.num_rows),
                "rejected": ("rejected.parquet", len(rejected)),
                "summary": ("summary.json", None),
            },
            counts=counts,
            schema=schema_dict(PAIR_SCHEMA),
            metrics={
                "gates": gate_report,
                "cost_usd": summary["cost_usd"]["total"],
                "cost_per_kept_pair_usd": summary["cost_usd"]["per_kept_pair"],
            },
            config_hash=stable_hash(g),
            code_version=code_version(_CODE),
            cache_key=key,
            upstream=[generated, *doc_manifests, *([filter_m] if filter_m else [])],
        )
        m.write()
    log.info(
        "llm-gates: %d of %d generated pairs kept (%s); cost $%.4f, $%s per kept pair",
        pairs.num_rows,
        len(cands),
        ", ".join(f"{r['gate']} -{r['dropped']}" for r in gate_report),
        summary["cost_usd"]["total"],
        summary["cost_usd"]["per_kept_pair"],
    )
    if publish:
        publish_artifact(summary, log)
    return m
