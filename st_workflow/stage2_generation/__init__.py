"""Stage-2 synthetic data: relevancy filtering (Pydantic AI) and pair generation (Instructor), with gates.

Public entry points (the Prefect tasks call these; each returns a :class:`~st_workflow.manifest.Manifest`):

* :func:`run_relevancy_filter` (stage ``llm-filter``), :func:`run_generation` (``llm-pairs``),
  :func:`run_gates` (``llm-gates``);
* :func:`llm_configured` / :func:`llm_skip_reason`: with no endpoint the flow logs the reason once and goes on.
* :func:`write_benchmark_queries` (a plain function, no stage of its own): LLM-written queries of the held-out
  in-domain benchmark, one per document (:class:`QueryDoc` in, :class:`QueryResult` out).

The LLM answers are cached by content under ``<cache_dir>/llm`` (see :mod:`.cache`), so re-runs, resumed runs and
concurrent runs pay for each document once.

Names are imported lazily: deciding that the LLM stages are skipped must not pay for importing Instructor, the OpenAI
SDK and Pydantic AI (seconds on a small machine, and most of an unchanged re-run's budget).
"""

from __future__ import annotations

from st_workflow.lazy import lazy_exports

_EXPORTS = {
    "QueryDoc": "benchmark_queries",
    "QueryResult": "benchmark_queries",
    "benchmark_query_fingerprint": "benchmark_queries",
    "write_benchmark_queries": "benchmark_queries",
    "BenchmarkQuery": "models",
    "ContentQuality": "models",
    "GeneratedPairs": "models",
    "Quality": "models",
    "QueryContextPair": "models",
    "SearchTerms": "models",
    "ARTIFACT_KEY": "report",
    "build_summary": "report",
    "publish_artifact": "report",
    "summary_rows": "report",
    "EndpointFatalError": "resilience",
    "STAGE_FILTER": "stages",
    "STAGE_GATES": "stages",
    "STAGE_PAIRS": "stages",
    "run_gates": "stages",
    "run_generation": "stages",
    "run_relevancy_filter": "stages",
    "llm_configured": "availability",
    "llm_skip_reason": "availability",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
