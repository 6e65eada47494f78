"""Stage-2 synthetic data: relevancy filtering (Pydantic AI) and pair generation (Instructor), with gates.

Public entry points (the Prefect tasks call these; each returns a :class:`~st_workflow.manifest.Manifest`):

* :func:`run_relevancy_filter` (stage ``llm-filter``), :func:`run_generation` (``llm-pairs``),
  :func:`run_gates` (``llm-gates``);
* :func:`llm_configured` / :func:`llm_skip_reason`: with no endpoint the flow logs the reason once and goes on.

The LLM answers are cached by content under ``<cache_dir>/llm`` (see :mod:`.cache`), so re-runs, resumed runs and
concurrent runs pay for each document once.

Names are imported lazily: deciding that the LLM stages are skipped must not pay for importing Instructor, the OpenAI
SDK and Pydantic AI (seconds on a small machine, and most of an unchanged re-run's budget).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContentQuality": "st_workflow.stage2_generation.models",
    "GeneratedPairs": "st_workflow.stage2_generation.models",
    "Quality": "st_workflow.stage2_generation.models",
    "QueryContextPair": "st_workflow.stage2_generation.models",
    "SearchTerms": "st_workflow.stage2_generation.models",
    "ARTIFACT_KEY": "st_workflow.stage2_generation.report",
    "build_summary": "st_workflow.stage2_generation.report",
    "publish_artifact": "st_workflow.stage2_generation.report",
    "summary_rows": "st_workflow.stage2_generation.report",
    "EndpointFatalError": "st_workflow.stage2_generation.resilience",
    "STAGE_FILTER": "st_workflow.stage2_generation.stages",
    "STAGE_GATES": "st_workflow.stage2_generation.stages",
    "STAGE_PAIRS": "st_workflow.stage2_generation.stages",
    "run_gates": "st_workflow.stage2_generation.stages",
    "run_generation": "st_workflow.stage2_generation.stages",
    "run_relevancy_filter": "st_workflow.stage2_generation.stages",
    "llm_configured": "st_workflow.stage2_generation.availability",
    "llm_skip_reason": "st_workflow.stage2_generation.availability",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'st_workflow.stage2_generation' has no attribute {name!r}")
