"""Promotion: pick the checkpoint to ship, reproducibly, and say why.

The paper chose a "balanced" checkpoint by eye over a run that pushed in-domain scores at the cost of general ones.
The policies make that choice a function of the eval manifest:

* ``balanced`` (default): rank the candidates on every benchmark by the configured metric (1 = best, ties share
  the average rank) and promote the best *mean rank*, among candidates that stay within
  ``max_general_regression`` of the base model on every benchmark marked ``general``. When none does, the base
  model is kept. Ties on mean rank go to the higher mean metric, then to the later candidate.
* ``best_in_domain``: the best mean metric over the non-general benchmarks (no floor).
* ``last``: the last candidate (typically the final model).

Example::

    decision = promote(cfg, eval_manifest, {"checkpoint-20": ".../checkpoint-20", "fine_tuned": ".../model"})
    decision["promoted"], decision["reasons"]
"""

from __future__ import annotations

import math
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.manifest import Manifest


def average_ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = highest value; tied values share the mean of their ranks.

    Example:
        >>> average_ranks({"a": 0.5, "b": 0.7, "c": 0.5})
        {'b': 1.0, 'a': 2.5, 'c': 2.5}
    """
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        for name, _ in ordered[i : j + 1]:
            ranks[name] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def promote(
    cfg: PipelineConfig,
    eval_manifest: Manifest,
    candidates: dict[str, str],
    base: str = "base",
) -> dict[str, Any]:
    """Apply ``cfg.evaluation.promotion`` to ``candidates`` (name -> model path) and write ``promotion.json``.

    Returns:
        ``{"promoted": name, "path": path, "policy": ..., "metric": ..., "benchmarks": [...], "reasons": [...],
        "table": [{"model", "path", "values", "ranks", "mean_rank", "mean", "eligible", "notes"}...]}``.

    Raises:
        ValueError: when no candidate has metrics for the policy's metric.
    """
    pc = cfg.evaluation.promotion
    key = pc.metric if pc.precision == "float32" else f"{pc.precision}/{pc.metric}"
    metrics: dict[str, dict[str, dict[str, float]]] = {
        m: v for m, v in eval_manifest.metrics.items() if isinstance(v, dict)
    }
    general = {b.name for b in cfg.evaluation.benchmarks if b.general}
    order = list(candidates)
    scored = [c for c in order if c in metrics]
    reasons: list[str] = []
    for c in order:
        if c not in metrics:
            reasons.append(f"{c}: not evaluated, not a candidate")
    available = {b for c in scored for b, vals in metrics[c].items() if key in vals}
    wanted = pc.benchmarks or sorted(available)
    benches = [b for b in wanted if all(key in metrics[c].get(b, {}) for c in scored)]
    for b in wanted:
        if b not in benches:
            reasons.append(f"benchmark {b}: {key} missing for some candidates, left out")
    if not scored or not benches:
        raise ValueError(
            f"promotion: no candidate of {order} has {key!r} on a common benchmark "
            f"(evaluated: {sorted(metrics)}; benchmarks: {sorted(available)})"
        )
    values = {c: {b: float(metrics[c][b][key]) for b in benches} for c in scored}
    ranks_by_bench = {b: average_ranks({c: values[c][b] for c in scored}) for b in benches}
    base_vals = {b: metrics.get(base, {}).get(b, {}).get(key) for b in benches}
    table: list[dict[str, Any]] = []
    for c in scored:
        notes: list[str] = []
        eligible = True
        for b in benches:
            if b not in general:
                continue
            bv = base_vals[b]
            if bv is None:
                notes.append(f"{b}: no base value, floor not checked")
                continue
            drop = bv - values[c][b]
            if drop > pc.max_general_regression + 1e-12:
                eligible = False
                notes.append(f"{b} (general): {values[c][b]:.4f} vs base {bv:.4f}, drop {drop:.4f} > floor")
        table.append(
            {
                "model": c,
                "path": candidates[c],
                "values": values[c],
                "ranks": {b: ranks_by_bench[b][c] for b in benches},
                "mean_rank": sum(ranks_by_bench[b][c] for b in benches) / len(benches),
                "mean": math.fsum(values[c].values()) / len(benches),
                "eligible": eligible,
                "notes": notes,
            }
        )
    rows = {r["model"]: r for r in table}
    position = {c: i for i, c in enumerate(order)}
    gen_in = [b for b in benches if b in general]

    if pc.policy == "last":
        winner = scored[-1]
        reasons.insert(0, f"policy last: promote the last candidate, {winner}")
    elif pc.policy == "best_in_domain":
        in_domain = [b for b in benches if b not in general] or benches
        if len(in_domain) == len(benches) and gen_in:
            reasons.append("no non-general benchmark: ranking on all benchmarks")

        def in_mean(c: str) -> float:
            return math.fsum(values[c][b] for b in in_domain) / len(in_domain)

        winner = max(scored, key=lambda c: (in_mean(c), position[c]))
        reasons.insert(
            0,
            f"policy best_in_domain: {winner} has the best mean {key} on {in_domain} ({in_mean(winner):.4f}); "
            "no regression floor",
        )
    else:
        eligible = [c for c in scored if rows[c]["eligible"]]
        floor = (
            f"floor: at most {pc.max_general_regression:g} below {base} on the general benchmarks {gen_in}"
            if gen_in
            else "no general benchmark, so no regression floor"
        )
        head = f"policy balanced: ranked {len(scored)} candidates by {key} on {benches}; {floor}"
        reasons.insert(0, head)
        for c in scored:
            if not rows[c]["eligible"]:
                reasons.append(f"{c} excluded: " + "; ".join(n for n in rows[c]["notes"] if "drop" in n))
        if eligible:
            best = sorted(eligible, key=lambda c: (rows[c]["mean_rank"], -rows[c]["mean"], -position[c]))
            winner = best[0]
            reasons.append(
                f"{winner}: best mean rank {rows[winner]['mean_rank']:.2f} among eligible candidates "
                f"(mean {key} {rows[winner]['mean']:.4f})"
            )
            if len(best) > 1:
                ru = best[1]
                reasons.append(
                    f"runner-up {ru}: mean rank {rows[ru]['mean_rank']:.2f} (mean {key} {rows[ru]['mean']:.4f})"
                )
        else:
            winner = base
            reasons.append(f"no candidate stays within the floor on every general benchmark: keeping {base}")
    for b in gen_in:
        bv = base_vals[b]
        if winner in values and bv is not None:
            reasons.append(
                f"{winner} on {b} (general): {values[winner][b]:.4f} vs {base} {bv:.4f} "
                f"({values[winner][b] - bv:+.4f})"
            )
    path = candidates.get(winner)
    if path is None and winner == base:
        path = cfg.training.base_model
    decision = {
        "promoted": winner,
        "path": path,
        "policy": pc.policy,
        "metric": key,
        "benchmarks": benches,
        "general_benchmarks": gen_in,
        "base": base,
        "reasons": reasons,
        "table": table,
    }
    atomic.write_json(cfg.stage_dir("eval") / "promotion.json", decision)
    return decision
