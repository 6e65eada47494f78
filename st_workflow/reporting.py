"""The run report: ``<run>/report.md``, ``<run>/summary.json`` and a PNG chart.

The report is what a user opens after ``make demo``. It leads with the trade-off the paper's table showed: every
candidate (fine-tuned model, checkpoints, interpolations) against the base model on the in-domain benchmark and on
each general benchmark, test splits, with deltas, a chart, and the promoted model starred; then the validation
numbers promotion decided on, the promotion's reasons, what each stage did (ran or reused, seconds, counts) and where
every artifact is. ``summary.json`` is the machine-readable core:

    {"wall_seconds": 412.3, "models": {"base": {"in-domain": {"ndcg@10": 0.61, ...}}, "fine_tuned": {...}},
     "tradeoff": {"metric": "ndcg@10", "columns": [...], "rows": [...]}, "promoted": {...}, ...}
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.manifest import MANIFEST_NAME, Manifest


@dataclass
class StageRecord:
    """What one stage did in this run."""

    stage: str
    status: str
    """``ran``, ``reused`` (cache hit) or ``skipped`` (with the reason in ``note``)."""
    seconds: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""
    directory: str = ""


def stage_record(
    m: Manifest | None, stage: str, started_at: float, seconds: float | None = None, note: str = ""
) -> StageRecord:
    """Summarise a stage result; a manifest created before ``started_at`` was reused from an earlier run."""
    if m is None:
        return StageRecord(stage=stage, status="skipped", seconds=seconds, note=note)
    created = dt.datetime.fromisoformat(m.created_at).timestamp()
    status = "reused" if created < started_at - 1 else "ran"
    label = f"{stage}/{m.name}" if m.name and m.name != stage else stage
    return StageRecord(
        stage=label, status=status, seconds=seconds, counts=dict(m.counts), note=note, directory=m.directory
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def metrics_table(
    metrics: dict[str, dict[str, dict[str, float]]], primary: list[str], models: list[str] | None = None
) -> str:
    """Markdown table: one row per (model, benchmark), one column per primary metric."""
    models = models or list(metrics)
    head = "| Model | Benchmark | " + " | ".join(primary) + " |"
    sep = "|---|---|" + "---:|" * len(primary)
    rows = [head, sep]
    for model in models:
        for bench, vals in sorted(metrics.get(model, {}).items()):
            rows.append(f"| {model} | {bench} | " + " | ".join(_fmt(vals.get(k, "")) for k in primary) + " |")
    return "\n".join(rows)


def tradeoff(
    cfg: PipelineConfig,
    metrics: dict[str, dict[str, dict[str, float]]],
    models: list[str],
    *,
    split: str = "test",
    base: str = "base",
) -> dict[str, Any]:
    """Every model against ``base`` on each benchmark and the general mean, at the promotion metric.

    ``split`` ``test`` reads the headline keys, ``validation`` the ``validation/`` ones. Returns ``{"metric",
    "split", "columns": [{"name", "general"}], "rows": [{"model", "values": {col: v}, "deltas": {col: d}}]}``;
    the general mean column (``general mean``) is there when there are general benchmarks.

    Example:
        >>> from st_workflow.config import PipelineConfig
        >>> cfg = PipelineConfig.model_validate({"evaluation": {"benchmarks": [
        ...     {"name": "in-domain", "kind": "pipeline"}, {"name": "cisi", "general": True, "path": "x"}]}})
        >>> m = {"base": {"in-domain": {"ndcg@10": 0.5}, "cisi": {"ndcg@10": 0.4}},
        ...      "ft": {"in-domain": {"ndcg@10": 0.6}, "cisi": {"ndcg@10": 0.38}}}
        >>> t = tradeoff(cfg, m, ["base", "ft"])
        >>> [c["name"] for c in t["columns"]], round(t["rows"][1]["deltas"]["cisi"], 2)
        (['in-domain', 'cisi', 'general mean'], -0.02)
    """
    metric = cfg.evaluation.promotion.metric
    key = metric if split == "test" else f"validation/{metric}"
    general = {b.name for b in cfg.evaluation.benchmarks if b.general}
    seen = {b for m in models for b, vals in metrics.get(m, {}).items() if key in vals}
    order = [b.name for b in cfg.evaluation.benchmarks if b.name in seen] + sorted(
        seen - {b.name for b in cfg.evaluation.benchmarks}
    )
    benches = [b for b in order if b not in general] + [b for b in order if b in general]
    gen = [b for b in benches if b in general]
    columns = [{"name": b, "general": b in general} for b in benches]
    if gen:
        columns.append({"name": "general mean", "general": True})
    rows = []
    for m in models:
        per = metrics.get(m, {})
        values: dict[str, float] = {b: per[b][key] for b in benches if key in per.get(b, {})}
        if gen and all(b in values for b in gen):
            values["general mean"] = sum(values[b] for b in gen) / len(gen)
        if values:
            rows.append({"model": m, "values": values})
    base_vals = next((r["values"] for r in rows if r["model"] == base), {})
    for r in rows:
        r["deltas"] = {c: v - base_vals[c] for c, v in r["values"].items() if c in base_vals}
    return {"metric": metric, "split": split, "columns": columns, "rows": rows}


def tradeoff_markdown(table: dict[str, Any], promoted: str | None = None, base: str = "base") -> str:
    """The trade-off table in markdown: value and delta against the base per cell, the promoted model starred."""
    cols = table["columns"]
    if not table["rows"] or not cols:
        return ""
    head = (
        "| Model | "
        + " | ".join(
            c["name"] + (" (general)" if c["general"] and c["name"] != "general mean" else "") for c in cols
        )
        + " |"
    )
    lines = [head, "|---|" + "---:|" * len(cols)]
    for r in table["rows"]:
        cells = []
        for c in cols:
            v = r["values"].get(c["name"])
            d = r["deltas"].get(c["name"])
            if v is None:
                cells.append("–")
            elif r["model"] == base or d is None:
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.4f} ({d:+.4f})")
        name = f"**{r['model']}** ★" if r["model"] == promoted else r["model"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(
    table: dict[str, Any], path: Path, promoted: str | None = None, base: str = "base"
) -> Path | None:
    """Two panels: the metric per benchmark (one bar per model) and each model's change against the base."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = [c["name"] for c in table["columns"]]
    rows = table["rows"]
    if not rows or not cols:
        return None
    fig = Figure(figsize=(max(8.0, 1.9 * len(cols) + 4), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    width = 0.8 / len(rows)
    for panel, (part, title) in enumerate(
        (("values", f"{table['metric']} ({table['split']})"), ("deltas", f"change vs {base}"))
    ):
        ax = fig.add_subplot(1, 2, panel + 1)
        for i, r in enumerate(rows):
            if part == "deltas" and r["model"] == base:
                continue
            xs = [g + i * width for g in range(len(cols))]
            ys = [r[part].get(c, 0.0) for c in cols]
            label = f"{r['model']} ★" if r["model"] == promoted else r["model"]
            bars = ax.bar(
                xs, ys, width=width, label=label, edgecolor="black" if r["model"] == promoted else None
            )
            if len(rows) <= 6:
                ax.bar_label(bars, fmt="%+.3f" if part == "deltas" else "%.3f", fontsize=6, padding=1)
        ax.set_xticks([g + width * (len(rows) - 1) / 2 for g in range(len(cols))])
        ax.set_xticklabels(cols, fontsize=8)
        if part == "deltas":
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if panel == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Base vs candidates: in-domain gain against general forgetting")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _stage_rows(stages: list[StageRecord]) -> str:
    rows = ["| Stage | Status | Seconds | Counts | Note |", "|---|---|---:|---|---|"]
    for s in stages:
        counts = ", ".join(f"{k}={v}" for k, v in list(s.counts.items())[:8])
        secs = f"{s.seconds:.1f}" if s.seconds is not None else ""
        rows.append(f"| {s.stage} | {s.status} | {secs} | {counts} | {s.note} |")
    return "\n".join(rows)


def _precision_sections(
    cfg: PipelineConfig, metrics: dict[str, dict[str, dict[str, float]]], model: str
) -> list[str]:
    """The shipped model's precision choice (metric, retention, bytes/doc, ms/query; retention against the rescore
    multiplier) when ``evaluation.precisions`` scores more than float32; nothing otherwise."""
    from st_workflow.evaluation.report import multiplier_table, precision_table

    ev = cfg.evaluation
    per_bench = metrics.get(model, {})
    precisions = list(ev.precisions)
    if precisions == ["float32"] or not per_bench:
        return []
    key = ev.primary_metrics[0]
    benches = sorted(per_bench, key=lambda b: (b != "in-domain", b))
    return [
        *precision_table(per_bench, benches, key, precisions, model, rescore=ev.rescore),
        *multiplier_table(per_bench, benches, key, ev.rescore_multiplier, model, rescore=ev.rescore),
    ]


def write_run_report(
    cfg: PipelineConfig,
    *,
    metrics: dict[str, dict[str, dict[str, float]]],
    stages: list[StageRecord],
    wall_seconds: float,
    promotion: dict[str, Any] | None = None,
    extra_links: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``summary.json`` and ``report_metrics.png`` at the run root; returns their paths."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    primary = cfg.evaluation.primary_metrics
    from st_workflow.evaluation.report import order_models

    baselines = {b.name for b in cfg.evaluation.baselines}
    order = order_models(list(metrics), baselines)
    promoted_name = (promotion or {}).get("promoted")
    test_table = tradeoff(cfg, metrics, order)
    val_table = tradeoff(cfg, metrics, order, split="validation")
    chart = plot_tradeoff(test_table, run_dir / "report_metrics.png", promoted=promoted_name)

    summary = {
        "run_name": cfg.run_name,
        "wall_seconds": round(wall_seconds, 2),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": {m: metrics[m] for m in order},
        "tradeoff": test_table,
        "tradeoff_validation": val_table,
        "stages": [asdict(s) for s in stages],
        "reused_stages": sum(s.status == "reused" for s in stages),
        "promoted": promotion,
    }
    atomic.write_json(run_dir / "summary.json", summary)

    ran = sum(s.status == "ran" for s in stages)
    reused = summary["reused_stages"]
    lines = [
        f"# st-workflow run `{cfg.run_name}`",
        "",
        cfg.description.strip(),
        "",
        f"Generated {summary['generated_at']} · wall time **{wall_seconds:.1f} s** · stages ran {ran}, "
        f"reused {reused} · base model `{cfg.training.base_model}`",
        "",
        "## Retrieval quality: in-domain gain vs general forgetting (test splits)",
        "",
    ]
    table_md = tradeoff_markdown(test_table, promoted_name)
    if table_md:
        lines += [
            f"{test_table['metric']} on each benchmark's test split, change against the base model in "
            "parentheses; ★ is the promoted model.",
            "",
            table_md,
            "",
        ]
    else:
        lines += ["_No evaluation results._", ""]
    if chart:
        lines += [f"![metrics]({chart.name})", ""]
    val_md = tradeoff_markdown(val_table, promoted_name)
    if val_md:
        lines += ["### Validation splits (what promotion decided on)", "", val_md, ""]
    if promotion:
        lines += [
            "## Promotion",
            "",
            f"Promoted: **{promotion.get('promoted')}** (`{promotion.get('path')}`)"
            + (f", linked at `{promotion['link']}`" if promotion.get("link") else ""),
            "",
        ]
        lines += [f"- {r}" for r in promotion.get("reasons", [])] + [""]
    lines += _precision_sections(cfg, metrics, promoted_name or "base")
    if metrics:
        lines += ["## All metrics (test splits)", "", metrics_table(metrics, primary, order), ""]
    lines += ["## Stages", "", _stage_rows(stages), ""]
    links = {"summary": "summary.json", **(extra_links or {})}
    lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in links.items()] + [""]
    atomic.write_text(run_dir / "report.md", "\n".join(lines))
    out = {"report": run_dir / "report.md", "summary": run_dir / "summary.json"}
    if chart:
        out["chart"] = chart
    return out


def read_stage_manifests(cfg: PipelineConfig) -> list[Manifest]:
    """Every manifest currently in the run directory (used by reports and ``st-workflow status``)."""
    out = []
    for p in sorted(cfg.run_dir.glob(f"*/{MANIFEST_NAME}")) + sorted(
        cfg.run_dir.glob(f"*/*/{MANIFEST_NAME}")
    ):
        try:
            out.append(Manifest.read(p))
        except (ValueError, OSError):
            continue
    return out


def load_summary(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The last ``summary.json`` of the run, if any."""
    p = cfg.run_dir / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None
