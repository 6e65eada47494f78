"""The ``mine`` stage: a hard negative for every training pair, mined with sentence-transformers.

In-batch negatives are mostly easy; a *hard* negative (a corpus text the model scores close to the anchor that is
not its positive) is what teaches fine distinctions. This stage reads the ``pairs`` dataset and writes the same
table (``schemas.PAIR_SCHEMA``) with ``negative`` filled, so every downstream reader of ``manifest.path("pairs")``
works on it unchanged.

It also mines the other training sources ``mining.sources`` names (``hf``, ``local``, ``beir``): each is read
through :func:`~st_workflow.training.sources.open_source`, cleaned as pre-tokenization cleans it, and written as
``sources/<name>.parquet`` (``anchor``, ``positive``, ``negative``; role ``source:<name>``), keyed by the source's
reader fingerprint. :func:`~st_workflow.training.pretokenize.pretokenize_stage` trains on that file instead of the
source's rows when it is given the manifest as ``mined``. The candidates of a ``beir`` source can be its whole
collection (``mining.corpus: collection``), not only the documents its qrels judge.

How, and why this way:

* Mining is sentence-transformers' own :func:`~sentence_transformers.util.mine_hard_negatives` (``triplet``
  format). The candidates are the distinct positives of the pairs, plus a ``beir`` source's corpus with
  ``mining.corpus: collection``.
* That function matches texts *exactly*: rows with the same anchor are one query whose positives are all masked,
  and the corpus is de-duplicated by exact text. Before calling it, anchors and positives are replaced by one
  canonical spelling per :func:`~st_workflow.schemas.normalize_for_match` form, so "the same text" means the same
  here as in the rest of the pipeline: a negative is never the row's positive, nor any positive of the same
  normalised anchor, in any spelling. Results are mapped back to every input row by that canonical key (exact
  duplicate rows, which it would merge, each get their negatives).
* The false-negative filters (``range_*``, ``*_score``, ``*_margin``) are passed through; the defaults are
  NV-Retriever's *TopK-PercPos (95%)*, which the sentence-transformers documentation recommends (see
  :class:`~st_workflow.config.mining.MiningConfig`).
* A row the filters leave without a negative is not lost silently: ``fallback: random`` gives it a seeded random
  corpus text that is none of its anchor's positives (counted in ``negatives_fallback``), ``fallback: drop``
  removes it (counted in ``dropped``). With ``num_negatives > 1`` a row becomes one output row per negative, and
  ``drop`` keeps a row that found some but not all of them (counted in ``rows_short``).
* Encoding runs under :func:`st_workflow.models.dtype.autocast`; similarity scores and margins are computed in
  fp32 from the (fp32) embeddings, so bf16 never quantizes the margin test.
* Determinism: canonical order is first appearance in the input, the function's random sampling runs under a
  seeded (and afterwards restored) ``random`` state, and each fallback draw is seeded by ``(seed, anchor,
  positive)``. The same inputs on the same kind of device give the same bytes.

Counts: ``input = kept + dropped`` (input rows) and ``pairs = negatives_mined + negatives_fallback`` (output rows).

Example:
    >>> anchors = ["Mars dust", "MARS  dust", "Ocean salinity"]
    >>> positives = ["Dust storms on Mars.", "Martian regolith.", "Salt in the sea."]
    >>> sorted(copositives(anchors, positives)["mars dust"])
    ['dust storms on mars.', 'martian regolith.']
    >>> corpus = distinct_texts(positives)
    >>> random_negatives(corpus, {"dust storms on mars.", "martian regolith."}, 1, seed=0, key=("mars dust", ""))
    ['Salt in the sea.']

Running the stage needs a model::

    from st_workflow.config import load_config
    from st_workflow.manifest import Manifest
    from st_workflow.training.mining import mine_stage

    cfg = load_config("configs/tiny.yaml", ["mining.enabled=true"])
    mined = mine_stage(cfg, Manifest.read(cfg.stage_dir("pairs")))
    mined.path("pairs"), mined.counts["negatives_mined"], mined.counts["negatives_fallback"]

    # With a beir source named scifact-train in training.sources: mine it against its whole collection, and the
    # pipeline pairs as well:
    cfg = load_config("configs/tiny.yaml", ["mining.enabled=true", "mining.corpus=collection",
                                            'mining.sources=["pipeline", "scifact-train"]'])
    mined = mine_stage(cfg, Manifest.read(cfg.stage_dir("pairs")))
    mined.path("source:scifact-train"), mined.counts["negatives_mined:scifact-train"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import random
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow import atomic, progress
from st_workflow.beir import doc_text, read_corpus
from st_workflow.config import PipelineConfig
from st_workflow.config.mining import MiningConfig
from st_workflow.config.training import BeirPairs, TrainSource
from st_workflow.hashing import code_version, stable_hash
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.pairset import read_pairs
from st_workflow.resources import resolve_path
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match, schema_dict
from st_workflow.training.sources import (
    MinedFile,
    SourceContext,
    SourceCounts,
    SourceReader,
    materialize,
    open_source,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

STAGE = "mine"
STAGE_KEY, TITLE = "mining", "Mining hard negatives"  # progress bar
OUTPUT = "pairs.parquet"
#: Directory (in the stage directory) of the mined files of training sources other than the pipeline pairs.
SOURCES_DIR = "sources"
#: Columns of a mined training-source file.
MINED_SCHEMA = pa.schema(
    [pa.field(c, pa.string(), nullable=False) for c in ("anchor", "positive", "negative")]
)
FORMAT_VERSION = 1
#: Options that only say how to run (not what to mine) and so are recorded apart from ``params``.
_RUNTIME_FIELDS = {"enabled", "model", "max_seq_length", "device", "dtype"}
#: Similarity scores held at once while searching (floats; 2**28 = 1 GiB).
_SCORE_BUDGET = 2**28
#: Random draws per wanted fallback negative before scanning a seeded permutation instead.
_DRAWS_PER_NEGATIVE = 16


# ---------------------------------------------------------------------------------------------- pure helpers
def copositives(anchors: Sequence[str], positives: Sequence[str]) -> dict[str, set[str]]:
    """Normalised anchor -> the normalised positives of every row with that anchor (what a negative must avoid)."""
    out: dict[str, set[str]] = {}
    for a, p in zip(anchors, positives, strict=True):
        out.setdefault(normalize_for_match(a), set()).add(normalize_for_match(p))
    return out


def distinct_texts(texts: Sequence[str]) -> dict[str, str]:
    """Normalised form -> the first spelling of it in ``texts``, in first-appearance order (the mining corpus)."""
    out: dict[str, str] = {}
    for t in texts:
        out.setdefault(normalize_for_match(t), t)
    return out


def _row_rng(seed: int, key: tuple[str, str]) -> np.random.Generator:
    digest = hashlib.blake2b("\0".join(key).encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, int.from_bytes(digest, "little")])


def random_negatives(
    corpus: dict[str, str], excluded: set[str], k: int, *, seed: int, key: tuple[str, str]
) -> list[str]:
    """Up to ``k`` distinct corpus texts whose normalised form is not in ``excluded``, drawn with a generator seeded by
    ``(seed, key)``, so a row's fallback does not depend on the other rows.

    ``corpus`` is :func:`distinct_texts` output (normalised form -> text); fewer than ``k`` come back only when the
    corpus has fewer eligible texts.
    """
    norms = list(corpus)
    n = len(norms)
    eligible = n - sum(1 for t in excluded if t in corpus)
    want = min(k, eligible)
    if want <= 0:
        return []
    rng = _row_rng(seed, key)
    taken = set(excluded)
    picked: list[str] = []
    for idx in rng.integers(0, n, size=_DRAWS_PER_NEGATIVE * want).tolist():
        if norms[idx] not in taken:
            taken.add(norms[idx])
            picked.append(norms[idx])
            if len(picked) == want:
                break
    if len(picked) < want:  # few eligible texts: walk a seeded permutation instead of drawing on
        for idx in rng.permutation(n).tolist():
            if norms[idx] not in taken:
                taken.add(norms[idx])
                picked.append(norms[idx])
                if len(picked) == want:
                    break
    return [corpus[t] for t in picked]


def mining_params(m: MiningConfig) -> dict[str, Any]:
    """The options that decide *what* is mined (everything but model, length, device and dtype)."""
    return m.model_dump(mode="json", exclude=_RUNTIME_FIELDS)


def mining_model_name(cfg: PipelineConfig) -> str:
    """``mining.model``, else ``training.base_model``."""
    return cfg.mining.model or cfg.training.base_model


def mining_max_seq_length(cfg: PipelineConfig) -> int:
    """``mining.max_seq_length``, else ``training.max_seq_length``."""
    return cfg.mining.max_seq_length or cfg.training.max_seq_length


def resolve_device(choice: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else unchanged."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------- mining
@dataclass
class MinedRows:
    """Output of :func:`mine_negatives`: which input row each output row copies, and its negative."""

    rows: list[int] = field(default_factory=list)
    """Input row index of each output row (input order; a row's negatives hardest first, fallbacks last)."""
    negatives: list[str] = field(default_factory=list)
    """The negative of each output row."""
    mined: int = 0
    """Output rows whose negative came from the model."""
    fallback: int = 0
    """Output rows whose negative is a random fallback."""
    dropped: int = 0
    """Input rows with no negative at all (none in the output)."""
    short: int = 0
    """Input rows kept with fewer than ``num_negatives`` negatives."""
    anchors: int = 0
    """Distinct normalised anchors (queries)."""
    corpus: int = 0
    """Distinct normalised candidate texts (the positives, plus the collection when one is given)."""
    rejected: int = 0
    """Mined candidates discarded because they match a co-positive (0 unless the canonicalisation failed)."""
    positive_scores: list[float] = field(default_factory=list)
    """Anchor-positive similarity of each mined output row."""
    negative_scores: list[float] = field(default_factory=list)
    """Anchor-negative similarity of each mined output row."""
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    """Every encoded text's embedding by its normalised form (fp16), when asked for."""


@contextlib.contextmanager
def _encoding_under(
    model: SentenceTransformer, dtype: str, device: str, record: dict[str, np.ndarray] | None = None
) -> Iterator[None]:
    """Run ``model.encode`` (what ``encode_query``/``encode_document`` call) under autocast, and only that;
    with ``record``, keep every text's embedding (fp16) there: the distillation term's teacher targets."""
    from st_workflow.models.dtype import autocast

    original = model.encode

    @functools.wraps(original)
    def encode(*args: Any, **kwargs: Any) -> Any:
        with autocast(dtype, device):
            out = original(*args, **kwargs)
        if record is not None:
            texts = args[0] if args else kwargs.get("sentences", kwargs.get("inputs"))
            if isinstance(texts, list | tuple) and all(isinstance(t, str) for t in texts):
                arr = (
                    out.detach().float().cpu().numpy()
                    if hasattr(out, "detach")
                    else np.asarray(out, np.float32)
                )
                if arr.ndim == 2 and len(arr) == len(texts):
                    for t, e in zip(texts, arr, strict=True):
                        record[t] = e.astype(np.float16)
        return out

    model.encode = encode  # an instance attribute shadows the method for this call only
    try:
        yield
    finally:
        del model.encode


@contextlib.contextmanager
def _seeded_random(seed: int) -> Iterator[None]:
    """``mine_hard_negatives`` samples with the global ``random``: seed it, then give the caller its state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def mine_negatives(
    anchors: Sequence[str],
    positives: Sequence[str],
    model: SentenceTransformer,
    settings: MiningConfig,
    *,
    seed: int,
    dtype: str = "float32",
    device: str = "cpu",
    corpus: Sequence[str] | None = None,
    keep_embeddings: bool = False,
) -> MinedRows:
    """Negatives for every (anchor, positive) row with ``mine_hard_negatives``, plus the configured fallback.

    ``corpus``: candidate texts besides the positives (a collection); unset: the distinct positives only. Its
    texts are canonicalised like the positives (a collection text that normalises like a positive is that
    positive, so it is masked for the anchors that own it). ``keep_embeddings``: also return every encoded
    text's embedding (``MinedRows.embeddings``), which the distillation term reuses as its teacher's.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    out = MinedRows()
    if not anchors:
        return out
    k = settings.num_negatives
    norm_a = [normalize_for_match(a) for a in anchors]
    norm_p = [normalize_for_match(p) for p in positives]
    canon_a = distinct_texts(anchors)
    candidates = distinct_texts([*positives, *corpus] if corpus is not None else positives)
    excluded = copositives(anchors, positives)
    out.anchors, out.corpus = len(excluded), len(candidates)
    # One query per normalised anchor, one corpus entry per normalised positive, each (anchor, positive) once.
    keys = list(dict.fromkeys(zip(norm_a, norm_p, strict=True)))
    dataset = Dataset.from_dict(
        {"anchor": [canon_a[a] for a, _ in keys], "positive": [candidates[p] for _, p in keys]}
    )
    record: dict[str, np.ndarray] | None = {} if keep_embeddings else None
    with _seeded_random(seed), _encoding_under(model, dtype, device, record):
        triplets = mine_hard_negatives(
            dataset,
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            # Canonical spellings, positives first: the function's exact-text de-duplication then agrees with ours.
            corpus=list(candidates.values()) if corpus is not None else None,
            range_min=settings.range_min,
            range_max=settings.range_max,
            max_score=settings.max_score,
            min_score=settings.min_score,
            absolute_margin=settings.absolute_margin,
            relative_margin=settings.relative_margin,
            num_negatives=k,
            sampling_strategy=settings.sampling_strategy,
            query_prompt=settings.query_prompt,
            corpus_prompt=settings.corpus_prompt,
            output_format="triplet",
            output_scores=True,
            batch_size=settings.batch_size,
            # Queries scored per step: caps the (queries x corpus) score matrix near _SCORE_BUDGET floats instead
            # of the function's fixed 16,384 rows (64 GiB for a million-text corpus). Results do not depend on it.
            faiss_batch_size=max(1, min(16_384, _SCORE_BUDGET // len(candidates))),
            verbose=False,
        )
    found: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    for a, p, n, (s_pos, s_neg) in zip(
        triplets["anchor"], triplets["positive"], triplets["negative"], triplets["scores"], strict=True
    ):
        na, nn = normalize_for_match(a), normalize_for_match(n)
        if nn in excluded[na]:
            out.rejected += 1
            continue
        found.setdefault((na, normalize_for_match(p)), []).append((n, float(s_pos), float(s_neg)))
    for i, key in enumerate(zip(norm_a, norm_p, strict=True)):
        mined = found.get(key, [])[:k]
        extra: list[str] = []
        if len(mined) < k and settings.fallback == "random":
            avoid = excluded[key[0]] | {normalize_for_match(n) for n, _, _ in mined}
            extra = random_negatives(candidates, avoid, k - len(mined), seed=seed, key=key)
        if not mined and not extra:
            out.dropped += 1
            continue
        if len(mined) + len(extra) < k:
            out.short += 1
        for n, s_pos, s_neg in mined:
            out.rows.append(i)
            out.negatives.append(n)
            out.positive_scores.append(s_pos)
            out.negative_scores.append(s_neg)
        for n in extra:
            out.rows.append(i)
            out.negatives.append(n)
        out.mined += len(mined)
        out.fallback += len(extra)
    if record:
        out.embeddings = {normalize_for_match(t): e for t, e in record.items()}
    return out


TEACHER_DIR = "teacher"


def write_teacher_store(directory: Path, texts: Sequence[str], embeddings: dict[str, np.ndarray]) -> int:
    """Write ``hashes.npy`` (sorted int64 text hashes, as pre-tokenization hashes texts) and ``embeddings.npy``
    (fp16, one row per hash) for every text of ``texts`` whose normalised form has an embedding; returns the count.
    """
    from st_workflow.training.pretokenize import text_hashes

    uniq = sorted({t for t in texts if normalize_for_match(t) in embeddings})
    hashes = text_hashes(uniq)
    order = np.argsort(hashes, kind="stable")
    dim = len(next(iter(embeddings.values()))) if embeddings else 0
    emb = np.zeros((len(uniq), dim), dtype=np.float16)
    for j, i in enumerate(order):
        emb[j] = embeddings[normalize_for_match(uniq[i])]
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "hashes.npy", hashes[order])
    np.save(directory / "embeddings.npy", emb)
    return len(uniq)


def load_teacher_store(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted hashes, embeddings)`` of a teacher store written by :func:`write_teacher_store`."""
    d = Path(directory)
    return np.load(d / "hashes.npy"), np.load(d / "embeddings.npy")


# ---------------------------------------------------------------------------------------------- stage
def mining_selection(cfg: PipelineConfig) -> tuple[bool, list[TrainSource]]:
    """What ``mining.sources`` selects: (mine the pipeline pairs?, the other training sources to mine).

    Empty ``mining.sources``: the pipeline pairs only. Otherwise the named sources: any enabled ``pipeline`` one
    selects the pipeline pairs (mined once for all of them), every other enabled one is mined on its own; disabled
    ones are skipped.

    Raises:
        ValueError: a name that is not in ``training.sources``.
    """
    names = cfg.mining.sources
    if not names:
        return True, []
    by_name = {s.name: s for s in cfg.training.sources}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"mining.sources: {unknown} not in training.sources (configured: {sorted(by_name)})")
    chosen = [by_name[n] for n in names if by_name[n].enabled]
    skipped = [n for n in names if not by_name[n].enabled]
    if skipped:
        get_logger().info("mine: skipping disabled training source(s) %s", skipped)
    return any(s.data.kind == "pipeline" for s in chosen), [s for s in chosen if s.data.kind != "pipeline"]


def source_corpus_kind(cfg: PipelineConfig, src: TrainSource) -> str:
    """The candidate corpus a source is mined against: ``collection`` only for a ``beir`` source with
    ``mining.corpus: collection``, else ``positives``."""
    return "collection" if cfg.mining.corpus == "collection" and src.data.kind == "beir" else "positives"


def mine_key(
    cfg: PipelineConfig,
    pairs_manifest: Manifest | None,
    *,
    weights: str,
    dtype: str,
    device: str,
    sources: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Cache key: the pairs' content (``None`` when the pipeline pairs are not mined), each other mined source's
    reader fingerprint and ``max_rows`` (``sources``), the mining model (name and weights hash), every mining
    option, the length, the dtype and device kind actually used, the seed and the training code version."""
    return stable_hash(
        {
            "stage": STAGE,
            "v": FORMAT_VERSION,
            "pairs": pairs_manifest.content_hash if pairs_manifest is not None else None,
            "sources": sources or {},
            "model": mining_model_name(cfg),
            "weights": weights,
            "params": mining_params(cfg.mining),
            "max_seq_length": mining_max_seq_length(cfg),
            "dtype": dtype,
            "device": device.split(":")[0],
            "seed": cfg.seed,
            "code": code_version("training"),
        }
    )


def source_role(name: str) -> str:
    """Manifest role of a mined training source (``source:<name>``)."""
    return f"source:{name}"


def _source_file(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if stem != name or stem.startswith("."):
        stem = f"{stem}-{hashlib.blake2b(name.encode('utf-8'), digest_size=4).hexdigest()}"
    return f"{SOURCES_DIR}/{stem}.parquet"


def mined_source_files(mined: Manifest | None) -> dict[str, MinedFile]:
    """Source name -> its mined file, for every ``source:<name>`` role of a ``mine`` manifest (what
    :attr:`st_workflow.training.sources.SourceContext.mined` takes); empty for ``None``."""
    if mined is None:
        return {}
    records = mined.metrics.get("sources") or {}
    out = {}
    for name, rec in records.items():
        role = source_role(name)
        if role in mined.files:
            out[name] = MinedFile(
                path=mined.path(role),
                sha256=mined.files[role].sha256,
                source_fingerprint=rec["fingerprint"],
                max_rows=rec.get("max_rows"),
            )
    return out


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _scores(res: MinedRows) -> dict[str, float | None]:
    return {
        "positive_mean": _mean(res.positive_scores),
        "negative_mean": _mean(res.negative_scores),
        "margin_mean": _mean([p - n for p, n in zip(res.positive_scores, res.negative_scores, strict=True)]),
    }


def _clean_rows(reader: SourceReader, src: TrainSource) -> tuple[pa.Table, SourceCounts]:
    """The source's (anchor, positive) rows cleaned as pre-tokenization cleans them, ``max_rows`` applied."""
    pairs_only = dataclasses.replace(reader, columns=["anchor", "positive"])
    with tempfile.TemporaryDirectory(prefix="st-mine-") as tmp:
        path = Path(tmp) / "rows.arrow"
        counts = materialize(pairs_only, path, max_rows=src.max_rows)
        with pa.OSFile(str(path), "rb") as fh:
            table = pa.ipc.open_stream(fh).read_all()
    return table, counts


def _collection_texts(src: TrainSource) -> list[str]:
    """Every non-blank document of a ``beir`` source's corpus, as ``title + " " + text``."""
    data = src.data
    assert isinstance(data, BeirPairs)
    texts = (doc_text(d) for d in read_corpus(resolve_path(data.path)).values())
    return [t for t in texts if t.strip()]


def mine_stage(cfg: PipelineConfig, pairs_manifest: Manifest | None) -> Manifest:
    """Stage ``mine``: hard negatives for the pipeline pairs and for every other source ``mining.sources`` names.

    Outputs (roles):

    * ``pairs``: ``<run>/mine/pairs.parquet`` (``PAIR_SCHEMA``, ``negative`` filled), so the manifest stands in
      for the pairs manifest downstream; written when the pipeline pairs are mined (``mining.sources`` empty, or
      naming a ``pipeline`` source), which needs ``pairs_manifest``;
    * ``source:<name>``: ``<run>/mine/sources/<name>.parquet`` (``anchor``, ``positive``, ``negative``) for every
      other selected source, read through :func:`~st_workflow.training.sources.open_source` (so ``hf``, ``local``
      and ``beir`` all work), cleaned as pre-tokenization cleans it, ``max_rows`` applied, and mined against its
      positives or, for ``beir`` with ``mining.corpus: collection``, its whole corpus. Pass the manifest to
      :func:`~st_workflow.training.pretokenize.pretokenize_stage` as ``mined`` to train on these files.

    Counts of the pipeline pairs: ``input``, ``pairs`` (output rows), ``dropped``, ``kept``, ``negatives_mined``,
    ``negatives_fallback``, ``rows_short``, ``negatives_replaced`` (input rows that already had a negative),
    ``anchors`` and ``corpus``; of another source the same as ``<count>:<name>`` plus ``unusable:<name>`` (rows
    cleaning removed), with ``input = unusable + dropped + kept``. Metrics: the model, its weights hash, the dtype
    and device used, the length, the options, mean scores, and ``sources`` (per other source: kind, reader
    fingerprint, ``max_rows``, corpus, cleaning drops, scores). An unchanged input, model, option set and code
    returns the existing manifest untouched.

    Raises:
        ValueError: the pipeline pairs are to be mined but ``pairs_manifest`` is ``None``; an unknown name in
            ``mining.sources``; a source that cannot be read.
    """
    from st_workflow.fingerprints import model_hash
    from st_workflow.models import load_model, resolve_model
    from st_workflow.models.dtype import resolve_dtype

    m = cfg.mining
    log = get_logger()
    out_dir = cfg.stage_dir(STAGE)
    mine_pipeline, others = mining_selection(cfg)
    if mine_pipeline and pairs_manifest is None:
        raise ValueError(
            "mine: the pipeline pairs are to be mined (mining.sources "
            + ("names a pipeline source" if m.sources else "is empty")
            + ") but no pairs dataset was given; run the pipeline first or set mining.sources"
        )
    ctx = SourceContext(hf_cache_dir=cfg.cache_path / "hf-datasets")
    readers = {s.name: open_source(s, ctx) for s in others}
    source_keys = {
        s.name: {"kind": s.data.kind, "fingerprint": readers[s.name].fingerprint, "max_rows": s.max_rows}
        for s in others
    }
    name = mining_model_name(cfg)
    max_len = mining_max_seq_length(cfg)
    device = resolve_device(m.device)
    dtype = resolve_dtype(m.dtype, device)
    weights = model_hash(name, resolve_model(name, cfg.cache_path))
    key = mine_key(
        cfg,
        pairs_manifest if mine_pipeline else None,
        weights=weights,
        dtype=dtype,
        device=device,
        sources=source_keys,
    )
    if hit := reusable(out_dir, key):
        progress.reused(STAGE_KEY, TITLE)
        return hit
    # Pairs mined so far (the total is known source by source); a failure leaves the bar where it stopped.
    bar = progress.StageProgress(STAGE_KEY, TITLE, total=None, unit="pairs")

    loaded: list[SentenceTransformer] = []

    def model_for(rows: int) -> SentenceTransformer | None:
        if not rows:
            return None
        if not loaded:
            loaded.append(load_model(name, device=device, cache_dir=cfg.cache_path, max_seq_length=max_len))
        return loaded[0]

    # The mining model's embeddings of every training text are the distillation teacher's targets when the
    # teacher is that model at the same length without prompts: kept, they spare training a teacher forward.
    keep = m.query_prompt is None and m.corpus_prompt is None
    teacher_texts: list[str] = []
    teacher_embeddings: dict[str, np.ndarray] = {}

    def mine(anchors: list[str], positives: list[str], corpus: list[str] | None, what: str) -> MinedRows:
        res = mine_negatives(
            anchors,
            positives,
            model_for(len(anchors)),
            m,
            seed=cfg.seed,
            dtype=dtype,
            device=device,
            corpus=corpus,
            keep_embeddings=keep,
        )
        teacher_embeddings.update(res.embeddings)
        res.embeddings = {}
        bar.advance(len(anchors), detail=what)
        if res.rejected:
            log.warning(
                "mine: discarded %d mined negatives of %s equal to a positive of their anchor",
                res.rejected,
                what,
            )
        log.info(
            "mine: %s: %d pairs -> %d rows: %d negatives mined, %d random fallbacks, %d pairs dropped "
            "(model %s, %s on %s, corpus of %d texts)",
            what,
            len(anchors),
            len(res.rows),
            res.mined,
            res.fallback,
            res.dropped,
            name,
            dtype,
            device,
            res.corpus,
        )
        return res

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[str, int | None] | str] = {}
    counts: dict[str, int] = {}
    metrics: dict[str, Any] = {
        "model": name,
        "weights": weights,
        "dtype": dtype,
        "device": device,
        "max_seq_length": max_len,
        "seed": cfg.seed,
        "params": mining_params(m),
    }
    if mine_pipeline:
        assert pairs_manifest is not None
        table = read_pairs(pairs_manifest)
        anchors = table.column("anchor").to_pylist()
        positives = table.column("positive").to_pylist()
        replaced = table.num_rows - table.column("negative").null_count
        if replaced:
            log.warning(
                "mine: %d input pairs already had a negative; the mined negatives replace them", replaced
            )
        res = mine(anchors, positives, None, "pipeline pairs")
        neg_idx = PAIR_SCHEMA.get_field_index("negative")
        out = table.take(pa.array(res.rows, pa.int64())).set_column(
            neg_idx, PAIR_SCHEMA.field("negative"), pa.array(res.negatives, pa.string())
        )
        with atomic.atomic_path(out_dir / OUTPUT) as tmp:
            pq.write_table(out, tmp)
        files["pairs"] = (OUTPUT, out.num_rows)
        teacher_texts += [*anchors, *positives, *res.negatives]
        counts.update(
            {
                "input": table.num_rows,
                "pairs": out.num_rows,
                "dropped": res.dropped,
                "negatives_mined": res.mined,
                "negatives_fallback": res.fallback,
                "kept": table.num_rows - res.dropped,
                "rows_short": res.short,
                "negatives_replaced": replaced,
                "anchors": res.anchors,
                "corpus": res.corpus,
            }
        )
        for col in ("type", "source"):
            for item in pc.value_counts(out.column(col)).to_pylist() if out.num_rows else []:
                counts[f"{col}:{item['values']}"] = item["counts"]
        metrics["scores"] = _scores(res)

    records: dict[str, Any] = {}
    for src in others:
        reader = readers[src.name]
        rows, cleaning = _clean_rows(reader, src)
        corpus_kind = source_corpus_kind(cfg, src)
        anchors = rows.column("anchor").to_pylist()
        positives = rows.column("positive").to_pylist()
        res = mine(
            anchors,
            positives,
            _collection_texts(src) if corpus_kind == "collection" and anchors else None,
            f"training source {src.name!r}",
        )
        out = pa.table(
            {
                "anchor": pa.array([anchors[i] for i in res.rows], pa.string()),
                "positive": pa.array([positives[i] for i in res.rows], pa.string()),
                "negative": pa.array(res.negatives, pa.string()),
            },
            schema=MINED_SCHEMA,
        )
        rel = _source_file(src.name)
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out_dir / rel) as tmp:
            pq.write_table(out, tmp)
        files[source_role(src.name)] = (rel, out.num_rows)
        teacher_texts += [*anchors, *positives, *res.negatives]
        unusable = sum(cleaning.dropped.values())
        for k, v in {
            "input": cleaning.read,
            "unusable": unusable,
            "pairs": out.num_rows,
            "dropped": res.dropped,
            "negatives_mined": res.mined,
            "negatives_fallback": res.fallback,
            "kept": cleaning.kept - res.dropped,
            "rows_short": res.short,
            "anchors": res.anchors,
            "corpus": res.corpus,
        }.items():
            counts[f"{k}:{src.name}"] = v
        records[src.name] = {
            **source_keys[src.name],
            "corpus": corpus_kind,
            "replaced_negative_column": "negative" in reader.columns,
            "cleaning": cleaning.dropped,
            "scores": _scores(res),
        }
        if "negative" in reader.columns:
            log.warning(
                "mine: training source %r maps a negative column; the mined negatives replace it", src.name
            )
    metrics["sources"] = records
    if keep and teacher_embeddings:
        with atomic.atomic_dir(out_dir / TEACHER_DIR) as tmp:
            n_teacher = write_teacher_store(tmp, teacher_texts, teacher_embeddings)
        files["teacher"] = (TEACHER_DIR, n_teacher)
        metrics["teacher"] = {"model": name, "weights": weights, "max_seq_length": max_len, "dtype": dtype}

    manifest = Manifest.build(
        stage=STAGE,
        directory=out_dir,
        files=files,
        counts=counts,
        schema=schema_dict(PAIR_SCHEMA) if mine_pipeline else schema_dict(MINED_SCHEMA),
        metrics=metrics,
        config_hash=cfg.section_hash("mining"),
        code_version=code_version("training"),
        cache_key=key,
        upstream=[pairs_manifest] if mine_pipeline and pairs_manifest is not None else [],
    )
    manifest.write()
    bar.done()
    return manifest
