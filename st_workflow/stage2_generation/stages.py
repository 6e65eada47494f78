"""The three LLM stages as plain functions (the Prefect tasks wrap them): ``llm-filter``, ``llm-pairs``, ``llm-gates``.

Each follows the stage contract (docs/ARCHITECTURE.md): cache key -> reuse, outputs written atomically under its own
directory, ``manifest.json`` last. On top of that the LLM answers live in the shared content-addressed cache
(``<cache_dir>/llm``), so an interrupted, budget-capped or failed run is simply run again: finished documents cost
nothing, only the missing ones are called. A stage that ended incomplete (failures, budget) writes its manifest with
an empty cache key and ``metrics.complete = false``, so the next run re-enters it instead of reusing it.

The two stages that call the LLM are :class:`~.llm_stage.LLMStage` subclasses: the skeleton owns keys, reuse,
budget, staging, locking, the engine run, commit and the manifest; each stage here says only which documents it
sends, what one job is and how its answers become rows and files.

Manifest ``metrics`` and ``counts`` describe the *data* (tokens and USD it took to produce every answer, cached or
not), so a fully cached re-run yields the same manifest content hash; what *this* run spent, its cache hits, retries
and speed go to ``run_stats.json`` beside the manifest and to the log.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

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
from st_workflow.stage2_generation.documents import Doc, load_documents
from st_workflow.stage2_generation.engine import CallFn, Job, Outcome
from st_workflow.stage2_generation.gates import QA_TYPE, TERM_TYPE, Candidate, apply_gates
from st_workflow.stage2_generation.llm_stage import Committed, LLMStage, reuse
from st_workflow.stage2_generation.report import build_summary, publish_artifact
from st_workflow.stage2_generation.shards import consolidate, read_shards, write_table_atomic

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


def _read_kept(filter_manifest: Manifest) -> set[tuple[str, str]]:
    data = json.loads(filter_manifest.path("kept_ids").read_text(encoding="utf-8"))
    return {(d["source"], d["id"]) for d in data["documents"]}


# ---------------------------------------------------------------------- llm-filter
class RelevancyFilterStage(LLMStage):
    """``llm-filter``: one Pydantic-AI verdict per judged document; sources not judged pass unjudged."""

    name = STAGE_FILTER
    namespace = rel_mod.NAMESPACE
    schema = rel_mod.JUDGEMENT_SCHEMA
    progress_key = "relevancy-filter"
    title = "Relevancy filter"
    verb = "judging"
    task_name = "relevancy"

    @functools.cached_property
    def worker(self) -> rel_mod.RelevancyJudge:
        return rel_mod.RelevancyJudge(self.gen)

    def disabled(self) -> str | None:
        return None if self.gen.filter.enabled else "llm-filter skipped: generation.filter.enabled is false"

    def key_parts(self) -> dict[str, Any]:
        return {"filter": self.gen.filter.model_dump(mode="json"), "prompt": self.worker.prompt_version}

    @property
    def config_section(self) -> Any:
        return self.gen.filter

    def documents(self) -> list[Doc]:
        docs = load_documents(self.upstream)
        self.n_docs = len(docs)
        self.passed = [d for d in docs if not self.worker.judges(d)]
        return [d for d in docs if self.worker.judges(d)]

    def note(self, docs: list[Doc]) -> str:
        return f", {len(self.passed)} pass unjudged" if self.passed else ""

    def make_call(self, client: Any) -> CallFn:
        agent = self.worker.agent(client)
        return lambda job: self.worker.call(job, agent)

    def columns(self, doc: Doc, o: Outcome) -> dict[str, Any]:
        v = o.entry["value"] if o.entry else {}
        return {
            "quality": v.get("quality"),
            "reasons": list(v.get("reasons") or []),
            "kept": self.worker.kept(v.get("quality")),
        }

    def commit(self, staging: Path) -> Committed:
        """``judgements.parquet`` (sorted) and ``kept_ids.json`` (kept labels plus the documents not judged)."""
        table = read_shards(staging, self.schema)
        table = table.sort_by([("source", "ascending"), ("doc_id", "ascending")]) if table.num_rows else table
        write_table_atomic(self.stage_dir / "judgements.parquet", table)
        shutil.rmtree(staging, ignore_errors=True)
        cols = [table.column(c).to_pylist() for c in ("source", "doc_id", "kept")]
        kept_rows = [{"source": s, "id": i} for s, i, k in zip(*cols, strict=True) if k]
        kept_rows += [{"source": d.source, "id": d.id} for d in self.passed]
        kept_rows.sort(key=lambda r: (r["source"], r["id"]))
        atomic.write_json(
            self.stage_dir / "kept_ids.json", {"keep": list(self.gen.filter.keep), "documents": kept_rows}
        )
        qualities = Counter(q for q in table.column("quality").to_pylist() if q)
        return Committed(
            table,
            files={
                "judgements": ("judgements.parquet", table.num_rows),
                "kept_ids": ("kept_ids.json", len(kept_rows)),
            },
            counts={
                "documents": self.n_docs,
                "judged": table.num_rows,
                "kept": len(kept_rows),
                "rejected": table.num_rows - (len(kept_rows) - len(self.passed)),
                "passed_unjudged": len(self.passed),
                **{f"quality:{q}": n for q, n in sorted(qualities.items())},
            },
            metrics={"prompt_version": self.worker.prompt_version},
        )


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
    return RelevancyFilterStage(cfg, doc_manifests, out_dir).run()


# ---------------------------------------------------------------------- llm-pairs
class PairGenerationStage(LLMStage):
    """``llm-pairs``: one Instructor answer (question/context pairs or search terms) per document."""

    name = STAGE_PAIRS
    namespace = gen_mod.NAMESPACE
    schema = gen_mod.GENERATED_SCHEMA
    progress_key = "generation"
    title = "Generating pairs"
    verb = "generating for"

    def __init__(
        self,
        cfg: PipelineConfig,
        doc_manifests: list[Manifest],
        filter_manifest: Manifest | None,
        out_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            cfg, [*doc_manifests, *([filter_manifest] if filter_manifest is not None else [])], out_dir
        )
        self.doc_manifests = list(doc_manifests)
        self.filter_manifest = filter_manifest

    @functools.cached_property
    def worker(self) -> gen_mod.PairGenerator:
        return gen_mod.PairGenerator(self.gen)

    @property
    def instructor_mode(self) -> str:
        return self.gen.pairs.mode

    @functools.cached_property
    def kept(self) -> set[tuple[str, str]] | None:
        """The documents the filter kept (``None`` without a filter manifest)."""
        return _read_kept(self.filter_manifest) if self.filter_manifest is not None else None

    @property
    def prompt_versions(self) -> dict[str, str]:
        return {t: self.worker.prompt_version(t) for t in (gen_mod.QA, gen_mod.TERMS)}

    def disabled(self) -> str | None:
        return None if self.gen.pairs.enabled else "llm-pairs skipped: generation.pairs.enabled is false"

    def key_parts(self) -> dict[str, Any]:
        return {
            "pairs": self.gen.pairs.model_dump(mode="json"),
            "filter_before_generation": self.gen.filter_before_generation,
            "prompts": self.prompt_versions,
        }

    @property
    def config_section(self) -> Any:
        return self.gen.pairs

    def documents(self) -> list[Doc]:
        gen = self.gen
        docs = load_documents(self.doc_manifests, gen.pairs.sources or None)
        self.n_in = len(docs)
        if self.kept is not None and gen.filter_before_generation:
            docs = [d for d in docs if (d.source, d.id) in self.kept]
        if gen.pairs.max_documents is not None:
            docs = docs[: gen.pairs.max_documents]
        self.n_docs = len(docs)
        return docs

    def note(self, docs: list[Doc]) -> str:
        return f"; {self.n_in} before the filter, mode {self.gen.pairs.mode}"

    def task(self, job: Job) -> str:
        return str(job.payload["task"])

    def prompt_version(self, job: Job) -> str:
        return self.worker.prompt_version(self.task(job))

    def columns(self, doc: Doc, o: Outcome) -> dict[str, Any]:
        entry = o.entry or {}
        v = entry.get("value") or {}
        return {
            "task": self.task(o.job),
            "status": entry.get("meta", {}).get("status", "ok"),
            "question_context": v.get("question_context") or [],
            "search_terms": v.get("search_terms") or [],
            "kept_by_filter": None if self.kept is None else (doc.source, doc.id) in self.kept,
        }

    def commit(self, staging: Path) -> Committed:
        """The ``generated/`` shards, sorted by (source, doc_id, task)."""
        gen = self.gen
        n_rows = consolidate(
            staging,
            self.stage_dir / "generated",
            self.schema,
            ["source", "doc_id", "task"],
            gen.execution.shard_size,
        )
        table = read_shards(self.stage_dir / "generated", self.schema)
        statuses = Counter(table.column("status").to_pylist())
        before = self.kept is not None and gen.filter_before_generation
        return Committed(
            table,
            files={"generated": ("generated", n_rows)},
            counts={
                "documents_in": self.n_in,
                "documents": self.n_docs,
                "generated": n_rows,
                "salvaged": statuses.get("salvaged", 0),
                "question_context_pairs": sum(
                    len(x or []) for x in table.column("question_context").to_pylist()
                ),
                "search_terms": sum(len(x or []) for x in table.column("search_terms").to_pylist()),
            },
            metrics={
                "prompt_versions": self.prompt_versions,
                "filter_applied": "before" if before else ("after" if self.kept is not None else "none"),
            },
        )


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
    return PairGenerationStage(cfg, doc_manifests, filter_manifest, out_dir).run()


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
    if (hit := reuse(cfg, log, STAGE_GATES, stage_dir, key)) is not None:
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
