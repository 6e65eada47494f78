"""Pair gates: verbatim, standalone, length, exact and near duplicates (the one rule of
:mod:`st_workflow.near_duplicates`), leakage into BEIR benchmarks (:mod:`st_workflow.leakage`)."""

from __future__ import annotations

import random
from pathlib import Path

from st_workflow.beir import doc_text, read_corpus, read_qrels, read_queries, write_benchmark
from st_workflow.config.generation import GatesConfig
from st_workflow.leakage import BenchmarkGuard, LeakageTarget
from st_workflow.near_duplicates import NearDuplicateRule
from st_workflow.stage2_generation.gates import (
    QA_TYPE,
    TERM_TYPE,
    Candidate,
    apply_gates,
    near_duplicate_pairs,
)
from st_workflow.stage2_generation.models import vague_reference

DOC = (
    "The Moderate Resolution Imaging Spectroradiometer (MODIS) on Terra and Aqua views the entire surface of the "
    "Earth every one to two days.\nIts detectors measure 36 spectral bands between 0.405 and 14.385 micrometers. "
    "The 250 m bands are used for land surface reflectance and vegetation indices, while the 1 km thermal bands "
    "support sea surface temperature retrievals over the global ocean."
)
S1 = "The Moderate Resolution Imaging Spectroradiometer (MODIS) on Terra and Aqua views the entire surface of the Earth"
S2 = "Its detectors measure 36 spectral bands between 0.405 and 14.385 micrometers."
S3 = (
    "The 250 m bands are used for land surface reflectance and vegetation indices, while the 1 km thermal bands "
    "support sea surface temperature retrievals over the global ocean."
)


def qa(anchor: str, positive: str, doc_id: str = "d1", document: str = DOC) -> Candidate:
    return Candidate(anchor, positive, QA_TYPE, "cmr", doc_id, document, "m", "qa_pairs.v1@x")


def term(anchor: str, doc_id: str = "d1") -> Candidate:
    return Candidate(anchor, "MODIS Terra " + DOC, TERM_TYPE, "cmr", doc_id, DOC, "m", "search_terms.v1@x")


def gate_of(rejected: list[dict], anchor: str) -> str | None:
    return next((r["gate"] for r in rejected if r["anchor"] == anchor), None)


def test_each_gate_drops_what_it_should_and_reports_its_yield() -> None:
    cands = [
        qa("How many spectral bands does MODIS measure?", S2),
        qa(
            "Which MODIS bands serve sea surface temperature retrievals?", "  " + S3.replace(" ", "  \n")
        ),  # spacing
        qa("What does MODIS on Terra and Aqua view every one to two days?", S1 + " every one to two days."),
        qa("Which wavelengths do this instrument's detectors cover?", S2),  # not standalone
        qa(
            "What does MODIS measure?", "MODIS measures 36 bands from 0.4 to 14.4 micrometres."
        ),  # not verbatim
        qa("Short?", S2),  # query too short
        qa("HOW many spectral   bands does MODIS measure?", S2),  # exact duplicate after normalisation
        term("MODIS sea surface temperature"),
        term("MODIS sea surface temperature"),  # exact duplicate
        term("x"),  # too short
    ]
    kept, rejected, report = apply_gates(cands, GatesConfig(min_context_chars=20))
    assert [r["gate"] for r in report] == [
        "length",
        "standalone",
        "verbatim",
        "exact_duplicate",
        "near_duplicate",
    ]
    assert gate_of(rejected, "Which wavelengths do this instrument's detectors cover?") == "standalone"
    assert gate_of(rejected, "What does MODIS measure?") == "verbatim"
    assert gate_of(rejected, "Short?") == "length" and gate_of(rejected, "x") == "length"
    assert gate_of(rejected, "HOW many spectral   bands does MODIS measure?") == "exact_duplicate"
    assert len(kept) == 4 and len(rejected) == 6
    assert all(r["in"] - r["dropped"] == r["kept"] for r in report)
    assert report[0] == {
        "gate": "length",
        "in": 10,
        "kept": 8,
        "dropped": 2,
        "yield": 0.8,
        "dropped_by_type": {QA_TYPE: 1, TERM_TYPE: 1},
    }


def test_near_duplicates_need_both_sides_close() -> None:
    long_q = (
        "What is the range of wavelengths covered by the 36 spectral bands of the MODIS detectors on Terra?"
    )
    cands = [
        qa(long_q, S3),
        qa(long_q.replace(" ", "  ").upper(), S3 + " "),  # exact after normalisation
        qa(long_q.replace("36", "38"), S3),  # digits only: the same skeleton, a near-duplicate
        qa(
            "Which products use the MODIS 250 m bands and which the 1 km thermal bands?", S3
        ),  # same context only
    ]
    kept, rejected, _ = apply_gates(cands, GatesConfig(min_context_chars=20))
    assert [r["gate"] for r in rejected] == ["exact_duplicate", "near_duplicate"]
    assert len(kept) == 2


