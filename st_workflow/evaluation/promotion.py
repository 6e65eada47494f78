"""Promotion: pick the model to ship, reproducibly, on validation splits only, and never one worse than the base.

The paper released a "balanced" checkpoint over one that pushed in-domain scores at the cost of general ones, chosen
by eye. Here the choice is a function of the eval manifest, made on each benchmark's ``validation`` split (the
headline ``test`` numbers are reported, never chosen on):

* ``balanced`` (default): a candidate (checkpoint, fine-tuned model, weight interpolation) is *eligible* when it
  is no more than ``max_general_regression`` below the base model on every ``general`` benchmark AND beats the
  base in-domain (mean over the non-general benchmarks) by more than ``min_in_domain_gain``. Among eligible
  candidates the best *balanced score* wins: mean in-domain gain + mean general change, both against the base.
  When no candidate is eligible the base model is kept, and the reasons say why.
* ``best_in_domain``: the best mean metric over the non-general benchmarks (no floor, base included).
* ``last``: the last candidate (typically the final model).

A benchmark without a validation split is chosen on its headline split, and the reasons say so.

:func:`publish_promoted` then points ``<run>/promoted`` at the promoted model (a symlink to its directory), which
everything downstream (hub push, deployments, ``st-workflow evaluate -m runs/<run>/promoted``) uses.

Example::

    decision = promote(cfg, eval_manifest, {"base": "...", "fine_tuned": ".../model", "interp-0.50": "..."})
    decision["promoted"], decision["reasons"]
    publish_promoted(cfg, decision)          # runs/<run>/promoted -> the model directory
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.evaluation.binary_model import BINARY_DIR, precision_summary, write_binary_model
from st_workflow.manifest import Manifest

VALIDATION_PREFIX = "validation/"
PROMOTED = "promoted"


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


def _mean(xs: list[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def promote(
    cfg: PipelineConfig,
    eval_manifest: Manifest,
    candidates: dict[str, str],
    base: str = "base",
) -> dict[str, Any]:
    """Apply ``cfg.evaluation.promotion`` to ``candidates`` (name -> model path) and write ``promotion.json``.

    ``candidates`` may include the base model itself (it is the fallback either way).

    Returns:
        ``{"promoted", "path", "policy", "metric", "benchmarks", "general_benchmarks", "chosen_on", "base",
        "reasons", "table": [{"model", "path", "values" (chosen-on split), "test" (headline), "deltas",
        "in_domain_gain", "general_delta", "score", "mean_rank", "eligible", "notes"}...]}``.

    Raises:
        ValueError: when no candidate has metrics for the policy's metric.
    """
    pc = cfg.evaluation.promotion
    key = pc.metric if pc.precision == "float32" else f"{pc.precision}/{pc.metric}"
    metrics: dict[str, dict[str, dict[str, float]]] = {
        m: v for m, v in eval_manifest.metrics.items() if isinstance(v, dict)
    }
    general = {b.name for b in cfg.evaluation.benchmarks if b.general}
    order = list(dict.fromkeys([*([base] if base in metrics else []), *candidates]))
    scored = [c for c in order if c in metrics]
    reasons: list[str] = [f"{c}: not evaluated, not a candidate" for c in order if c not in metrics]
    available = {b for c in scored for b, vals in metrics[c].items() if key in vals}
    wanted = pc.benchmarks or sorted(available)
    benches = [b for b in wanted if scored and all(key in metrics[c].get(b, {}) for c in scored)]
    for b in wanted:
        if b not in benches:
            reasons.append(f"benchmark {b}: {key} missing for some candidates, left out")
    if not scored or not benches:
        raise ValueError(
            f"promotion: no candidate of {order} has {key!r} on a common benchmark "
            f"(evaluated: {sorted(metrics)}; benchmarks: {sorted(available)})"
        )
    chosen_on = {
        b: "validation" if all(VALIDATION_PREFIX + key in metrics[c][b] for c in scored) else "headline"
        for b in benches
    }
    choice_key = {b: (VALIDATION_PREFIX + key if chosen_on[b] == "validation" else key) for b in benches}
    values = {c: {b: float(metrics[c][b][choice_key[b]]) for b in benches} for c in scored}
    test = {c: {b: float(metrics[c][b][key]) for b in benches} for c in scored}
    in_domain = [b for b in benches if b not in general]
    gen_in = [b for b in benches if b in general]
    has_base = base in values
    ranks_by_bench = {b: average_ranks({c: values[c][b] for c in scored}) for b in benches}

    table: list[dict[str, Any]] = []
    for c in scored:
        notes: list[str] = []
        deltas = {b: values[c][b] - values[base][b] for b in benches} if has_base else {}
        eligible = c != base
        for b in gen_in:
            if not has_base:
                notes.append(f"{b}: no base value, floor not checked")
                continue
            drop = -deltas[b]
            if drop > pc.max_general_regression + 1e-12:
                eligible = False
                notes.append(
                    f"{b} (general, {chosen_on[b]}): {values[c][b]:.4f} vs base {values[base][b]:.4f}, "
                    f"drop {drop:.4f} > floor {pc.max_general_regression:g}"
                )
        gain = _mean([deltas[b] for b in in_domain]) if has_base else None
        gen_delta = _mean([deltas[b] for b in gen_in]) if has_base else None
        if c != base and gain is not None and in_domain and gain <= pc.min_in_domain_gain + 1e-12:
            eligible = False
            notes.append(
                f"in-domain {in_domain}: {gain:+.4f} vs base, not more than {pc.min_in_domain_gain:g} better"
            )
        score = (gain or 0.0) + (gen_delta or 0.0) if has_base else _mean(list(values[c].values()))
        table.append(
            {
                "model": c,
                "path": candidates.get(c) or (cfg.training.base_model if c == base else None),
                "values": values[c],
                "test": test[c],
                "deltas": deltas,
                "in_domain_gain": gain,
                "general_delta": gen_delta,
                "score": score,
                "ranks": {b: ranks_by_bench[b][c] for b in benches},
                "mean_rank": math.fsum(ranks_by_bench[b][c] for b in benches) / len(benches),
                "mean": math.fsum(values[c].values()) / len(benches),
                "eligible": eligible,
                "notes": notes,
            }
        )
    rows = {r["model"]: r for r in table}
    position = {c: i for i, c in enumerate(scored)}
    splits = sorted({f"{b}: {chosen_on[b]}" for b in benches})
    headline = [b for b in benches if chosen_on[b] == "headline"]
    if headline:
        reasons.append(f"no validation split on {headline}: chosen on the headline split there")

    if pc.policy == "last":
        winner = scored[-1]
        reasons.insert(0, f"policy last: promote the last candidate, {winner}")
    elif pc.policy == "best_in_domain":
        ranked_on = in_domain or benches
        if not in_domain:
            reasons.append("no non-general benchmark: ranking on all benchmarks")

        def in_mean(c: str) -> float:
            return math.fsum(values[c][b] for b in ranked_on) / len(ranked_on)

        winner = max(scored, key=lambda c: (in_mean(c), position[c]))
        reasons.insert(
            0,
            f"policy best_in_domain: {winner} has the best mean {key} on {ranked_on} ({in_mean(winner):.4f}); "
            "no regression floor",
        )
    else:
        floor = (
            f"floor: at most {pc.max_general_regression:g} below {base} on each general benchmark {gen_in}"
            if gen_in
            else "no general benchmark, so no regression floor"
        )
        need = (
            f"and more than {pc.min_in_domain_gain:g} better than {base} in-domain ({in_domain})"
            if in_domain
            else "(no in-domain benchmark to require a gain on)"
        )
        reasons.insert(
            0,
            f"policy balanced: {len(scored)} models by {key} on {benches} ({', '.join(splits)}); eligible: {floor} "
            f"{need}; best balanced score (in-domain gain + general change) wins",
        )
        if not has_base:
            reasons.append(f"{base} was not evaluated: no floor, no gain check; ranked by mean {key}")
        for c in scored:
            if c != base and not rows[c]["eligible"]:
                reasons.append(f"{c} not eligible: " + "; ".join(rows[c]["notes"]))
        eligible = [c for c in scored if rows[c]["eligible"]]
        if eligible:
            best = sorted(
                eligible, key=lambda c: (-rows[c]["score"], -(rows[c]["in_domain_gain"] or 0), position[c])
            )
            winner = best[0]
            r = rows[winner]
            reasons.append(
                f"{winner}: best balanced score {r['score']:+.4f} among eligible candidates"
                + (
                    f" (in-domain {r['in_domain_gain']:+.4f}, general {r['general_delta']:+.4f})"
                    if r["in_domain_gain"] is not None and r["general_delta"] is not None
                    else ""
                )
            )
            if len(best) > 1:
                ru = rows[best[1]]
                reasons.append(f"runner-up {best[1]}: balanced score {ru['score']:+.4f}")
        else:
            winner = base
            reasons.append(
                f"no candidate is eligible: keeping {base}, the model nothing here was shown to beat"
            )
    if winner != base and has_base:
        for b in gen_in:
            reasons.append(
                f"{winner} on {b} (general, {chosen_on[b]}): {values[winner][b]:.4f} vs {base} "
                f"{values[base][b]:.4f} ({values[winner][b] - values[base][b]:+.4f})"
            )
    path = rows[winner]["path"] if winner in rows else candidates.get(winner)
    if path is None and winner == base:
        path = cfg.training.base_model
    decision = {
        "promoted": winner,
        "path": path,
        "policy": pc.policy,
        "metric": key,
        "benchmarks": benches,
        "general_benchmarks": gen_in,
        "chosen_on": chosen_on,
        "base": base,
        "reasons": reasons,
        "table": table,
        # What the promoted model keeps at every scored precision (headline splits): the binary model's card.
        "precisions": precision_summary(metrics.get(winner, {}), pc.metric),
    }
    atomic.write_json(cfg.stage_dir("eval") / "promotion.json", decision)
    return decision


def publish_promoted(cfg: PipelineConfig, decision: dict[str, Any]) -> Path:
    """Point ``<run>/promoted`` at the promoted model and write ``<run>/promoted.json`` (name, path, reasons).

    When the eval scored binary precisions, ``<run>/promoted-binary`` is written too: the same model with a card
    stating its measured binary / binary + rescore retention (:mod:`st_workflow.evaluation.binary_model`).

    A local model directory is linked (an atomic symlink swap, so a reader never sees a missing link); a hub id
    that is not on disk is loaded and saved there instead, so ``<run>/promoted`` is always a loadable model.
    """
    from st_workflow.models import resolve_model

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / PROMOTED
    target = Path(resolve_model(str(decision["path"]), cfg.cache_path))
    if target.is_dir():
        tmp = run_dir / f".{PROMOTED}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.resolve(), target_is_directory=True)
        if link.is_dir() and not link.is_symlink():
            import shutil

            shutil.rmtree(link)
        os.replace(tmp, link)
    else:
        from st_workflow.models import load_model

        model = load_model(str(decision["path"]), cache_dir=cfg.cache_path)
        if link.is_symlink():
            link.unlink()
        with atomic.atomic_dir(link) as tmp_dir:
            model.save(str(tmp_dir))
    binary = _publish_binary(cfg, decision, link)
    atomic.write_json(
        run_dir / f"{PROMOTED}.json",
        {
            "promoted": decision["promoted"],
            "path": str(decision["path"]),
            "link": str(link),
            "binary": str(binary) if binary is not None else None,
            "policy": decision.get("policy"),
            "metric": decision.get("metric"),
            "reasons": decision.get("reasons", []),
        },
    )
    return link


def _publish_binary(cfg: PipelineConfig, decision: dict[str, Any], link: Path) -> Path | None:
    """``<run>/promoted-binary`` when binary was measured for the promoted model (else a stale one is removed)."""
    out = cfg.run_dir / BINARY_DIR
    summary = decision.get("precisions") or {}
    if not any("binary" in rows for rows in summary.values()):
        if out.is_dir():
            import shutil

            shutil.rmtree(out)
        return None
    metric = str(decision.get("metric", cfg.evaluation.promotion.metric)).rsplit("/", 1)[-1]
    return write_binary_model(link.resolve(), out, summary, metric, f"{cfg.run_name}: {decision['promoted']}")
