"""The run report: ``<run>/report.md``, ``<run>/summary.json`` and a PNG chart.

The report is what a user opens after ``make demo``: the base vs fine-tuned comparison on every benchmark, what each
stage did (ran or reused, seconds, counts) and where every artifact is. ``summary.json`` is the machine-readable core:

    {"wall_seconds": 412.3, "models": {"base": {"in-domain": {"ndcg@10": 0.61, ...}}, "fine_tuned": {...}}, ...}
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


def delta_table(metrics: dict[str, dict[str, dict[str, float]]], primary: list[str], a: str, b: str) -> str:
    """Markdown table of ``b - a`` per benchmark and metric (e.g. fine-tuned minus base)."""
    if a not in metrics or b not in metrics:
        return ""
    rows = ["| Benchmark | " + " | ".join(f"Δ {k}" for k in primary) + " |", "|---|" + "---:|" * len(primary)]
    for bench in sorted(set(metrics[a]) & set(metrics[b])):
        cells = []
        for k in primary:
            va, vb = metrics[a][bench].get(k), metrics[b][bench].get(k)
            cells.append(
                f"{vb - va:+.4f}" if isinstance(va, int | float) and isinstance(vb, int | float) else ""
            )
        rows.append(f"| {bench} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_metrics(
    metrics: dict[str, dict[str, dict[str, float]]],
    primary: list[str],
    path: Path,
    models: list[str] | None = None,
) -> Path | None:
    """Grouped bar chart (metric x benchmark groups, one bar per model) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in (models or list(metrics)) if m in metrics]
    groups = sorted({(b, k) for m in models for b in metrics[m] for k in primary if k in metrics[m][b]})
    if not models or not groups:
        return None
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.0), dpi=110)
    for i, model in enumerate(models):
        xs = [g + i * width for g in range(len(groups))]
        ys = [metrics[model].get(b, {}).get(k, 0.0) for b, k in groups]
        bars = ax.bar(xs, ys, width=width, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks([g + width * (len(models) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{k}\n{b}" for b, k in groups], fontsize=8)
    ax.set_ylim(
        0, min(1.05, max(0.1, max(metrics[m].get(b, {}).get(k, 0) for m in models for b, k in groups) * 1.2))
    )
    ax.set_ylabel("score")
    ax.set_title("Retrieval quality by model")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _stage_rows(stages: list[StageRecord]) -> str:
    rows = ["| Stage | Status | Seconds | Counts | Note |", "|---|---|---:|---|---|"]
    for s in stages:
        counts = ", ".join(f"{k}={v}" for k, v in list(s.counts.items())[:8])
        secs = f"{s.seconds:.1f}" if s.seconds is not None else ""
        rows.append(f"| {s.stage} | {s.status} | {secs} | {counts} | {s.note} |")
    return "\n".join(rows)


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
    order = [m for m in ("base", "fine_tuned") if m in metrics] + [
        m for m in metrics if m not in ("base", "fine_tuned")
    ]
    chart = plot_metrics(metrics, primary, run_dir / "report_metrics.png", models=order)

    summary = {
        "run_name": cfg.run_name,
        "wall_seconds": round(wall_seconds, 2),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": {m: metrics[m] for m in order},
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
        "## Retrieval quality",
        "",
        metrics_table(metrics, primary, order) if metrics else "_No evaluation results._",
        "",
    ]
    delta = delta_table(metrics, primary, "base", "fine_tuned")
    if delta:
        lines += ["Fine-tuned minus base:", "", delta, ""]
    if chart:
        lines += [f"![metrics]({chart.name})", ""]
    if promotion:
        lines += [
            "## Promotion",
            "",
            f"Promoted: **{promotion.get('promoted')}** (`{promotion.get('path')}`)",
            "",
        ]
        lines += [f"- {r}" for r in promotion.get("reasons", [])] + [""]
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
