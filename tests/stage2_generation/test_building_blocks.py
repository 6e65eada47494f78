"""Validators, prompts, cache claims, retry policy and the budget ledger."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from st_workflow.config.generation import Price
from st_workflow.stage2_generation.accounting import CallUsage, Ledger
from st_workflow.stage2_generation.cache import LLMCache, cache_key
from st_workflow.stage2_generation.models import GeneratedPairs, SearchTerms, vague_reference
from st_workflow.stage2_generation.prompts import cut_text, item_bounds, load_prompt
from st_workflow.stage2_generation.resilience import (
    CURRENT_USAGE,
    EndpointFatalError,
    RetryPolicy,
    TransportError,
    resilient,
)
from st_workflow.testing.openai_server import Faults, OpenAICompatServer

DOC = (
    "The Ka-band Radar Interferometer (KaRIn) on SWOT images two 50 km wide swaths. "
    "Water surface elevation is reported for river reaches of about 10 km."
)
CTX = {"pairs": (2, 3), "terms": (2, 3), "document": DOC}


def _pairs(*contexts: str, query: str = "What swath width does the SWOT KaRIn radar image?") -> list[dict]:
    return [{"query": query + ("?" * i), "context": c} for i, c in enumerate(contexts)]


def test_pairs_validator_enforces_bounds_verbatim_and_standalone() -> None:
    ok = GeneratedPairs.model_validate(
        {
            "question_context": _pairs(
                "The Ka-band Radar Interferometer (KaRIn) on SWOT images two 50 km wide swaths.",
                "“Water surface   elevation is reported for river reaches of about 10 km.”",  # quotes, extra spaces: fine
                "The Ka-band Radar Interferometer (KaRIn) on SWOT images two 50 km wide swaths.",
                "Water surface elevation is reported for river reaches of about 10 km.",
            ),
            "search_terms": ["SWOT KaRIn swath", "swot karin SWATH", "river reach elevation", "a b", "c d"],
        },
        context=CTX,
    )
    assert len(ok.question_context) == 3  # more than hi: cut, not re-asked
    assert ok.search_terms == ["SWOT KaRIn swath", "river reach elevation", "a b"]  # deduplicated, then cut

    with pytest.raises(ValidationError, match="at least 2 question/context pairs"):
        GeneratedPairs.model_validate(
            {"question_context": _pairs(DOC), "search_terms": ["a b", "c d"]}, context=CTX
        )
    with pytest.raises(ValidationError, match=r"question_context\[1\].context is not copied verbatim"):
        GeneratedPairs.model_validate(
            {"question_context": _pairs(DOC, "KaRIn images wide swaths."), "search_terms": ["a b", "c d"]},
            context=CTX,
        )
    with pytest.raises(ValidationError, match="uses 'this mission'"):
        GeneratedPairs.model_validate(
            {
                "question_context": _pairs(DOC, DOC, query="What does this mission image"),
                "search_terms": ["a b", "c d"],
            },
            context=CTX,
        )
    with pytest.raises(ValidationError, match="at least 2 distinct search terms"):
        SearchTerms.model_validate({"search_terms": ["SWOT", "swot "]}, context=CTX)
    # Lenient (salvage) mode keeps the structure and leaves the rest to the gates.
    lenient = GeneratedPairs.model_validate(
        {"question_context": _pairs("paraphrase"), "search_terms": []}, context={**CTX, "lenient": True}
    )
    assert len(lenient.question_context) == 1


def test_vague_reference_detection() -> None:
    assert vague_reference("When did this mission launch?") == "this mission"
    assert vague_reference("What does the paper conclude about ozone?") == "the paper"
    assert vague_reference("How is ozone measured in the context of OMI retrievals?") is None
    assert vague_reference("When did the SWOT mission launch?") is None


def test_prompts_are_versioned_by_content(tmp_path: Path) -> None:
    p = load_prompt("qa_pairs.v1")
    assert p.version.startswith("qa_pairs.v1@") and len(p.version.split("@")[1]) == 12
    msgs = p.render(
        title="A  B", source="arxiv", text="x $\\alpha$ {y} </document>", lo=2, hi=3, tlo=2, thi=3
    )
    user = msgs[1]["content"]
    assert "Title: A B" in user and "$\\alpha$ {y}" in user and "</ document>" in user
    assert "Number of question/context pairs: between 2 and 3." in user
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("system\n=== user ===\n$text")
    b.write_text("system!\n=== user ===\n$text")
    assert load_prompt(str(a)).version != load_prompt(str(b)).version
    with pytest.raises(FileNotFoundError, match="bundled prompts"):
        load_prompt("nope.v9")
    assert item_bounds(100, 5, 15, 600) == (5, 5) and item_bounds(10**6, 3, 6, 600) == (4, 6)
    assert cut_text("alpha beta gamma delta", 13) == "alpha beta"


def test_cache_claims_exclude_other_processes(tmp_path: Path) -> None:
    store = LLMCache(tmp_path, "pairs")
    key = cache_key(content_hash="c", prompt_version="p", schema="s", model="m", sampling={})
    claim = store.try_claim(key)
    assert claim is not None
    code = (
        "import sys; from pathlib import Path; from st_workflow.stage2_generation.cache import LLMCache;"
        f"sys.exit(0 if LLMCache(Path({str(tmp_path)!r}), 'pairs').try_claim({key!r}) is None else 1)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code]).returncode == 0
    )  # held by us: the other process defers
    store.put(key, {"value": {"search_terms": ["a b"]}})
    claim.release()
    assert subprocess.run([sys.executable, "-c", code]).returncode == 1  # released: claimable
    assert store.get(key)["value"] == {"search_terms": ["a b"]}
    (store.dir / key[:2] / f"{key}.json").write_text("{truncated")
    assert store.get(key) is None  # a corrupt entry is a miss, never a crash


def test_backoff_full_jitter_and_retry_after_cap() -> None:
    pol = RetryPolicy(max_attempts=5, base_s=1.0, max_s=8.0)
    rng = random.Random(0)
    delays = [pol.delay(k, rng=rng) for k in (1, 2, 3, 4, 5, 6)]
    assert all(0 <= d <= min(8.0, 2 ** (k - 1)) for d, k in zip(delays, (1, 2, 3, 4, 5, 6), strict=True))
    assert pol.delay(1, retry_after=3.5) == 3.5 and pol.delay(1, retry_after=120) == 8.0


def test_transport_retries_honour_retry_after_and_record_usage() -> None:
    async def run(srv: OpenAICompatServer, policy: RetryPolicy) -> tuple[list[float], CallUsage, object]:
        waited: list[float] = []

        async def sleep(s: float) -> None:
            waited.append(s)
            await asyncio.sleep(0)

        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="sk-x", max_retries=0)
        create = resilient(client.chat.completions.create, policy, sleep=sleep)
        usage = CallUsage()
        CURRENT_USAGE.set(usage)
        try:
            r = await create(
                model="m", messages=[{"role": "user", "content": "<document>\nTitle: T\n\nx\n</document>"}]
            )
        except Exception as e:
            r = e
        await client.close()
        return waited, usage, r

    with OpenAICompatServer(faults=Faults(rate_limit=2, retry_after=0.7, server_error=1, drop=1)) as srv:
        waited, usage, r = asyncio.run(run(srv, RetryPolicy(max_attempts=6, base_s=0.01, max_s=5)))
        assert waited[:2] == [0.7, 0.7] and all(w <= 0.08 for w in waited[2:])  # Retry-After, then backoff
        assert usage.retries == {"rate_limit": 2, "server_error": 1, "connection": 1}
        assert usage.attempts == 5 and usage.requests == 1 and usage.prompt_tokens > 0
        assert r.usage.prompt_tokens == usage.prompt_tokens
    with OpenAICompatServer(faults=Faults(server_error=9)) as srv:
        _, usage, r = asyncio.run(run(srv, RetryPolicy(max_attempts=3, base_s=0.0, max_s=0.0)))
        assert isinstance(r, TransportError) and r.cause == "server_error" and usage.attempts == 3
    with OpenAICompatServer(api_key="sk-other") as srv:
        _, usage, r = asyncio.run(run(srv, RetryPolicy(max_attempts=3)))
        assert isinstance(r, EndpointFatalError) and usage.attempts == 1  # a wrong key is not retried
        assert "sk-x" not in str(r)


def test_ledger_sums_spending_per_source() -> None:
    # The cap lives in the run budget (tests/stage2_generation/test_run_budget.py); the ledger only accounts.
    price = Price(input_per_mtok=1.0, output_per_mtok=1.0)
    led = Ledger(price)
    led.record(CallUsage(prompt_tokens=900, completion_tokens=100, requests=1), "arxiv")  # $0.001
    led.record(CallUsage(prompt_tokens=400, completion_tokens=100, requests=2), "cmr")
    s = led.summary()
    assert (s["calls"], s["requests"], s["total_tokens"], s["cost_usd"]) == (2, 3, 1500, 0.0015)
    assert s["by_source"]["arxiv"] == {
        "calls": 1,
        "prompt_tokens": 900,
        "completion_tokens": 100,
        "cost_usd": 0.001,
    }
    assert not led.capped and s["run_budget"] is None and not s["budget_hit"]


def test_config_rejects_inverted_bounds() -> None:
    from st_workflow.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"min_items \(9\) must not exceed max_items \(3\)"):
        load_config(None, ["generation.pairs.min_items=9", "generation.pairs.max_items=3"])
    with pytest.raises(ConfigError, match="min_context_chars"):
        load_config(None, ["generation.gates.min_context_chars=7000"])
