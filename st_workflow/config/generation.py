"""Configuration of the LLM stages: relevancy filtering (Pydantic AI) and pair generation (Instructor)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from st_workflow.config.base import PositiveInt, SecretRef, StrictModel


class Price(StrictModel):
    """Price of one model, in USD per million tokens."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    """USD per 1M prompt tokens."""
    output_per_mtok: float = Field(default=0.0, ge=0)
    """USD per 1M completion tokens."""


def _default_prices() -> dict[str, Price]:
    return {
        "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
        "gpt-4.1-mini": Price(input_per_mtok=0.40, output_per_mtok=1.60),
        "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.0),
    }


class LLMEndpointConfig(StrictModel):
    """An OpenAI-compatible endpoint (OpenAI, vLLM, Ollama...)."""

    base_url: str | None = None
    """Endpoint base URL (e.g. ``https://api.openai.com/v1``); unset means the LLM stages are skipped."""
    model: str = "gpt-4o-mini"
    """Model name sent to the endpoint."""
    api_key: SecretRef = Field(default_factory=lambda: SecretRef(env="OPENAI_API_KEY"))
    """Where the API key comes from (never from the config file)."""
    timeout_s: float = 120.0
    """Per-request timeout."""
    temperature: float = 0.2
    """Sampling temperature (part of the cache key)."""
    max_tokens: PositiveInt | None = 4096
    """Completion token cap (part of the cache key)."""
    seed: int | None = None
    """Sampling seed passed to endpoints that support it (part of the cache key)."""

    @property
    def configured(self) -> bool:
        """True when an endpoint is set."""
        return bool(self.base_url)


class ExecutionConfig(StrictModel):
    """How calls are scheduled, retried, cached and paid for."""

    concurrency: PositiveInt = 16
    """Calls in flight at once (a sliding window, no batch barriers)."""
    max_attempts: PositiveInt = 6
    """Attempts per call on 429, 5xx, timeouts and connection errors."""
    backoff_base_s: float = 1.0
    """First backoff delay; doubles per attempt, with full jitter."""
    backoff_max_s: float = 60.0
    """Upper bound of one delay (also caps an honoured ``Retry-After``)."""
    max_reasks: int = Field(default=2, ge=0)
    """Re-asks when the answer fails validation."""
    budget_usd: float | None = Field(default=None, ge=0)
    """Cap on the USD spending of the whole run (``run_name``): every LLM stage (filter, pairs, benchmark
    queries), task retry, fan-out shard and concurrent process of the run draws on this one budget, kept in
    ``<cache_dir>/llm/budgets/<run_name>.json``. Each request reserves its worst case (prompt size plus
    ``endpoint.max_tokens``) before it is sent and settles at its real usage, so the run never spends more; what
    was spent stays spent when the run is run again (cached answers cost nothing). Raise it to spend more. Needs a
    price for the model (``price`` or ``prices``) and ``endpoint.max_tokens``."""
    budget_tokens: PositiveInt | None = None
    """The same cap of the run in tokens (prompt + completion), shared the same way."""
    prices: dict[str, Price] = Field(default_factory=_default_prices)
    """Price table by model name."""
    price: Price | None = None
    """Price of ``generation.endpoint.model``, before the table (set it for a custom or local model, e.g.
    ``--set generation.execution.price.input_per_mtok=0.2``; 0 and 0 declare it free)."""
    shard_size: PositiveInt = 200
    """Results per Parquet shard (each written atomically)."""
    prefect_concurrency_limit: str | None = "llm-calls"
    """Name of a Prefect global concurrency limit that bounds LLM calls across runs (unset: no limit). Each HTTP
    request holds one slot while inside a Prefect run; a limit missing on the server is logged once and ignored."""
    claim_poll_s: float = Field(default=0.5, gt=0)
    """How often a run looks again at a document that another run is answering at the same time."""
    progress_every_s: float = Field(default=15.0, gt=0)
    """Interval of the progress log line (documents done, cached, failed, USD spent)."""

    def price_for(self, model: str) -> Price | None:
        """The price of ``model``: ``price`` when set, else its ``prices`` entry, else ``None`` (unpriced)."""
        return self.price if self.price is not None else self.prices.get(model)


def budget_problem(gen: GenerationConfig) -> str | None:
    """Why the configured budget could not be enforced, or ``None``: an unpriced model would cost $0 per call
    (``budget_usd`` would admit every call) and without ``max_tokens`` a call's worst case is unknown."""
    ex, ep = gen.execution, gen.endpoint
    if ex.budget_usd is not None and ex.price_for(ep.model) is None:
        return (
            f"generation.execution.budget_usd is set but model {ep.model!r} has no price, so its calls would "
            "count as $0 and the budget would never stop them: set generation.execution.price.input_per_mtok "
            "and generation.execution.price.output_per_mtok (USD per 1M tokens; 0 for a free local model), "
            f"or add {ep.model!r} to generation.execution.prices"
        )
    if (ex.budget_usd is not None or ex.budget_tokens is not None) and ep.max_tokens is None:
        return (
            "a budget (generation.execution.budget_usd / budget_tokens) needs generation.endpoint.max_tokens: "
            "without it the worst case of a call, which is reserved before the call is sent, is unknown"
        )
    return None


class RelevancyFilterConfig(StrictModel):
    """Pydantic-AI judge of each document's fitness for grounded QA."""

    enabled: bool = True
    """Run the filter when an endpoint is configured."""
    keep: list[Literal["VERY_GOOD", "GOOD", "POOR"]] = Field(default_factory=lambda: ["VERY_GOOD", "GOOD"])
    """Labels that pass."""
    sources: list[str] = Field(default_factory=list)
    """Sources to judge; empty means all."""
    max_doc_chars: PositiveInt = 12_000
    """Documents are cut to this many characters before judging."""
    prompt: str = "relevancy.v1"
    """Bundled prompt name (``st_workflow/stage2_generation/prompts``) or a prompt file path; its content hash is
    part of the cache key."""


class PairGenerationConfig(StrictModel):
    """Instructor generation of question/context pairs and search terms."""

    enabled: bool = True
    """Generate when an endpoint is configured."""
    mode: Literal["tools", "json"] = "tools"
    """Instructor mode: tool calling or JSON output."""
    min_items: PositiveInt = 5
    """Fewest question/context pairs and search terms per document."""
    max_items: PositiveInt = 15
    """Most question/context pairs and search terms per document."""
    chars_per_item: PositiveInt = 600
    """Document characters per requested item when scaling between min and max."""
    search_terms_only_sources: list[str] = Field(default_factory=lambda: ["cmr", "pds"])
    """Sources whose records get the search-terms-only prompt."""
    search_terms_min: PositiveInt = 3
    """Fewest search terms for the search-terms-only variant."""
    search_terms_max: PositiveInt = 6
    """Most search terms for the search-terms-only variant."""
    sources: list[str] = Field(default_factory=list)
    """Sources to generate for; empty means all."""
    max_doc_chars: PositiveInt = 12_000
    """Documents are cut to this many characters before prompting."""
    max_documents: PositiveInt | None = None
    """Cap on documents sent to the LLM per run (the first ones in (source, id) order)."""
    prompt: str = "qa_pairs.v1"
    """Prompt of the question/context + search-terms generator (bundled name or file path)."""
    search_terms_prompt: str = "search_terms.v1"
    """Prompt of the search-terms-only variant (bundled name or file path)."""
    salvage_after_reasks: bool = True
    """When the re-asks are spent, keep the structurally valid part of the last answer; the gates then drop the
    pairs that are still not verbatim or not standalone, and count them. False: the document fails."""

    @model_validator(mode="after")
    def _ordered_bounds(self) -> PairGenerationConfig:
        _check_order(self.min_items, self.max_items, "min_items", "max_items")
        _check_order(self.search_terms_min, self.search_terms_max, "search_terms_min", "search_terms_max")
        return self


class BenchmarkQueriesConfig(StrictModel):
    """Instructor-written queries of the in-domain IR benchmark: one search per held-out document, in place of its
    title (documents whose query cannot be written keep their title)."""

    enabled: bool = True
    """Write LLM queries for the held-out documents when an endpoint is configured (false: titles are the queries)."""
    prompt: str = "benchmark_query.v1"
    """Prompt of the query writer (bundled name or file path); its content hash is part of the cache key."""
    mode: Literal["tools", "json"] = "tools"
    """Instructor mode: tool calling or JSON output."""
    max_doc_chars: PositiveInt = 8_000
    """Documents are cut to this many characters before prompting."""
    min_query_chars: PositiveInt = 10
    """Shorter queries are re-asked."""
    max_query_chars: PositiveInt = 300
    """Longer queries are re-asked."""
    title_copy_min_words: int = Field(default=4, ge=0)
    """A query must not contain the whole title when the title has at least this many words ("What is <title>?"
    would make retrieval a string match); shorter titles, such as a mission name, may be named whole. 0: only a
    query equal to the title is refused."""

    @model_validator(mode="after")
    def _ordered_bounds(self) -> BenchmarkQueriesConfig:
        _check_order(self.min_query_chars, self.max_query_chars, "min_query_chars", "max_query_chars")
        return self


class GatesConfig(StrictModel):
    """Pair-level quality gates, each reporting its yield."""

    require_verbatim_context: bool = True
    """The context must occur in the document (whitespace-normalised)."""
    leakage_check: bool = True
    """Drop pairs that leak into a configured benchmark (:mod:`st_workflow.leakage`: a benchmark query or a
    document judged relevant to one; each benchmark's ``leakage`` option sets how strict). Near-duplicates follow
    ``pairs.near_duplicates``, the rule the hold-out and the natural pairs use too."""
    min_query_chars: PositiveInt = 8
    """Shorter queries are dropped."""
    max_query_chars: PositiveInt = 500
    """Longer queries are dropped."""
    min_context_chars: PositiveInt = 40
    """Shorter contexts are dropped."""
    max_context_chars: PositiveInt = 6000
    """Longer contexts are dropped."""
    min_term_chars: PositiveInt = 4
    """Shorter search terms are dropped."""
    max_term_chars: PositiveInt = 150
    """Longer search terms are dropped."""
    require_standalone_query: bool = True
    """Drop queries that lean on an unseen document ("this mission", "the paper") instead of naming it."""

    @model_validator(mode="after")
    def _ordered_bounds(self) -> GatesConfig:
        _check_order(self.min_query_chars, self.max_query_chars, "min_query_chars", "max_query_chars")
        _check_order(self.min_context_chars, self.max_context_chars, "min_context_chars", "max_context_chars")
        _check_order(self.min_term_chars, self.max_term_chars, "min_term_chars", "max_term_chars")
        return self


def _check_order(lo: float, hi: float, lo_name: str, hi_name: str) -> None:
    if lo > hi:
        raise ValueError(f"{lo_name} ({lo}) must not exceed {hi_name} ({hi})")


class GenerationConfig(StrictModel):
    """LLM stages. With no endpoint they are skipped with one log line."""

    endpoint: LLMEndpointConfig = Field(default_factory=LLMEndpointConfig)
    """The OpenAI-compatible endpoint shared by the filter and the generator."""
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    """Concurrency, retries, cache, budget."""
    filter: RelevancyFilterConfig = Field(default_factory=RelevancyFilterConfig)
    """Relevancy filter."""
    pairs: PairGenerationConfig = Field(default_factory=PairGenerationConfig)
    """Pair generation."""
    gates: GatesConfig = Field(default_factory=GatesConfig)
    """Pair gates."""
    benchmark_queries: BenchmarkQueriesConfig = Field(default_factory=BenchmarkQueriesConfig)
    """LLM-written queries of the held-out in-domain benchmark."""
    filter_before_generation: bool = True
    """Judge documents before generating (cheaper: rejected documents cost no generation call). When false, pairs
    are generated for every document (the two stages may then run side by side) and the gates drop the pairs of
    documents the filter rejected; each document is still judged once."""

    @model_validator(mode="after")
    def _enforceable_budget(self) -> GenerationConfig:
        if self.endpoint.configured and (problem := budget_problem(self)) is not None:
            raise ValueError(problem)
        return self
