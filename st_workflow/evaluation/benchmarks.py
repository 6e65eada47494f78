"""Benchmarks in BEIR layout from a local directory, a Hugging Face dataset, NanoBEIR, or the pipeline's hold-out.

Every source becomes the same in-memory :class:`Benchmark`: one or more :class:`Subset` (a corpus + queries +
several qrels files), with the corpus laid out in trec_eval tie order (doc id descending) so that searches can break
score ties by position. Each (subset, qrels file) pair is a :class:`Task`, the unit that is scored, dumped and reused.

Hub loading is real ``datasets.load_dataset`` (``corpus``/``queries``/``qrels`` configs, or qrels files inside the
repo), and the same code path loads a local dataset directory (a copy of the Hub repo: files plus a README with
``configs``), which is how it is tested offline. An unreachable or uncached Hub dataset raises
:class:`BenchmarkUnavailableError` within ``hub_timeout_s`` instead of hanging.

Example:
    >>> import tempfile, pathlib
    >>> from st_workflow.beir import write_benchmark
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_benchmark(d, corpus=[("d1", "T", "x"), ("d2", "", "y")], queries=[("q1", "x?")],
    ...                     qrels={"test": [("q1", "d1", 1)]})
    >>> b = load_local(d, name="tiny")
    >>> [t.id for t in b.tasks()], b.subsets[0].doc_ids, b.subsets[0].texts
    (['test'], ['d2', 'd1'], ['y', 'T x'])
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_workflow import benchmark_hashes
from st_workflow.beir import qrels_files, read_corpus, read_qrels, read_queries
from st_workflow.config.evaluation import NANOBEIR_DATASETS, BenchmarkSpec
from st_workflow.hashing import seeded_unit
from st_workflow.resources import resolve_path

logger = logging.getLogger(__name__)

NANOBEIR_ORG = "zeta-alpha-ai"


class BenchmarkUnavailableError(RuntimeError):
    """A benchmark could not be loaded (Hub unreachable, offline and not cached, missing files...)."""


# ---------------------------------------------------------------------------------------------- data model
@dataclass
class Subset:
    """One corpus with its queries and one or more qrels files."""

    name: str
    """Empty for single-corpus benchmarks; ``NanoSciFact``... for NanoBEIR."""
    doc_ids: list[str]
    """Corpus ids in trec tie order (descending)."""
    texts: list[str]
    """``(title + " " + text).strip()`` per document, aligned with ``doc_ids``."""
    queries: dict[str, str]
    """Query id -> text (only queries some qrels file judges)."""
    qrels: dict[str, dict[str, dict[str, int]]]
    """Qrels name (file stem or split) -> ``{query_id: {doc_id: grade}}``."""
    stats: dict[str, int] = field(default_factory=dict)
    """Problems found while loading: ``missing_queries`` (judged but without text), ``missing_docs`` (judged but
    not in the corpus; they still count as relevant, as in trec_eval), ``empty_docs``."""

    @functools.cached_property
    def corpus_hash(self) -> str:
        """:func:`st_workflow.benchmark_hashes.corpus_hash` of the texts that get embedded."""
        return benchmark_hashes.corpus_hash(self.doc_ids, self.texts)

    def qrels_hash(self, name: str) -> str:
        """:func:`st_workflow.benchmark_hashes.qrels_hash` of one qrels file (judgements and judged query texts)."""
        return benchmark_hashes.qrels_hash(self.qrels[name], self.queries)


@dataclass(frozen=True)
class Task:
    """One scored unit: a subset's corpus against one qrels file."""

    id: str
    subset: Subset
    qrels_name: str
    role: str = "test"
    """``test`` (headline numbers) or ``validation`` (what choices are made on)."""

    @property
    def qrels(self) -> dict[str, dict[str, int]]:
        return self.subset.qrels[self.qrels_name]

    @property
    def query_ids(self) -> list[str]:
        """Judged queries that have a text, sorted."""
        return sorted(q for q in self.qrels if q in self.subset.queries)