def test_near_duplicate_search_matches_brute_force() -> None:
    rng = random.Random(7)
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(40)]
    base = [" ".join(rng.choices(words, k=30)) for _ in range(3)]
    cands = []
    for _ in range(150):
        a, p = rng.choice(base).split(), rng.choice(base).split()
        for seq in (a, p):
            for _ in range(rng.randint(0, 2)):
                seq[rng.randrange(len(seq))] = rng.choice(words)
        cands.append(qa(" ".join(a), " ".join(p)))
    rule = NearDuplicateRule(threshold=0.8, ngram=3)
    fast = near_duplicate_pairs(cands, rule)
    kept: list[int] = []
    brute = []
    for i, c in enumerate(cands):
        dup = any(
            rule.same(c.positive, cands[j].positive) and rule.same(c.anchor, cands[j].anchor) for j in kept
        )
        brute.append(dup)
        if not dup:
            kept.append(i)
    assert fast == brute and any(brute) and not all(brute)


def test_leakage_against_written_benchmark(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    other = (
        "The Ozone Monitoring Instrument on Aura maps total column ozone and nitrogen dioxide with a "
        "hyperspectral imaging spectrometer that covers the ultraviolet and visible wavelengths daily."
    )
    write_benchmark(
        bench,
        corpus=[("c1", "MODIS instrument", DOC), ("c2", "OMI", other)],
        queries=[("q1", "How many spectral bands does MODIS measure?")],
        qrels={"test": [("q1", "c1", 1)]},
    )
    cands = [
        qa("How many spectral bands does MODIS measure?", S2),  # the benchmark's query
        qa("Which MODIS bands support sea surface temperature retrievals?", S3),  # a passage of the answer
        qa("What does the Ozone Monitoring Instrument on Aura map?", other, "d2", other),  # corpus, no answer
        term("MODIS sea surface temperature"),  # the positive is the benchmark's answer document
    ]
    kept, _, report = apply_gates(cands, GatesConfig(min_context_chars=20), BenchmarkGuard([bench]))
    assert report[-1]["gate"] == "leakage" and report[-1]["dropped"] == 3
    assert [c.doc_id for c in kept] == ["d2"]
    strict = BenchmarkGuard([{"name": "b", "directory": str(bench), "mode": "corpus"}])
    kept, _, _ = apply_gates(cands, GatesConfig(min_context_chars=20), strict)
    assert kept == []  # leakage: corpus also guards documents no query asks for


def test_leakage_against_scifact(scifact_dir: Path) -> None:
    corpus = read_corpus(scifact_dir)
    test_qrels = read_qrels(scifact_dir / "qrels" / "test.tsv")
    relevant = {d for q in test_qrels.values() for d in q}
    doc_id = sorted(relevant)[0]
    doc = corpus[doc_id]
    unjudged_id = next(k for k in sorted(corpus) if k not in relevant and len(corpus[k]["text"]) > 600)
    queries = read_queries(scifact_dir)
    query = next(
        queries[q] for q in sorted(test_qrels) if len(queries[q]) > 20 and vague_reference(queries[q]) is None
    )
    abstract = doc["text"]
    sentence = abstract[: abstract.find(". ", 300) + 1] if abstract.find(". ", 300) > 0 else abstract[:500]
    fresh = (
        "Sea surface height anomalies from the SWOT Ka-band interferometer resolve ocean eddies down to fifteen "
        "kilometres, an order of magnitude finer than conventional nadir altimeters."
    )
    unjudged = corpus[unjudged_id]["text"]
    cands = [
        qa("What does the SciFact abstract report?", sentence, "s1", abstract),  # a passage of an answer
        qa(query, fresh, "s2", fresh),  # a SciFact query
        qa("How small are the ocean eddies SWOT resolves?", fresh, "s3", fresh),
        Candidate("a scifact corpus document", doc_text(doc), TERM_TYPE, "arxiv", doc_id, abstract),
        Candidate("an unjudged scifact document", unjudged, TERM_TYPE, "arxiv", unjudged_id, unjudged),
    ]
    guard = BenchmarkGuard([LeakageTarget("scifact", str(scifact_dir), "answers", ("test",))])
    kept, _, report = apply_gates(cands, GatesConfig(min_context_chars=20), guard)
    assert report[-1]["dropped"] == 3 and [c.doc_id for c in kept] == ["s3", unjudged_id]
