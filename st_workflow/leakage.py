"""Benchmark leakage: what a training pair must not contain, decided by one rule for every stage.

Leakage means *the answers*, not the corpus. A training pair leaks into a benchmark when

* any of its texts (anchor, positive, negative) is a near-duplicate of one of the benchmark's queries, or
* its anchor or positive is a near-duplicate of a document judged relevant to one of the benchmark's queries (in
  the qrels files it evaluates), or its positive is a passage of one (a generated context cut out of it): that
  pair would teach the model the benchmark's answer.

Corpus documents that answer no query are fair game: the normal case is searching the very collection one trains
on. "Near-duplicate" is :mod:`st_workflow.near_duplicates`' rule (the hold-out families and the synthetic-pair gate
use the same one). Each benchmark chooses how strict to be (``evaluation.benchmarks[].leakage``):

* ``answers`` (default): the rule above;
* ``corpus``: stricter, any text near-duplicating any query or any corpus document leaks;
* ``queries``: only the queries;
* ``none``: no check (a benchmark you knowingly train on).

Example:
    >>> import tempfile, pathlib
    >>> from st_workflow.beir import write_benchmark
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_benchmark(d, [("d1", "", "Dust storms on Mars grow in summer."), ("d2", "", "Comet tails.")],
    ...                     [("q1", "When do Mars dust storms grow?")], {"test": [("q1", "d1", 1)]})
    >>> guard = BenchmarkGuard([LeakageTarget("mars", str(d))])
    >>> guard.check("Martian weather", "Dust storms on Mars grow in summer.").reason
    'relevant document'
    >>> guard.check("What makes comet tails?", "Comet tails.") is None
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from st_workflow.beir import doc_text, qrels_files, read_corpus, read_qrels, read_queries
from st_workflow.benchmark_hashes import benchmarks_hash
from st_workflow.near_duplicates import NearDuplicateIndex, NearDuplicateRule

if TYPE_CHECKING:
    from st_workflow.config import PipelineConfig
    from st_workflow.manifest import Manifest

__all__ = [
    "LEAKAGE_MODES",
    "PAIR_FIELDS",
    "BenchmarkGuard",
    "Leak",
    "LeakageError",
    "LeakageMode",
    "LeakageTarget",
    "benchmarks_hash",
    "check_all_not_dropped",
    "evaluated_qrels",
    "leakage_targets",
]

LeakageMode = Literal["answers", "corpus", "queries", "none"]
LEAKAGE_MODES = ("answers", "corpus", "queries", "none")
PAIR_FIELDS = ("anchor", "positive", "negative")


class LeakageError(RuntimeError):
    """Training pairs contain benchmark answers, or a leakage rule left no training pair at all."""


@dataclass(frozen=True)
class LeakageTarget:
    """A benchmark to guard: its name (for messages and counts), BEIR directory and strictness."""

    name: str
    directory: str
    mode: str = "answers"
    qrels: tuple[str, ...] = ()
    """Stems of the qrels files whose queries are the benchmark's (``test``, ``validation``); empty: every file.
    A ``train`` split the benchmark does not evaluate is training data, not an answer key."""

    def __post_init__(self) -> None:
        if self.mode not in LEAKAGE_MODES:
            raise ValueError(
                f"benchmark {self.name!r}: unknown leakage mode {self.mode!r}; use one of {LEAKAGE_MODES}"
            )

    @classmethod
    def coerce(cls, value: LeakageTarget | dict[str, str] | str | Path) -> LeakageTarget:
        """From a target, its dict form (what Prefect tasks pass) or a bare directory (``answers`` mode)."""
        if isinstance(value, LeakageTarget):
            return value
        if isinstance(value, dict):
            return cls(**{**value, "qrels": tuple(value.get("qrels") or ())})
        p = Path(value)
        return cls(p.name, str(p))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "directory": self.directory, "mode": self.mode, "qrels": list(self.qrels)}

    @property
    def option(self) -> str:
        """The config option that sets this target's strictness."""
        return f"evaluation.benchmarks[{self.name}].leakage"


@dataclass(frozen=True)
class Leak:
    """Why one pair leaks."""

    benchmark: str
    mode: str
    field: str
    """Which text of the pair: ``anchor``, ``positive`` or ``negative``."""
    reason: str
    """``query``, ``relevant document`` or ``corpus document``."""
    match: str
    """Id of the query or document it duplicates."""

    def describe(self, text: str = "") -> str:
        shown = f": {text[:160]!r}" if text else ""
        return (
            f"its {self.field} near-duplicates {self.reason} {self.match!r} of benchmark {self.benchmark!r} "
            f"(leakage: {self.mode}){shown}"
        )