@dataclass
class Benchmark:
    """A named benchmark: what a dump file and a report column are about."""

    name: str
    source: str
    """Directory or dataset id it was loaded from."""
    subsets: list[Subset]
    kind: str = "local"
    general: bool = False
    """A general-domain benchmark (promotion floor applies)."""
    query_prompt: str | None = None
    """Prompt prepended to every query."""
    validation_qrels: frozenset[str] = frozenset()
    """Qrels names (of every subset) that are validation splits."""

    def tasks(self) -> list[Task]:
        """Every (subset, qrels file); ids are ``qrels`` names, ``Subset`` names, or ``Subset/qrels``."""
        out = []
        for s in self.subsets:
            for q in s.qrels:
                if s.name and len(s.qrels) == 1:
                    tid = s.name
                elif s.name:
                    tid = f"{s.name}/{q}"
                else:
                    tid = q
                out.append(Task(tid, s, q, "validation" if q in self.validation_qrels else "test"))
        return out

    def headline_tasks(self) -> list[Task]:
        """The tasks reports show (every task that is not a validation split)."""
        return [t for t in self.tasks() if t.role == "test"]

    def validation_tasks(self) -> list[Task]:
        """The tasks choices are made on."""
        return [t for t in self.tasks() if t.role == "validation"]

    def describe(self) -> dict[str, Any]:
        """Identity and sizes recorded in dumps."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "general": self.general,
            "validation_qrels": sorted(self.validation_qrels),
            "subsets": {
                s.name: {
                    "corpus_hash": s.corpus_hash,
                    "docs": len(s.doc_ids),
                    "qrels": {q: {"queries": len(v), "sha256": s.qrels_hash(q)} for q, v in s.qrels.items()},
                    **({"problems": s.stats} if any(s.stats.values()) else {}),
                }
                for s in self.subsets
            },
        }


# ---------------------------------------------------------------------------------------------- assembly
VALIDATION = "validation"


def carve_validation(
    qrels: Mapping[str, Mapping[str, int]], fraction: float, seed: int
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Split judged queries into (headline, validation): the ``round(fraction * n)`` queries with the smallest
    seeded hash of their id are validation. Exact sizes matter on small benchmarks (30 queries split by a coin
    per query can come out 19/11).

    Example:
        >>> test, val = carve_validation({f"q{i}": {"d": 1} for i in range(101)}, 0.5, seed=42)
        >>> len(test), len(val)
        (51, 50)
    """
    order = sorted(qrels, key=lambda q: (seeded_unit(seed, VALIDATION, str(q)), str(q)))
    chosen = set(order[: round(fraction * len(order))])
    head = {str(q): dict(d) for q, d in qrels.items() if q not in chosen}
    val = {str(q): dict(d) for q, d in qrels.items() if q in chosen}
    return head, val


def with_validation(
    named: dict[str, dict[str, dict[str, int]]],
    *,
    split: str,
    validation: dict[str, dict[str, int]] | None,
    fraction: float | None,
    seed: int,
    label: str,
) -> tuple[dict[str, dict[str, dict[str, int]]], frozenset[str]]:
    """Add the validation qrels (given, or carved from the headline split); returns (qrels, validation names)."""
    if validation is not None:
        return {**named, VALIDATION: validation}, frozenset([VALIDATION])
    if not fraction:
        return named, frozenset()
    if split not in named or len(named) != 1:
        raise BenchmarkUnavailableError(
            f"benchmark {label!r}: validation_fraction carves one qrels split, but it has {sorted(named)}"
        )
    head, val = carve_validation(named[split], fraction, seed)
    return {split: head, VALIDATION: val}, frozenset([VALIDATION])


