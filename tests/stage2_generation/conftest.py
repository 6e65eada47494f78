"""Fixtures of the stage-2 LLM tests: real bundled records as ingest outputs, a local OpenAI-compatible server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from st_workflow.config import PipelineConfig, load_config
from st_workflow.manifest import Manifest
from st_workflow.schemas import normalize_whitespace
from st_workflow.testing.documents import write_documents
from st_workflow.testing.openai_server import OpenAICompatServer

SECRET = "sk-test-SECRET-9f8e7d6c5b4a"


def _arxiv(samples: Path, n: int) -> list[dict]:
    rows = []
    with open(
        samples / "arxiv" / "arxiv-browse.abs_converted.physics_astro.519.jsonl", encoding="utf-8"
    ) as fh:
        for line in fh:
            r = json.loads(line)
            text = normalize_whitespace(r.get("abstract") or "")
            if len(text) < 700:
                continue
            rows.append(
                {"id": r["id"], "source": "arxiv", "title": normalize_whitespace(r["title"]), "text": text}
            )
            if len(rows) == n:
                break
    return rows


def _cmr(samples: Path, n: int) -> list[dict]:
    rows = []
    path = samples / "cmr" / "collections.umm_json.nasa-cmr-inventory.dedup1433.trimmed.jsonl"
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            umm = r["umm"]
            text = normalize_whitespace(umm.get("Abstract") or "")
            if len(text) < 400:
                continue
            rows.append(
                {
                    "id": r["meta"]["concept-id"],
                    "source": "cmr",
                    "title": normalize_whitespace(umm["EntryTitle"]),
                    "text": text,
                }
            )
            if len(rows) == n:
                break
    return rows


@pytest.fixture(scope="session")
def doc_rows(samples_dir: Path) -> dict[str, list[dict]]:
    """Real arXiv abstracts (question/context generation) and CMR collections (search-terms only)."""
    return {"arxiv": _arxiv(samples_dir, 12), "cmr": _cmr(samples_dir, 8)}


@pytest.fixture
def docs(tmp_path: Path, doc_rows: dict[str, list[dict]]) -> list[Manifest]:
    return [write_documents(tmp_path / "ingest" / s, rows, s) for s, rows in doc_rows.items()]


@pytest.fixture
def llm_server() -> Iterator[OpenAICompatServer]:
    with OpenAICompatServer() as srv:
        yield srv


def make_cfg(tmp_path: Path, base_url: str | None, *overrides: str) -> PipelineConfig:
    """A small, fast config: short backoffs, few items, a private cache."""
    return load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
            "run_name=t",
            f"generation.endpoint.base_url={base_url if base_url else 'null'}",
            "generation.endpoint.api_key.env=ST_TEST_LLM_KEY",
            "generation.execution.backoff_base_s=0.01",
            "generation.execution.backoff_max_s=0.2",
            "generation.execution.concurrency=4",
            "generation.execution.claim_poll_s=0.05",
            "generation.execution.prefect_concurrency_limit=null",
            "generation.pairs.min_items=2",
            "generation.pairs.max_items=5",
            "generation.pairs.chars_per_item=250",
            "generation.gates.min_context_chars=20",
            *overrides,
        ],
    )
