"""Stage-2 synthetic data: relevancy filtering (Pydantic AI) and pair generation (Instructor), with gates.

Public entry points (the Prefect tasks call these; each returns a :class:`~st_workflow.manifest.Manifest`):

* :func:`run_relevancy_filter` (stage ``llm-filter``), :func:`run_generation` (``llm-pairs``),
  :func:`run_gates` (``llm-gates``);
* :func:`llm_configured` / :func:`llm_skip_reason`: with no endpoint the flow logs the reason once and goes on.

The LLM answers are cached by content under ``<cache_dir>/llm`` (see :mod:`.cache`), so re-runs, resumed runs and
concurrent runs pay for each document once.
"""

from st_workflow.stage2_generation.models import (
    ContentQuality,
    GeneratedPairs,
    Quality,
    QueryContextPair,
    SearchTerms,
)
from st_workflow.stage2_generation.report import ARTIFACT_KEY, build_summary, publish_artifact, summary_rows
from st_workflow.stage2_generation.resilience import EndpointFatalError
from st_workflow.stage2_generation.stages import (
    STAGE_FILTER,
    STAGE_GATES,
    STAGE_PAIRS,
    llm_configured,
    llm_skip_reason,
    run_gates,
    run_generation,
    run_relevancy_filter,
)

__all__ = [
    "ARTIFACT_KEY",
    "STAGE_FILTER",
    "STAGE_GATES",
    "STAGE_PAIRS",
    "ContentQuality",
    "EndpointFatalError",
    "GeneratedPairs",
    "Quality",
    "QueryContextPair",
    "SearchTerms",
    "build_summary",
    "llm_configured",
    "llm_skip_reason",
    "publish_artifact",
    "run_gates",
    "run_generation",
    "run_relevancy_filter",
    "summary_rows",
]