def build_subset(
    name: str,
    corpus: Iterable[tuple[str, str, str]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, Mapping[str, int]]],
    *,
    max_queries: int | None = None,
    seed: int = 42,
    label: str = "",
) -> Subset:
    """Assemble a :class:`Subset` from ``(doc_id, title, text)`` rows, queries and named qrels.

    Judged queries without a text and judged documents missing from the corpus are counted (and logged), never
    silently dropped from the denominators.
    """
    docs: dict[str, str] = {}
    empty = 0
    for doc_id, title, text in corpus:
        t = ((title or "") + " " + (text or "")).strip()
        empty += not t
        docs[str(doc_id)] = t
    ids = sorted(docs, reverse=True)
    stats = {"missing_queries": 0, "missing_docs": 0, "empty_docs": empty}
    kept_qrels: dict[str, dict[str, dict[str, int]]] = {}
    rng = random.Random(seed)
    for qname, judged in qrels.items():
        table = {str(q): {str(d): int(g) for d, g in docs_.items()} for q, docs_ in judged.items() if docs_}
        missing = [q for q in table if q not in queries]
        stats["missing_queries"] += len(missing)
        for q in missing:
            del table[q]
        stats["missing_docs"] += sum(1 for v in table.values() for d in v if d not in docs)
        if max_queries is not None and len(table) > max_queries:
            keep = sorted(rng.sample(sorted(table), max_queries))
            table = {q: table[q] for q in keep}
        kept_qrels[qname] = table
    if stats["missing_queries"] or stats["missing_docs"]:
        logger.warning(
            "%s%s: %d judged queries have no text (skipped), %d judged documents are not in the corpus "
            "(counted as relevant but never retrievable)",
            label,
            f"/{name}" if name else "",
            stats["missing_queries"],
            stats["missing_docs"],
        )
    needed = {q for t in kept_qrels.values() for q in t}
    return Subset(
        name=name,
        doc_ids=ids,
        texts=[docs[i] for i in ids],
        queries={q: queries[q] for q in sorted(needed)},
        qrels=kept_qrels,
        stats=stats,
    )


def _expand_qrels(directory: Path, split: str, patterns: list[str]) -> list[Path]:
    if not patterns:
        p = directory / "qrels" / f"{split}.tsv"
        if not p.is_file():
            available = [q.name for q in qrels_files(directory)]
            raise BenchmarkUnavailableError(f"{directory}: no qrels/{split}.tsv (available: {available})")
        return [p]
    out: list[Path] = []
    for pattern in patterns:
        matches = (
            sorted(directory.glob(pattern)) if any(c in pattern for c in "*?[") else [directory / pattern]
        )
        missing = [m for m in matches if not m.is_file()]
        if not matches or missing:
            raise BenchmarkUnavailableError(f"{directory}: qrels file {pattern!r} not found")
        out.extend(matches)
    return out


def load_local(
    directory: str | Path,
    *,
    name: str,
    split: str = "test",
    qrels: list[str] | None = None,
    max_queries: int | None = None,
    seed: int = 42,
    kind: str = "local",
    general: bool = False,
    query_prompt: str | None = None,
    validation_split: str | None = None,
    validation_fraction: float | None = None,
) -> Benchmark:
    """A BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``).

    ``validation_split`` names a qrels file used for choices when it exists (``qrels/<name>.tsv``); without one,
    ``validation_fraction`` carves a seeded share of the headline split's queries into validation.
    """
    d = resolve_path(directory)
    if not (d / "corpus.jsonl").is_file():
        raise BenchmarkUnavailableError(f"benchmark {name!r}: {d} is not a BEIR directory (no corpus.jsonl)")
    files = _expand_qrels(d, split, qrels or [])
    corpus = read_corpus(d)
    named = {f.stem: read_qrels(f) for f in files}
    val_file = d / "qrels" / f"{validation_split}.tsv" if validation_split else None
    given = (
        read_qrels(val_file)
        if val_file is not None and val_file.is_file() and val_file.stem not in named
        else None
    )
    named, val_names = with_validation(
        named, split=split, validation=given, fraction=validation_fraction, seed=seed, label=name
    )
    subset = build_subset(
        "",
        ((i, doc["title"], doc["text"]) for i, doc in corpus.items()),
        read_queries(d),
        named,
        max_queries=max_queries,
        seed=seed,
        label=name,
    )
    return Benchmark(
        name,
        str(d),
        [subset],
        kind=kind,
        general=general,
        query_prompt=query_prompt,
        validation_qrels=val_names,
    )