class _Guarded:
    """The indexes of one benchmark."""

    def __init__(self, target: LeakageTarget, rule: NearDuplicateRule) -> None:
        self.target = target
        d = Path(target.directory)
        for f in ("corpus.jsonl", "queries.jsonl"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"benchmark {target.name!r} at {d} is not BEIR layout ({f} missing)")
        mode = target.mode
        queries = read_queries(d)
        judged: set[str] = set()
        relevant: set[str] = set()
        files = [f for f in qrels_files(d) if not target.qrels or f.stem in target.qrels]
        for f in files:
            for q, docs in read_qrels(f).items():
                judged.add(q)
                relevant.update(doc for doc, grade in docs.items() if grade > 0)
        # With every qrels file guarded, unjudged queries in queries.jsonl are kept out of training as well; with
        # named files only their queries are the benchmark's (the others may be a train split).
        self.query_ids = sorted(q for q in queries if not target.qrels or q in judged)
        self.queries = NearDuplicateIndex(rule, [queries[q] for q in self.query_ids])
        self.doc_ids: list[str] = []
        texts: list[str] = []
        if mode in ("answers", "corpus"):
            corpus = read_corpus(d)
            wanted = sorted(relevant if mode == "answers" else corpus)
            for doc_id in wanted:
                doc = corpus.get(doc_id)
                if doc is None:
                    continue
                for t in dict.fromkeys((doc.get("text", ""), doc_text(doc))):
                    if t.strip():
                        self.doc_ids.append(doc_id)
                        texts.append(t)
        self.docs = NearDuplicateIndex(rule, texts)
        self.doc_reason = "relevant document" if mode == "answers" else "corpus document"
        self.stats = {"queries": len(self.query_ids), "documents": len(set(self.doc_ids))}

    def check(self, texts: dict[str, str | None]) -> Leak | None:
        t = self.target
        for fld in PAIR_FIELDS:
            text = texts.get(fld)
            if not text:
                continue
            if (i := self.queries.first_match(text)) is not None:
                return Leak(t.name, t.mode, fld, "query", self.query_ids[i])
            docs_apply = t.mode == "corpus" or (t.mode == "answers" and fld != "negative")
            if not docs_apply:
                continue
            if (j := self.docs.first_match(text)) is not None:
                return Leak(t.name, t.mode, fld, self.doc_reason, self.doc_ids[j])
            if fld != "anchor" and (inside := self.docs.containing(text)):
                return Leak(t.name, t.mode, fld, f"a passage of {self.doc_reason}", self.doc_ids[inside[0]])
        return None


class BenchmarkGuard:
    """Every configured benchmark's queries and answers, indexed for near-duplicate checks of training pairs."""

    def __init__(
        self,
        targets: Iterable[LeakageTarget | dict[str, str] | str | Path],
        rule: NearDuplicateRule | None = None,
    ) -> None:
        self.rule = rule or NearDuplicateRule()
        self.targets = [LeakageTarget.coerce(t) for t in targets]
        self._guarded = [_Guarded(t, self.rule) for t in self.targets if t.mode != "none"]

    def __bool__(self) -> bool:
        return bool(self._guarded)

    def check(
        self, anchor: str | None, positive: str | None = None, negative: str | None = None
    ) -> Leak | None:
        """The first leak of a pair into any benchmark, or None when it is clean."""
        texts = {"anchor": anchor, "positive": positive, "negative": negative}
        for g in self._guarded:
            if (leak := g.check(texts)) is not None:
                return leak
        return None

    def describe(self) -> list[dict[str, Any]]:
        """What is guarded: per benchmark its mode, queries and documents indexed."""
        return [{"name": g.target.name, "mode": g.target.mode, **g.stats} for g in self._guarded]


def leakage_targets(cfg: PipelineConfig, holdout: Manifest | None) -> list[LeakageTarget]:
    """The benchmarks training must not leak into: the built hold-out and every local benchmark that exists.

    Hub benchmarks (``hf``, ``nanobeir``) are not guarded: they cannot be read offline before evaluation.
    """
    from st_workflow.resources import resolve_path

    specs = cfg.evaluation.benchmarks
    out: list[LeakageTarget] = []
    if holdout is not None:
        pipeline = [s for s in specs if s.kind == "pipeline"]
        spec = next(
            (s for s in pipeline if s.name == holdout.name), pipeline[0] if len(pipeline) == 1 else None
        )
        out.append(
            LeakageTarget(
                spec.name if spec else holdout.name, holdout.directory, spec.leakage if spec else "answers"
            )
        )
    for s in specs:
        if s.kind == "local" and s.path:
            p = resolve_path(s.path)
            if (p / "corpus.jsonl").is_file():
                out.append(LeakageTarget(s.name, str(p), s.leakage, evaluated_qrels(s, p)))
    return out


def evaluated_qrels(spec: Any, directory: Path) -> tuple[str, ...]:
    """Stems of the qrels files a local benchmark spec evaluates: its split, its validation split, its
    ``qrels_files`` (globs expanded)."""
    stems = [spec.split]
    if spec.validation_split and (directory / "qrels" / f"{spec.validation_split}.tsv").is_file():
        stems.append(spec.validation_split)
    for pattern in spec.qrels_files:
        stems += (
            [p.stem for p in sorted(directory.glob(pattern))]
            if any(c in pattern for c in "*?[")
            else [Path(pattern).stem]
        )
    return tuple(dict.fromkeys(stems))


def check_all_not_dropped(
    kept: int, dropped: dict[str, int], targets: Sequence[LeakageTarget], stage: str
) -> None:
    """Fail when leakage rules removed every pair, naming each benchmark, its count and the option to relax.

    Raises:
        LeakageError: ``kept == 0`` while some benchmark dropped pairs.
    """
    if kept or not any(dropped.values()):
        return
    by_name = {t.name: t for t in targets}
    parts = [
        f"benchmark {name!r} (leakage: {by_name[name].mode if name in by_name else '?'}) dropped {n}"
        + (f"; relax it with {by_name[name].option}" if name in by_name else "")
        for name, n in sorted(dropped.items(), key=lambda kv: -kv[1])
        if n
    ]
    raise LeakageError(
        f"{stage}: leakage rules dropped every training pair ({sum(dropped.values())} pairs): "
        + "; ".join(parts)
        + ". A benchmark whose corpus IS the training collection should use leakage: answers (the default)."
    )
