"""The in-domain benchmark: a seeded share of the documents, held out of training, written in BEIR layout.

This is how the original's NASA SDE IR benchmark was made, done reproducibly: a document is held out when
``u = sha256("<seed>:<source>:<id>") / 2**256 < fraction`` (per source, so adding documents never moves an existing
one in or out, and every source contributes its share); ``max_queries_per_source`` keeps the ones with the smallest
``u``. Only documents that form a valid natural pair are eligible.

Layout (``<run>/benchmark/<name>/``):

* ``queries.jsonl``: the held-out titles, one query per distinct normalised title (``q-<hash>``);
* ``corpus.jsonl``: each held-out document as ``<source>:<id>`` with the same text the natural pairs use as positive
  (structured "Label: value" description for CMR/PDS, abstract for arXiv) — retrieval is title -> description;
* ``qrels/test.tsv``: a query is relevant to every held-out document with that title, and to every held-out document
  whose corpus text equals one of those (identical records are equally right answers);
* ``qrels/<type>~<source>.tsv`` per source and pair type when ``per_source_qrels`` (like NASA SDE IR's several qrels);
* ``heldout.jsonl``: source, id, content hash, corpus id and query id of every held-out document, which the natural
  pairs and the LLM stages use to exclude them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.beir import write_benchmark
from st_workflow.config.root import PipelineConfig
from st_workflow.hashing import code_version, combine_hashes, sha256_text, stable_hash
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.manifest import MANIFEST_NAME, Manifest, reusable
from st_workflow.schemas import normalize_for_match

from .structured import natural_pair

STAGE = "benchmark"
HELDOUT = "heldout.jsonl"


@dataclass
class HeldOut:
    """One held-out document."""

    u: float
    source: str
    id: str
    title: str
    positive: str
    type: str
    content_hash: str

    @property
    def corpus_id(self) -> str:
        return f"{self.source}:{self.id}"


def holdout_score(seed: int, source: str, doc_id: str) -> float:
    """The seeded uniform number in [0, 1) that decides whether a document is held out.

    Example:
        >>> 0.0 <= holdout_score(42, "cmr", "C1-PODAAC") < 1.0
        True
    """
    digest = hashlib.sha256(f"{seed}:{source}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def source_kind(manifest: Manifest, cfg: PipelineConfig | None = None) -> str:
    """The kind (arxiv, cmr, pds, hf, local) of an ingest manifest."""
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


def build_holdout(cfg: PipelineConfig, doc_manifests: list[Manifest]) -> Manifest | None:
    """Write the in-domain BEIR benchmark ``<run>/benchmark/<pairs.holdout.name>/``; None when the hold-out is off.

    Manifest roles: ``corpus``, ``queries``, ``qrels`` (the directory), ``heldout``. Counts: ``queries``, ``corpus``,
    ``qrels``, ``heldout:<source>``, ``eligible:<source>``.
    """
    h = cfg.pairs.holdout
    if not h.enabled:
        return None
    manifests = selected_manifests(cfg, doc_manifests)
    out_dir = cfg.stage_dir(STAGE) / h.name
    config_hash = stable_hash(
        {
            "holdout": h.model_dump(mode="json"),
            "natural": cfg.pairs.natural.model_dump(mode="json", exclude={"enabled", "dedup"}),
            "min_anchor_chars": cfg.pairs.min_anchor_chars,
            "min_positive_chars": cfg.pairs.min_positive_chars,
            "seed": cfg.seed,
        }
    )
    code = code_version("ingest", "beir", "schemas")  # the benchmark files are written by beir.py
    key = combine_hashes([STAGE, h.name, config_hash, *(m.content_hash for m in manifests), code])
    if (hit := reusable(out_dir, key)) is not None:
        get_logger().info(
            "benchmark %s: documents and config unchanged, re-using %s", h.name, hit.manifest_path
        )
        return hit

    held: list[HeldOut] = []
    counts: dict[str, int] = {}
    for m in manifests:
        kind = source_kind(m, cfg)
        picked: list[HeldOut] = []
        n_eligible = 0
        pf = pq.ParquetFile(m.path("documents"))
        for batch in pf.iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                ptype, anchor, positive = natural_pair(row, kind, cfg.pairs.natural)
                if eligible(cfg, anchor, positive):
                    continue
                n_eligible += 1
                u = holdout_score(cfg.seed, m.name, row["id"])
                if u < h.fraction:
                    picked.append(HeldOut(u, m.name, row["id"], anchor, positive, ptype, row["content_hash"]))
        picked.sort(key=lambda x: (x.u, x.id))
        if h.max_queries_per_source is not None:
            picked = picked[: h.max_queries_per_source]
        counts[f"eligible:{m.name}"] = n_eligible
        counts[f"heldout:{m.name}"] = len(picked)
        held += picked

    corpus, queries, qrels = _benchmark_rows(held, h.corpus_title)
    with atomic.atomic_dir(out_dir) as tmp:
        per_source: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        by_cid = {x.corpus_id: x for x in held}
        for q, d, s in qrels:
            x = by_cid[d]
            per_source[f"{x.type}~{x.source}"].append((q, d, s))
        files = {"test": qrels, **(dict(sorted(per_source.items())) if h.per_source_qrels else {})}
        written = write_benchmark(tmp, corpus, queries, files)
        n_held = atomic.write_jsonl(
            tmp / HELDOUT,
            (
                {
                    "source": x.source,
                    "id": x.id,
                    "content_hash": x.content_hash,
                    "corpus_id": x.corpus_id,
                    "query_id": query_id(x.title),
                    "type": x.type,
                }
                for x in sorted(held, key=lambda x: (x.source, x.id))
            ),
        )
        counts |= {"queries": written["queries"], "corpus": written["corpus"], "qrels": written["qrels:test"]}
        m = Manifest.build(
            stage=STAGE,
            name=h.name,
            directory=tmp,
            files={
                "corpus": ("corpus.jsonl", written["corpus"]),
                "queries": ("queries.jsonl", written["queries"]),
                "qrels": ("qrels", written["qrels:test"]),
                "heldout": (HELDOUT, n_held),
            },
            counts=counts,
            metrics={"qrels_files": sorted(f"qrels/{stem}.tsv" for stem in files), "fraction": h.fraction},
            config_hash=config_hash,
            code_version=code,
            cache_key=key,
            upstream=manifests,
        )
        m.directory = str(out_dir)
        m.write(tmp / MANIFEST_NAME)
    get_logger().info(
        "benchmark %s: %d queries, %d documents held out (%s) -> %s",
        h.name,
        counts["queries"],
        counts["corpus"],
        ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counts.items() if k.startswith("heldout:")),
        out_dir,
    )
    return m


def query_id(title: str) -> str:
    """The id of the query asking for ``title`` (stable: a hash of the normalised title)."""
    return "q-" + sha256_text(normalize_for_match(title))[:16]


def _benchmark_rows(
    held: list[HeldOut], corpus_title: bool
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]], list[tuple[str, str, int]]]:
    """Corpus, queries (one per distinct normalised title) and qrels, all sorted by id."""
    by_title: dict[str, list[HeldOut]] = defaultdict(list)
    by_text: dict[str, list[HeldOut]] = defaultdict(list)
    for x in held:
        by_title[normalize_for_match(x.title)].append(x)
        by_text[normalize_for_match(x.positive)].append(x)
    queries: list[tuple[str, str]] = []
    qrels: list[tuple[str, str, int]] = []
    for docs in by_title.values():
        qid = query_id(docs[0].title)
        docs = sorted(docs, key=lambda x: (x.source, x.id))
        queries.append((qid, docs[0].title))
        relevant = {x.corpus_id for x in docs}
        for x in docs:
            relevant |= {y.corpus_id for y in by_text[normalize_for_match(x.positive)]}
        qrels += [(qid, cid, 1) for cid in sorted(relevant)]
    corpus = sorted((x.corpus_id, x.title if corpus_title else "", x.positive) for x in held)
    return corpus, sorted(queries), sorted(qrels)


def read_heldout(manifest: Manifest) -> list[dict[str, Any]]:
    """The ``heldout.jsonl`` rows of a benchmark manifest."""
    with open(manifest.path("heldout"), "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def benchmark_dir(manifest: Manifest) -> Path:
    """The BEIR directory of a benchmark manifest (for the evaluator and the leakage gates)."""
    return Path(manifest.directory)