# ---------------------------------------------------------------------------------------------- hub
def hub_offline() -> bool:
    """Whether the Hub may not be contacted (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def check_hub(repo_id: str, *, revision: str | None, timeout: float, name: str) -> None:
    """Fail fast (within ``timeout``) with a clear message when the Hub cannot serve ``repo_id``."""
    if hub_offline():
        return
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=timeout)
    except Exception as e:
        raise BenchmarkUnavailableError(
            f"benchmark {name!r}: the Hugging Face Hub did not serve dataset {repo_id!r} within {timeout:g} s "
            f"({type(e).__name__}: {str(e)[:200]}). Check the network and HF_TOKEN for gated sets, set "
            "HF_HUB_OFFLINE=1 to use a cached copy, or set on_unavailable: skip for this benchmark."
        ) from e


def _load_split(
    path: str,
    config: str | None,
    *,
    preferred: list[str],
    revision: str | None,
    data_files: str | list[str] | None = None,
    name: str,
    **builder_kwargs: Any,
) -> Any:
    from datasets import load_dataset

    try:
        dd = load_dataset(path, config, data_files=data_files, revision=revision, **builder_kwargs)
    except Exception as e:
        what = f"config {config!r}" if config else f"files {data_files!r}" if data_files else "default config"
        hint = (
            " The Hub is switched off (HF_HUB_OFFLINE=1) and no cached copy exists."
            if hub_offline() and not Path(path).exists() and not data_files
            else ""
        )
        raise BenchmarkUnavailableError(
            f"benchmark {name!r}: cannot load {what} of {path!r} ({type(e).__name__}: {str(e)[:300]}).{hint}"
        ) from e
    for s in preferred:
        if s and s in dd:
            return dd[s]
    if len(dd) == 1:
        return next(iter(dd.values()))
    raise BenchmarkUnavailableError(
        f"benchmark {name!r}: {path!r} {config or ''} has splits {list(dd)}, none of {preferred}"
    )


def _load_file(path: str, file: str, *, revision: str | None, name: str) -> Any:
    """One file inside a dataset repo (Hub or local copy), read with the builder its extension names.

    A repo mixing formats (JSONL corpus, TSV qrels) cannot be read through one inferred builder, so files are
    addressed directly: ``hf://datasets/<repo>@<revision>/<file>`` on the Hub.
    """
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    ext = Path(file).suffix.lower()
    if ext not in _EXTENSION_TO_MODULE:
        raise BenchmarkUnavailableError(
            f"benchmark {name!r}: cannot read qrels file {file!r} (unknown format)"
        )
    module, kwargs = _EXTENSION_TO_MODULE[ext]
    if Path(path).exists():
        url = str(Path(path) / file)
        if not Path(url).is_file():
            raise BenchmarkUnavailableError(f"benchmark {name!r}: {url} does not exist")
    else:
        url = f"hf://datasets/{path}{'@' + revision if revision else ''}/{file}"
    return _load_split(module, None, preferred=["train"], revision=None, data_files=url, name=name, **kwargs)


def _column(ds: Any, *names: str, required: bool = True, what: str = "") -> list[Any] | None:
    for n in names:
        if n in ds.column_names:
            if getattr(ds, "_indices", None) is None:
                return ds.data.column(n).to_pylist()
            return list(ds[n])
    if required:
        raise BenchmarkUnavailableError(f"{what}: none of the columns {list(names)} in {ds.column_names}")
    return None


def _qrels_from_dataset(ds: Any, what: str) -> dict[str, dict[str, int]]:
    qids = _column(ds, "query-id", "query_id", "qid", what=what)
    dids = _column(ds, "corpus-id", "corpus_id", "doc_id", "docid", what=what)
    scores = _column(ds, "score", "relevance", "label", required=False, what=what)
    out: dict[str, dict[str, int]] = {}
    for i, (q, d) in enumerate(zip(qids or [], dids or [], strict=True)):
        grade = int(float(scores[i])) if scores is not None and scores[i] is not None else 1
        for doc in d if isinstance(d, list) else [d]:
            out.setdefault(str(q), {})[str(doc)] = grade
    return out


def load_hub_subset(
    path: str,
    *,
    name: str,
    subset_name: str = "",
    split: str = "test",
    corpus_config: str = "corpus",
    queries_config: str = "queries",
    qrels_config: str | None = None,
    qrels: list[str] | None = None,
    revision: str | None = None,
    hub_timeout_s: float = 20.0,
    max_queries: int | None = None,
    seed: int = 42,
    validation_fraction: float | None = None,
) -> Subset:
    """One Hub (or local dataset directory) BEIR set through ``datasets.load_dataset``.

    Qrels come from ``qrels`` files inside the repo (one task each), else the ``qrels_config`` (a config of
    ``path``, or another dataset id when it contains ``/``), else the dataset ``<path>-qrels`` (BeIR layout) or,
    failing that, the ``default`` config of ``path`` (mteb layout). ``validation_fraction`` carves a seeded share
    of the split's queries into a ``validation`` qrels.
    """
    local = Path(path).exists()
    if not local:
        check_hub(path, revision=revision, timeout=hub_timeout_s, name=name)
    corpus_ds = _load_split(
        path, corpus_config, preferred=[corpus_config, "corpus", "train", split], revision=revision, name=name
    )
    queries_ds = _load_split(
        path,
        queries_config,
        preferred=[queries_config, "queries", "train", split],
        revision=revision,
        name=name,
    )
    what = f"benchmark {name!r} ({path})"
    ids = _column(corpus_ds, "_id", "id", "doc_id", what=f"{what} corpus") or []
    texts = _column(corpus_ds, "text", "body", "contents", what=f"{what} corpus") or []
    titles = _column(corpus_ds, "title", required=False) or [""] * len(ids)
    q_ids = _column(queries_ds, "_id", "id", "query_id", what=f"{what} queries") or []
    q_texts = _column(queries_ds, "text", "query", what=f"{what} queries") or []
    queries = {str(i): t or "" for i, t in zip(q_ids, q_texts, strict=True)}
    named: dict[str, dict[str, dict[str, int]]] = {}
    if qrels:
        for f in qrels:
            ds = _load_file(path, f, revision=revision, name=name)
            named[Path(f).stem] = _qrels_from_dataset(ds, f"{what} {f}")
    else:
        if qrels_config and "/" in qrels_config:
            sources: list[tuple[str, str | None]] = [(qrels_config, None)]
        elif qrels_config:
            sources = [(path, qrels_config)]
        else:
            # BeIR keeps qrels in a sibling dataset ``<id>-qrels``; mteb/* in the ``default`` config.
            sources = [(f"{path}-qrels", None), (path, "default")]
        errors: list[str] = []
        ds = None
        for src, cfg_name in sources:
            if Path(src).exists() or not local or src == path:
                try:
                    ds = _load_split(
                        src,
                        cfg_name,
                        preferred=[split],
                        revision=revision if src == path else None,
                        name=name,
                    )
                    break
                except BenchmarkUnavailableError as e:
                    errors.append(str(e))
        if ds is None:
            raise BenchmarkUnavailableError(
                f"benchmark {name!r}: no qrels found (tried {sources}); set qrels_config or qrels_files. "
                + " | ".join(errors)
            )
        named[split] = _qrels_from_dataset(ds, f"{what} qrels")
    named, _ = with_validation(
        named, split=split, validation=None, fraction=validation_fraction, seed=seed, label=name
    )
    return build_subset(
        subset_name,
        zip(ids, titles, texts, strict=True),
        queries,
        named,
        max_queries=max_queries,
        seed=seed,
        label=name,
    )


def nanobeir_sources(root: str | None, subsets: list[str] | None = None) -> dict[str, tuple[str, str | None]]:
    """``{"NanoSciFact": (dataset path, split override)}`` for the requested NanoBEIR sets.

    ``root`` is an organisation (``zeta-alpha-ai``: one dataset per set) or a directory holding ``Nano<name>``
    dataset directories; a consolidated dataset such as ``sentence-transformers/NanoBEIR-en`` (one split per
    set) is recognised by ``NanoBEIR`` in its name.
    """
    names = subsets or NANOBEIR_DATASETS
    unknown = [n for n in names if n.removeprefix("Nano") not in NANOBEIR_DATASETS]
    if unknown:
        raise ValueError(f"unknown NanoBEIR sets {unknown}; known: {NANOBEIR_DATASETS}")
    root = root or NANOBEIR_ORG
    out = {}
    for n in names:
        full = "Nano" + n.removeprefix("Nano")
        if "nanobeir" in Path(root).name.lower():
            out[full] = (root, full)
        else:
            out[full] = (f"{root.rstrip('/')}/{full}", None)
    return out


# ---------------------------------------------------------------------------------------------- registry
def load_benchmark(
    spec: BenchmarkSpec,
    *,
    directory: str | Path | None = None,
    seed: int = 42,
    hub_timeout_s: float = 20.0,
) -> Benchmark:
    """Load a configured benchmark; ``directory`` is the built BEIR directory of a ``pipeline`` benchmark.

    Raises:
        BenchmarkUnavailableError: naming the benchmark and what could not be read, with a hint.
    """
    common = {"general": spec.general, "query_prompt": spec.query_prompt}
    if spec.kind == "pipeline" or spec.kind == "local":
        where = directory if spec.kind == "pipeline" else spec.path
        if where is None:
            raise BenchmarkUnavailableError(
                f"benchmark {spec.name!r} ({spec.kind}): no directory "
                + ("was built for it" if spec.kind == "pipeline" else "configured (path)")
            )
        return load_local(
            where,
            name=spec.name,
            split=spec.split,
            qrels=spec.qrels_files,
            max_queries=spec.max_queries,
            seed=seed,
            kind=spec.kind,
            validation_split=spec.validation_split,
            validation_fraction=spec.validation_fraction,
            **common,
        )
    if spec.kind == "hf":
        if not spec.path:
            raise BenchmarkUnavailableError(f"benchmark {spec.name!r} (hf): path (the dataset id) is not set")
        path = str(resolve_path(spec.path)) if Path(spec.path).exists() else spec.path
        subset = load_hub_subset(
            path,
            name=spec.name,
            split=spec.split,
            corpus_config=spec.corpus_config,
            queries_config=spec.queries_config,
            qrels_config=spec.qrels_config,
            qrels=spec.qrels_files,
            revision=spec.revision,
            hub_timeout_s=hub_timeout_s,
            max_queries=spec.max_queries,
            seed=seed,
            validation_fraction=spec.validation_fraction,
        )
        return Benchmark(spec.name, path, [subset], kind="hf", validation_qrels=_carved(spec), **common)
    subsets = []
    for set_name, (path, split_override) in nanobeir_sources(spec.path, spec.subsets).items():
        subsets.append(
            load_hub_subset(
                path,
                name=f"{spec.name}/{set_name}",
                subset_name=set_name,
                split=split_override or spec.split,
                corpus_config="corpus",
                queries_config="queries",
                qrels_config=spec.qrels_config or "qrels",
                revision=spec.revision,
                hub_timeout_s=hub_timeout_s,
                max_queries=spec.max_queries,
                seed=seed,
                validation_fraction=spec.validation_fraction,
            )
        )
    return Benchmark(
        spec.name,
        spec.path or NANOBEIR_ORG,
        subsets,
        kind="nanobeir",
        validation_qrels=_carved(spec),
        **common,
    )


def _carved(spec: BenchmarkSpec) -> frozenset[str]:
    return frozenset([VALIDATION]) if spec.validation_fraction else frozenset()


def spec_from_argument(
    value: str,
    *,
    registry: list[BenchmarkSpec] | None = None,
    split: str | None = None,
    qrels_files: list[str] | None = None,
) -> BenchmarkSpec:
    """What the CLI's ``--benchmark`` names: a BEIR directory, a registry name, ``nanobeir``, or a dataset id."""
    extra: dict[str, Any] = {}
    if split:
        extra["split"] = split
    if qrels_files:
        extra["qrels_files"] = qrels_files
    for spec in registry or []:
        if spec.name == value:
            return spec.model_copy(update=extra)
    p = resolve_path(value)
    if (p / "corpus.jsonl").is_file():
        return BenchmarkSpec(name=p.name, kind="local", path=str(p), **extra)
    if value.lower() == "nanobeir":
        return BenchmarkSpec(name="nanobeir", kind="nanobeir", **{"split": "train", **extra})
    if p.is_dir():
        return BenchmarkSpec(name=p.name, kind="hf", path=str(p), **extra)
    if "/" in value and not value.startswith((".", "/")):
        return BenchmarkSpec(name=value.split("/")[-1], kind="hf", path=value, **extra)
    known = [s.name for s in registry or []]
    raise BenchmarkUnavailableError(
        f"--benchmark {value!r} is neither a BEIR directory, a benchmark of the config {known}, 'nanobeir', "
        "nor a Hugging Face dataset id (owner/name)"
    )
