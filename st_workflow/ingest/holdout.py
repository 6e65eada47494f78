"""The in-domain benchmark: held-out near-duplicate families, searched over the whole collection, in BEIR layout.

This is how the original's NASA SDE IR benchmark was made, done so that it can see a difference:

* **Families, held out whole.** Documents whose titles or texts are near-duplicates (one rule,
  :mod:`st_workflow.near_duplicates`: "NWS Daily Climatology Data: 1978 (SNF)" and "…: 1979 (SNF)") form a
  family. A family is held out when ``u = sha256("<seed>:<source>:<id>")`` of its first document (in ``(source,
  id)`` order) is below ``fraction``, so a sibling of a benchmark answer never trains the model, and adding
  documents never moves an unrelated family in or out. ``max_queries_per_source`` adds families in ``u`` order
  while they fit.
* **The whole collection is the corpus.** Every ingested document (of ``pairs.natural.sources``) with a text is a
  corpus entry, training documents included: they are the distractors a user's search really faces. Retrieval
  is query -> the document's natural-pair text (structured "Label: value" description for CMR/PDS, abstract for
  arXiv).
* **Queries** come from the held-out documents: their titles, or (``queries: llm``) a question a scientist would
  type, written by the LLM endpoint and grounded in the document. A query is relevant to its own document, to the
  held-out documents with the same title (title queries) and to documents with the identical text (identical
  records are equally right answers).
* **Seeded validation and test splits**, by family: ``qrels/validation.tsv`` is for choices (checkpoints,
  interpolation, promotion), ``qrels/test.tsv`` for the reported numbers.

Layout (``<run>/benchmark/<name>/``): ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{validation,test}.tsv`` (and
``qrels/<type>~<source>.tsv`` for the test queries of each source when ``per_source_qrels``), ``heldout.jsonl``
(every held-out document with its family, split and query id; the natural pairs and the LLM stages exclude
them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.beir import write_benchmark
from st_workflow.config.root import PipelineConfig
from st_workflow.hashing import code_version, combine_hashes, seeded_unit, sha256_text, stable_hash
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.manifest import MANIFEST_NAME, Manifest, reusable
from st_workflow.near_duplicates import NearDuplicateRule, families
from st_workflow.schemas import normalize_for_match

from .structured import natural_pair

STAGE = "benchmark"
HELDOUT = "heldout.jsonl"
SPLITS = ("validation", "test")


@dataclass
class Record:
    """One document of the collection, as the benchmark sees it."""

    source: str
    id: str
    title: str
    positive: str
    type: str
    content_hash: str
    text: str
    eligible: bool
    """It forms a valid natural pair (so it may be a query's document and a training pair)."""
    family: int = -1
    """Index of the family's first record."""

    @property
    def corpus_id(self) -> str:
        return f"{self.source}:{self.id}"


def holdout_score(seed: int, source: str, doc_id: str) -> float:
    """The seeded uniform number in [0, 1) that decides whether a document's family is held out.

    Example:
        >>> 0.0 <= holdout_score(42, "cmr", "C1-PODAAC") < 1.0
        True
    """
    return seeded_unit(seed, source, doc_id)


def split_score(seed: int, source: str, doc_id: str) -> float:
    """The seeded uniform number that puts a held-out family in ``validation`` (below the fraction) or ``test``."""
    return holdout_score(seed, f"split:{source}", doc_id)


def source_kind(manifest: Manifest, cfg: PipelineConfig | None = None) -> str:
    """The source kind (arxiv, cmr, pds, hf, local, ads or a plug-in's) of an ingest manifest."""
    kind = manifest.metrics.get("kind")
    if isinstance(kind, str):
        return kind
    if cfg is not None:
        return cfg.ingest.source(manifest.name).kind
    raise ValueError(f"ingest manifest {manifest.manifest_path} does not say its source kind")


def selected_manifests(cfg: PipelineConfig, doc_manifests: list[Manifest]) -> list[Manifest]:
    """The ingest manifests that natural pairs and the hold-out use (``pairs.natural.sources``; empty: all), by name."""
    wanted = cfg.pairs.natural.sources
    missing = sorted(set(wanted) - {m.name for m in doc_manifests})
    if missing:
        raise ValueError(f"pairs.natural.sources names {missing}, which were not ingested")
    return sorted((m for m in doc_manifests if not wanted or m.name in wanted), key=lambda m: m.name)


def eligible(cfg: PipelineConfig, anchor: str, positive: str) -> str | None:
    """Why a natural pair is not usable (``short_anchor``/``short_positive``), or None when it is."""
    if len(anchor) < cfg.pairs.min_anchor_chars:
        return "short_anchor"
    if len(positive) < cfg.pairs.min_positive_chars:
        return "short_positive"
    return None


def query_mode(cfg: PipelineConfig) -> str:
    """``title`` or ``llm``: what ``pairs.holdout.queries`` means with this config (``auto``: llm iff an endpoint)."""
    mode = cfg.pairs.holdout.queries
    writer_on = cfg.generation.endpoint.configured and cfg.generation.benchmark_queries.enabled
    if mode == "auto":
        return "llm" if writer_on else "title"
    if mode == "llm" and not writer_on:
        get_logger().warning(
            "pairs.holdout.queries is llm but no LLM endpoint is configured (or generation.benchmark_queries is "
            "disabled): the benchmark queries are the titles"
        )
        return "title"
    return mode


def near_duplicate_rule(cfg: PipelineConfig) -> NearDuplicateRule:
    """The configured near-duplicate rule (``pairs.near_duplicates``)."""
    return NearDuplicateRule.from_config(cfg.pairs.near_duplicates)


def read_records(cfg: PipelineConfig, manifests: list[Manifest]) -> list[Record]:
    """Every document with a text, sorted by ``(source, id)``, with its natural pair and eligibility."""
    out: list[Record] = []
    for m in manifests:
        kind = source_kind(m, cfg)
        for batch in pq.ParquetFile(m.path("documents")).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                ptype, anchor, positive = natural_pair(row, kind, cfg.pairs.natural)
                if not positive.strip():
                    continue
                out.append(
                    Record(
                        source=m.name,
                        id=row["id"],
                        title=anchor,
                        positive=positive,
                        type=ptype,
                        content_hash=row["content_hash"],
                        text=row.get("text") or "",
                        eligible=eligible(cfg, anchor, positive) is None,
                    )
                )
    out.sort(key=lambda r: (r.source, r.id))
    return out


def _pick_families(cfg: PipelineConfig, records: list[Record]) -> tuple[set[int], dict[int, str]]:
    """Held-out family ids and the split of each."""
    h = cfg.pairs.holdout
    members: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        members[r.family].append(r)
    scored = []
    for fam, rs in members.items():
        if not any(r.eligible for r in rs):
            continue  # a family without a usable query stays in the collection as distractors
        first = records[fam]
        scored.append((holdout_score(cfg.seed, first.source, first.id), first.source, first.id, fam))
    scored.sort()
    held: set[int] = set()
    per_source: dict[str, int] = defaultdict(int)
    cap = h.max_queries_per_source
    for u, _, _, fam in scored:
        if u >= h.fraction:
            break
        counts: dict[str, int] = defaultdict(int)
        for r in members[fam]:
            counts[r.source] += r.eligible
        if cap is not None and any(per_source[s] + n > cap for s, n in counts.items()):
            continue
        held.add(fam)
        for s, n in counts.items():
            per_source[s] += n
    split = {
        fam: "validation"
        if split_score(cfg.seed, records[fam].source, records[fam].id) < h.validation_fraction
        else "test"
        for fam in held
    }
    return held, split


def _llm_queries(
    cfg: PipelineConfig, docs: list[Record], work_dir: Path
) -> tuple[dict[str, str], dict[str, Any]]:
    """LLM-written queries by corpus id, and what it cost; documents it failed for keep their title."""
    from st_workflow.stage2_generation.benchmark_queries import QueryDoc, write_benchmark_queries

    result = write_benchmark_queries(
        cfg,
        [QueryDoc(d.source, d.id, d.title, d.text or d.positive, d.content_hash) for d in docs],
        work_dir=work_dir,
    )
    queries = {f"{s}:{i}": q for (s, i), q in result.queries.items()}
    # What the queries took to write (cached or not): the same on every re-run, so the manifest stays stable.
    produced = (result.usage or {}).get("produced", {})
    info = {
        "complete": bool(result.complete),
        "llm_queries": len(queries),
        "llm_failures": len(result.failures),
        "llm_model": result.model,
        "llm_prompt_version": result.prompt_version,
        **{f"llm_{k}": v for k, v in produced.items() if isinstance(v, int | float)},
    }
    if result.failures:
        get_logger().warning(
            "benchmark queries: the LLM failed for %d of %d documents; their titles are used instead",
            len(result.failures),
            len(docs),
        )
    return queries, info


def build_holdout(cfg: PipelineConfig, doc_manifests: list[Manifest]) -> Manifest | None:
    """Write the in-domain BEIR benchmark ``<run>/benchmark/<pairs.holdout.name>/``; None when the hold-out is off.

    Manifest roles: ``corpus``, ``queries``, ``qrels`` (the directory), ``heldout``. Counts: ``queries``,
    ``queries:<split>``, ``corpus``, ``qrels``, ``families``, ``families:heldout``, ``heldout``,
    ``heldout:<source>``, ``eligible:<source>``, ``distractors``. With LLM queries that did not all succeed the
    manifest says ``metrics.complete = false`` and is never reused (a re-run pays only for what is missing).
    """
    h = cfg.pairs.holdout
    if not h.enabled:
        return None
    manifests = selected_manifests(cfg, doc_manifests)
    out_dir = cfg.stage_dir(STAGE) / h.name
    mode = query_mode(cfg)
    corpus_title = h.corpus_title if h.corpus_title is not None else mode != "title"
    config_hash = stable_hash(
        {
            "holdout": h.model_dump(mode="json"),
            "query_mode": mode,
            "corpus_title": corpus_title,
            "llm": _llm_identity(cfg) if mode == "llm" else None,
            "natural": cfg.pairs.natural.model_dump(mode="json", exclude={"enabled", "dedup"}),
            "near_duplicates": cfg.pairs.near_duplicates.model_dump(mode="json"),
            "min_anchor_chars": cfg.pairs.min_anchor_chars,
            "min_positive_chars": cfg.pairs.min_positive_chars,
            "seed": cfg.seed,
        }
    )
    code = code_version(
        "ingest", "beir", "schemas", "near_duplicates", *(["stage2_generation"] if mode == "llm" else [])
    )
    key = combine_hashes([STAGE, h.name, config_hash, *(m.content_hash for m in manifests), code])
    if (hit := reusable(out_dir, key)) is not None:
        get_logger().info(
            "benchmark %s: documents and config unchanged, re-using %s", h.name, hit.manifest_path
        )
        return hit

    records = read_records(cfg, manifests)
    rule = near_duplicate_rule(cfg)
    for r, fam in zip(
        records, families([[r.title for r in records], [r.positive for r in records]], rule), strict=True
    ):
        r.family = fam
    held, split_of = _pick_families(cfg, records)
    heldout = [r for r in records if r.family in held]
    query_docs = [r for r in heldout if r.eligible]

    metrics: dict[str, Any] = {"fraction": h.fraction, "queries_from": mode, "corpus_title": corpus_title}
    llm_text: dict[str, str] = {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if mode == "llm" and query_docs:
        llm_text, info = _llm_queries(cfg, query_docs, out_dir.parent / f".{h.name}.llm")
        metrics |= info

    corpus = [(r.corpus_id, r.title if corpus_title else "", r.positive) for r in records]
    queries, qrels, query_of = _queries_and_qrels(records, query_docs, split_of, llm_text)
    complete = metrics.get("complete", True)
    counts: dict[str, int] = {
        "families": len({r.family for r in records}),
        "families:heldout": len(held),
        "heldout": len(heldout),
        "distractors": len(records) - len(heldout),
        **{f"queries:{s}": len({q for q, _, _ in qrels[s]}) for s in SPLITS},
    }
    for m in manifests:
        counts[f"eligible:{m.name}"] = sum(r.eligible for r in records if r.source == m.name)
        counts[f"heldout:{m.name}"] = sum(r.eligible for r in heldout if r.source == m.name)

    with atomic.atomic_dir(out_dir) as tmp:
        files: dict[str, list[tuple[str, str, int]]] = {
            s: qrels[s] for s in SPLITS if qrels[s] or s == "test"
        }
        if h.per_source_qrels:
            by_cid = {r.corpus_id: r for r in records}
            per_source: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
            for q, d, s in qrels["test"]:
                r = by_cid[d]
                per_source[f"{r.type}~{r.source}"].append((q, d, s))
            files |= dict(sorted(per_source.items()))
        written = write_benchmark(tmp, corpus, queries, files)
        n_held = atomic.write_jsonl(
            tmp / HELDOUT,
            (
                {
                    "source": r.source,
                    "id": r.id,
                    "content_hash": r.content_hash,
                    "corpus_id": r.corpus_id,
                    "query_id": query_of.get(r.corpus_id),
                    "type": r.type,
                    "family": records[r.family].corpus_id,
                    "split": split_of[r.family],
                }
                for r in heldout
            ),
        )
        counts |= {"queries": written["queries"], "corpus": written["corpus"], "qrels": written["qrels:test"]}
        manifest = Manifest.build(
            stage=STAGE,
            name=h.name,
            directory=tmp,
            files={
                "corpus": ("corpus.jsonl", written["corpus"]),
                "queries": ("queries.jsonl", written["queries"]),
                "qrels": ("qrels", written["qrels:test"]),
                "heldout": (HELDOUT, n_held),
            },
            counts=dict(sorted(counts.items())),
            metrics={
                **metrics,
                "complete": complete,
                "splits": [s for s in SPLITS if s in files],
                "qrels_files": sorted(f"qrels/{stem}.tsv" for stem in files),
            },
            config_hash=config_hash,
            code_version=code,
            cache_key=key if complete else "",
            upstream=manifests,
        )
        manifest.directory = str(out_dir)
        manifest.write(tmp / MANIFEST_NAME)
    get_logger().info(
        "benchmark %s: %d queries (validation %d, test %d) from %d held-out documents in %d of %d families "
        "(%s); corpus %d documents, %d of them training distractors -> %s",
        h.name,
        counts["queries"],
        counts["queries:validation"],
        counts["queries:test"],
        counts["heldout"],
        counts["families:heldout"],
        counts["families"],
        ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("heldout:")),
        counts["corpus"],
        counts["distractors"],
        out_dir,
    )
    return manifest


def _llm_identity(cfg: PipelineConfig) -> str:
    """Everything but the documents that LLM-written queries depend on (prompt, schema, model, sampling...)."""
    from st_workflow.stage2_generation.benchmark_queries import benchmark_query_fingerprint

    return benchmark_query_fingerprint(cfg)


def query_id(title: str) -> str:
    """The id of the query asking for ``title`` (stable: a hash of the normalised title)."""
    return "q-" + sha256_text(normalize_for_match(title))[:16]


def _queries_and_qrels(
    records: list[Record],
    query_docs: list[Record],
    split_of: dict[int, str],
    llm_text: dict[str, str],
) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str, int]]], dict[str, str]]:
    """Queries, qrels per split (sorted) and the query id of every query document."""
    same_text: dict[str, set[str]] = defaultdict(set)
    for r in records:
        same_text[normalize_for_match(r.positive)].add(r.corpus_id)
    groups: dict[str, tuple[str, list[Record]]] = {}
    for r in query_docs:
        text = llm_text.get(r.corpus_id)
        if text:
            qid = "q-" + sha256_text(f"{r.source}:{r.id}")[:16]
        else:
            text, qid = r.title, query_id(r.title)
        groups.setdefault(qid, (text, []))[1].append(r)
    queries: list[tuple[str, str]] = []
    qrels: dict[str, list[tuple[str, str, int]]] = {s: [] for s in SPLITS}
    query_of: dict[str, str] = {}
    for qid, (text, docs) in groups.items():
        queries.append((qid, text))
        relevant: set[str] = set()
        for r in docs:
            relevant.add(r.corpus_id)
            relevant |= same_text[normalize_for_match(r.positive)]
            query_of[r.corpus_id] = qid
        split = split_of[docs[0].family]
        qrels[split] += [(qid, cid, 1) for cid in sorted(relevant)]
    return sorted(queries), {s: sorted(v) for s, v in qrels.items()}, query_of


def read_heldout(manifest: Manifest) -> list[dict[str, Any]]:
    """The ``heldout.jsonl`` rows of a benchmark manifest."""
    with open(manifest.path("heldout"), "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def benchmark_dir(manifest: Manifest) -> Path:
    """The BEIR directory of a benchmark manifest (for the evaluator and the leakage gates)."""
    return Path(manifest.directory)
