"""The stage-2 LLM report: a JSON summary (``llm-gates/summary.json``) and a Prefect table artifact.

It answers what a data team asks after a regeneration: how many documents went in and were kept by the judge, how
many pairs were generated and kept by each gate, what the data cost (tokens, USD, USD per kept pair, per source; every
answer counted once, cached or not), what the last run of each LLM stage spent on cache misses, and what failed and
why (``last_run`` and ``failures_by_cause`` come from each stage's ``run_stats.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from st_workflow.manifest import Manifest

ARTIFACT_KEY = "stage2-llm-summary"


def _run_stats(m: Manifest | None) -> dict[str, Any]:
    if m is None:
        return {}
    p = Path(m.directory) / "run_stats.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 8) if b else None


def build_summary(
    filter_m: Manifest | None,
    generated: Manifest,
    gates: list[dict[str, Any]],
    kept_by_source: dict[str, int],
    kept_by_type: dict[str, int],
    generated_pairs: int,
) -> dict[str, Any]:
    """The summary dictionary (also what the Prefect artifact shows)."""
    fc, fmet = (filter_m.counts, filter_m.metrics) if filter_m else ({}, {})
    gc, gmet = generated.counts, generated.metrics
    kept_total = sum(kept_by_source.values())
    filter_cost = float(fmet.get("cost_usd", 0.0))
    gen_cost = float(gmet.get("cost_usd", 0.0))
    by_source: dict[str, dict[str, Any]] = {}
    for src in sorted(
        set(kept_by_source) | set(gmet.get("cost_by_source", {})) | set(fmet.get("cost_by_source", {}))
    ):
        cost = float(gmet.get("cost_by_source", {}).get(src, 0.0)) + float(
            fmet.get("cost_by_source", {}).get(src, 0.0)
        )
        by_source[src] = {
            "kept_pairs": kept_by_source.get(src, 0),
            "cost_usd": round(cost, 6),
            "cost_per_kept_pair_usd": _ratio(cost, kept_by_source.get(src, 0)),
        }
    f_run, g_run = _run_stats(filter_m), _run_stats(generated)
    failures: dict[str, dict[str, int]] = {
        "filter": dict(f_run.get("engine", {}).get("failures_by_cause", {})),
        "generation": dict(g_run.get("engine", {}).get("failures_by_cause", {})),
    }
    return {
        "model": gmet.get("model"),
        "prompt_versions": gmet.get("prompt_versions", {}),
        "filter_prompt_version": fmet.get("prompt_version"),
        "complete": bool(gmet.get("complete", True)) and bool(fmet.get("complete", True)),
        "documents": {
            "in": int(fc.get("documents", gc.get("documents", 0))),
            "judged": int(fc.get("judged", 0)),
            "kept_by_filter": int(fc.get("kept", 0)) if filter_m else None,
            "quality": {k.split(":", 1)[1]: v for k, v in fc.items() if k.startswith("quality:")},
            "sent_to_generation": int(gc.get("documents", 0)),
            "generated": int(gc.get("generated", 0)),
            "salvaged": int(gc.get("salvaged", 0)),
            "failed": int(gc.get("failed", 0)) + int(fc.get("failed", 0)),
            "skipped_budget": int(gc.get("skipped_budget", 0)) + int(fc.get("skipped_budget", 0)),
        },
        "pairs": {
            "generated": generated_pairs,
            "kept": kept_total,
            "yield": _ratio(kept_total, generated_pairs),
            "gates": gates,
            "kept_by_type": kept_by_type,
        },
        "tokens": {
            "filter": {
                "prompt": int(fmet.get("prompt_tokens", 0)),
                "completion": int(fmet.get("completion_tokens", 0)),
            },
            "generation": {
                "prompt": int(gmet.get("prompt_tokens", 0)),
                "completion": int(gmet.get("completion_tokens", 0)),
            },
        },
        "cost_usd": {
            "filter": round(filter_cost, 6),
            "generation": round(gen_cost, 6),
            "total": round(filter_cost + gen_cost, 6),
            "per_kept_pair": _ratio(filter_cost + gen_cost, kept_total),
            "by_source": by_source,
        },
        "last_run": {
            "filter": f_run.get("spent", {}),
            "generation": g_run.get("spent", {}),
        },
        "failures_by_cause": failures,
    }


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat ``{"metric", "value"}`` rows for a table artifact."""
    d, p, c = summary["documents"], summary["pairs"], summary["cost_usd"]
    rows: list[dict[str, Any]] = [
        {"metric": "documents in", "value": d["in"]},
        {"metric": "documents kept by filter", "value": d["kept_by_filter"]},
        {"metric": "documents generated", "value": d["generated"]},
        {"metric": "documents failed", "value": d["failed"]},
        {"metric": "documents skipped (budget)", "value": d["skipped_budget"]},
        {"metric": "pairs generated", "value": p["generated"]},
    ]
    rows += [{"metric": f"pairs after gate {g['gate']}", "value": g["kept"]} for g in p["gates"]]
    rows += [
        {"metric": "pairs kept", "value": p["kept"]},
        {
            "metric": "tokens (prompt + completion)",
            "value": sum(sum(v.values()) for v in summary["tokens"].values()),
        },
        {"metric": "cost USD", "value": c["total"]},
        {"metric": "cost USD per kept pair", "value": c["per_kept_pair"]},
        {
            "metric": "spent this run USD",
            "value": round(sum(float(v.get("cost_usd", 0.0)) for v in summary["last_run"].values() if v), 6),
        },
    ]
    for stage, causes in summary["failures_by_cause"].items():
        rows += [{"metric": f"{stage} failures: {cause}", "value": n} for cause, n in sorted(causes.items())]
    return rows


def publish_artifact(
    summary: dict[str, Any], log: logging.Logger | logging.LoggerAdapter[Any] | None = None
) -> bool:
    """Create the Prefect table artifact when running inside a Prefect flow/task run; returns whether it did."""
    from st_workflow.stage2_generation.slots import in_prefect_run

    if not in_prefect_run():
        return False
    from prefect.artifacts import create_table_artifact

    try:
        create_table_artifact(
            key=ARTIFACT_KEY,
            table=summary_rows(summary),
            description="Stage-2 LLM data: documents, pairs per gate, tokens, cost, failures",
        )
    except Exception as e:  # reporting must never fail the stage
        if log is not None:
            log.warning("could not create the Prefect artifact %s: %s", ARTIFACT_KEY, e)
        return False
    return True
