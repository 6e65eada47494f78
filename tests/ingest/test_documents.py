"""The document sink: one set of record rules for every source, quarantine with reasons, nothing lost silently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.ingest.documents import (
    Bounds,
    Candidate,
    DocumentSink,
    Rejection,
    collapse,
    document_hash,
    normalize_text,
)
from st_workflow.schemas import DOCUMENT_SCHEMA, content_hash, normalize_whitespace


def _sink(tmp_path: Path, **bounds: object) -> DocumentSink:
    return DocumentSink(
        "src", tmp_path / "documents.parquet", tmp_path / "quarantine.jsonl", Bounds(**bounds)
    )


def _quarantine(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]


def test_every_bad_record_is_quarantined_with_field_and_reason(tmp_path: Path) -> None:
    sink = _sink(tmp_path, min_title_chars=3, min_text_chars=10, max_text_chars=100)
    good = "A perfectly fine abstract text."
    cases = [
        Candidate("ok-1", "Fine  title", good, "http://x/1", {"k": 1}, "f:1"),
        Candidate(None, "Title", good, None, {}, "f:2"),
        Candidate(["list"], "Title", good, None, {}, "f:3"),
        Candidate("t-missing", None, good, None, {}, "f:4"),
        Candidate("t-type", 42, good, None, {}, "f:5"),
        Candidate("t-short", "ab", good, None, {}, "f:6"),
        Candidate("x-missing", "Title", None, None, {}, "f:7"),
        Candidate("x-empty", "Title", "   \n  ", None, {}, "f:8"),
        Candidate("x-short", "Title", "too short", None, {}, "f:9"),
        Candidate("x-long", "Title", "word " * 40, None, {}, "f:10"),
        Candidate("x-surrogate", "Title", "bad \ud800 text here", None, {}, "f:11"),
        Candidate("m-bad", "Title", good + " again", None, {"obj": object()}, "f:12"),
        Candidate("ok-1", "Another title", "Another fine abstract.", None, {}, "f:13"),
        Candidate("ok-2", "fine TITLE", "A  perfectly fine\nabstract text.", None, {}, "f:14"),
        Candidate(7, "Integer id", "An integer id is accepted.", None, {}, "f:15"),
    ]
    kept = [sink.add(c) for c in cases]
    sink.reject(Rejection("invalid_json", None, "not valid JSON", "f:16", raw=b"{oops"))
    sink.filtered(3)
    res = sink.close()

    assert kept == [True] + [False] * 13 + [True]
    assert res.counts == {"seen": 19, "kept": 2, "quarantined": 12, "duplicates": 2, "filtered": 3}
    assert res.counts["seen"] == sum(res.counts[k] for k in ("kept", "quarantined", "duplicates", "filtered"))
    q = _quarantine(tmp_path)
    got = {(e["locator"], e["field"], e["reason"]) for e in q}
    assert got == {
        ("f:2", "id", "missing_field"),
        ("f:3", "id", "wrong_type"),
        ("f:4", "title", "missing_field"),
        ("f:5", "title", "wrong_type"),
        ("f:6", "title", "too_short"),
        ("f:7", "text", "missing_field"),
        ("f:8", "text", "missing_field"),
        ("f:9", "text", "too_short"),
        ("f:10", "text", "too_long"),
        ("f:11", "title or text", "undecodable"),
        ("f:12", "metadata", "wrong_type"),
        ("f:13", "id", "duplicate_id"),
        ("f:14", "title,text", "duplicate_content"),
        ("f:16", None, "invalid_json"),
    }
    assert all(e["source"] == "src" and e["detail"] for e in q)
    assert next(e for e in q if e["locator"] == "f:16")["excerpt"] == "{oops"
    assert res.reasons["duplicate_id"] == 1 and res.reasons["too_short"] == 2

    table = pq.read_table(tmp_path / "documents.parquet")
    assert table.schema.equals(DOCUMENT_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["ok-1", "7"]
    assert rows[0]["title"] == "Fine title" and rows[0]["metadata"] == '{"k":1}'
    assert rows[0]["content_hash"] == content_hash(rows[0]["title"], rows[0]["text"])


def test_max_records_and_row_groups(tmp_path: Path) -> None:
    sink = DocumentSink(
        "s",
        tmp_path / "d.parquet",
        tmp_path / "q.jsonl",
        Bounds(batch_rows=3, min_text_chars=5),
        max_records=7,
    )
    n = 0
    while not sink.full:
        sink.add(Candidate(f"id{n}", f"Title {n}", f"Text number {n}", None, {}, f"f:{n}"))
        n += 1
    res = sink.close()
    assert n == 7 and res.counts["kept"] == 7
    pf = pq.ParquetFile(tmp_path / "d.parquet")
    assert pf.metadata.num_rows == 7 and pf.metadata.num_row_groups == 3


def test_empty_source_still_writes_a_valid_parquet(tmp_path: Path) -> None:
    res = _sink(tmp_path).close()
    assert res.counts["kept"] == 0
    assert pq.read_table(tmp_path / "documents.parquet").num_rows == 0


def test_normalisation_keeps_latex_and_paragraphs() -> None:
    raw = "  We compute $\\Lambda_{\\alpha}$ at\n  the LHC.\r\n\r\n  Second\tparagraph \\'{c}.\n"
    assert normalize_text(raw) == "We compute $\\Lambda_{\\alpha}$ at the LHC.\n\nSecond paragraph \\'{c}."
    assert collapse(" a\u00a0 b\n c ") == normalize_whitespace(" a\u00a0 b\n c ") == "a b c"


def test_fast_whitespace_and_hash_agree_with_the_schema_helpers() -> None:
    # collapse() must split on exactly the characters schemas.normalize_whitespace (regex \s) treats as space.
    every_space = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    probe = "a" + every_space.join("bcdefgh") + every_space
    assert collapse(probe) == normalize_whitespace(probe)
    for title, text in [
        ("Ｆｕｌｌ\u00a0width ﬁ title", "Straße ǅ \u00a8x\n\nSecond\u2028para"),
        ("Plain", "plain text"),
        ("  Mixed CASE ", "Tabs\tand\u3000ideographic space"),
    ]:
        t, x = collapse(title), normalize_text(text)
        assert document_hash(t, x) == content_hash(t, x) == content_hash(title, text)


@pytest.mark.parametrize("fmt", ["kaggle", "pds"])
def test_document_hash_matches_on_real_samples(samples_dir: Path, fmt: str) -> None:
    if fmt == "kaggle":
        path = samples_dir / "arxiv" / "arxiv-browse.abs_converted.physics_astro.519.jsonl"
        pairs = [(r["title"], r["abstract"]) for r in map(json.loads, path.read_text().splitlines())]
    else:
        path = samples_dir / "pds" / "context-pds4.product_context.1651.extracted.jsonl"
        pairs = [(r["title"], r["description"]) for r in map(json.loads, path.read_text().splitlines())]
    for title, text in pairs:
        assert document_hash(collapse(title), normalize_text(text)) == content_hash(title, text)
