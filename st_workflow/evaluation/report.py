"""Comparison report of a run's checkpoints, the base model and named baselines: markdown + PNG plots.

Written from the eval manifest alone (no re-evaluation): per-benchmark tables with the delta against the base,
a mean-rank summary, a precision table (metric, retention vs float32, index bytes per document), ``metric vs
checkpoint`` curves per benchmark with baselines as reference lines, and precision-retention bars. When a W&B run
is active the tables and images are logged to it too.

Example::

    paths = write_comparison_report(cfg, eval_manifest, cfg.stage_dir("eval") / "report")
    paths["table"].read_text()   # markdown; paths["checkpoints"], paths["retention"]: PNGs
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.evaluation.promotion import average_ranks
from st_workflow.manifest import Manifest

logger = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def model_kind(name: str, baselines: set[str]) -> str:
    """``base``, ``checkpoint``, ``final``, ``interpolation`` or ``baseline`` (how a model is drawn and ordered)."""
    if name == "base":
        return "base"
    if _CKPT.match(name):
        return "checkpoint"
    if name in baselines:
        return "baseline"
    if name.startswith("interp-"):
        return "interpolation"
    return "final"


def order_models(names: list[str], baselines: set[str]) -> list[str]:
    """Base first, checkpoints by step, then the final model(s), interpolations by ratio, then baselines.

    Example:
        >>> order_models(["interp-0.75", "fine_tuned", "checkpoint-20", "base", "interp-0.25"], set())
        ['base', 'checkpoint-20', 'fine_tuned', 'interp-0.25', 'interp-0.75']
    """
    groups: dict[str, list[str]] = {
        k: [] for k in ("base", "checkpoint", "final", "interpolation", "baseline")
    }
    for n in dict.fromkeys(names):
        groups[model_kind(n, baselines)].append(n)
    groups["checkpoint"].sort(key=lambda n: int(_CKPT.match(n).group(1)))  # type: ignore[union-attr]
    groups["interpolation"].sort()
    return [
        *groups["base"],
        *groups["checkpoint"],
        *groups["final"],
        *groups["interpolation"],
        *groups["baseline"],
    ]


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _benchmarks(cfg: PipelineConfig, metrics: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    seen = {b for per in metrics.values() for b in per}
    configured = [b.name for b in cfg.evaluation.benchmarks if b.name in seen]
    return configured + sorted(seen - set(configured))


def _precisions(metrics: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    found = {k.split("/", 1)[0] for per in metrics.values() for vals in per.values() for k in vals}
    return ["float32", *[p for p in ("int8", "binary", "binary_rescore") if p in found]]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _plot_checkpoints(
    path: Path,
    models: list[str],
    benches: list[str],
    metrics: dict[str, dict[str, dict[str, float]]],
    plot_metrics: list[str],
    baselines: set[str],
    promoted: str | None,
) -> Path:
    run_models = [m for m in models if model_kind(m, baselines) != "baseline"]
    ref_models = [m for m in models if model_kind(m, baselines) == "baseline"]
    cols = min(3, len(benches))
    rows = -(-len(benches) // cols)
    fig = _new_figure(5.2 * cols, 3.6 * rows)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for i, bench in enumerate(benches):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs = list(range(len(run_models)))
        for j, metric in enumerate(plot_metrics):
            ys = [metrics.get(m, {}).get(bench, {}).get(metric) for m in run_models]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=colors[j % len(colors)], label=metric)
        main = plot_metrics[0]
        for j, ref in enumerate(ref_models):
            v = metrics.get(ref, {}).get(bench, {}).get(main)
            if v is not None:
                ax.axhline(v, linestyle="--", linewidth=1, color=f"C{(j + 5) % 10}", label=f"{ref} ({main})")
        if promoted in run_models:
            v = metrics.get(promoted, {}).get(bench, {}).get(main)
            if v is not None:
                ax.plot([run_models.index(promoted)], [v], marker="*", markersize=16, color="gold", zorder=5)
        ax.set_xticks(xs)
        ax.set_xticklabels([m.replace("checkpoint-", "ckpt-") for m in run_models], rotation=35, ha="right")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Metric vs checkpoint (dashed: baselines; star: promoted)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _plot_retention(
    path: Path,
    models: list[str],
    benches: list[str],
    metrics: dict[str, dict[str, dict[str, float]]],
    metric: str,
    precisions: list[str],
) -> Path:
    others = [p for p in precisions if p != "float32"]
    fig = _new_figure(max(6.0, 1.1 * len(models) * len(benches)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    labels: list[str] = []
    width = 0.8 / max(1, len(others))
    x = 0
    for bench in benches:
        for m in models:
            vals = metrics.get(m, {}).get(bench, {})
            for j, p in enumerate(others):
                r = vals.get(f"{p}/retention/{metric}")
                if r is not None:
                    ax.bar(x + j * width, r * 100, width=width, color=f"C{j}", label=p if x == 0 else None)
            labels.append(f"{m}\n{bench}")
            x += 1
    ax.axhline(100, color="grey", linewidth=1)
    shown = [
        v * 100
        for per in metrics.values()
        for vals in per.values()
        for k, v in vals.items()
        if k.endswith(f"/retention/{metric}")
    ]
    if shown:
        ax.set_ylim(max(0.0, min(shown) - 10), max(102.0, max(shown) + 2))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} retention vs float32 (%)")
    sizes = []
    for p in others:
        b = next((v.get(f"{p}/bytes_per_doc") for per in metrics.values() for v in per.values()), None)
        if b:
            sizes.append(f"{p}: {b:.0f} B/doc")
    f32 = next((v.get("bytes_per_doc") for per in metrics.values() for v in per.values()), None)
    ax.set_title(
        "Precision retention" + (f" (float32: {f32:.0f} B/doc; " + ", ".join(sizes) + ")" if f32 else "")
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def comparison_tables(
    cfg: PipelineConfig,
    metrics: dict[str, dict[str, dict[str, float]]],
    models: list[str],
    promoted: str | None = None,
) -> str:
    """The markdown body of the report."""
    ev = cfg.evaluation
    baselines = {b.name for b in ev.baselines}
    general = {b.name for b in ev.benchmarks if b.general}
    benches = _benchmarks(cfg, metrics)
    shown = list(dict.fromkeys([ev.promotion.metric, *ev.primary_metrics]))
    lines = [f"# Checkpoint comparison — run `{cfg.run_name}`", ""]
    if promoted:
        lines += [f"Promoted: **{promoted}** (★; see `promotion.json` for the reasons).", ""]
    for bench in benches:
        lines += [f"## {bench}" + (" (general)" if bench in general else ""), ""]
        header = ["model", "kind", *shown, f"Δ {shown[0]} vs base"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base_v = metrics.get("base", {}).get(bench, {}).get(shown[0])
        for m in models:
            vals = metrics.get(m, {}).get(bench)
            if vals is None:
                continue
            v0 = vals.get(shown[0])
            delta = f"{v0 - base_v:+.4f}" if v0 is not None and base_v is not None and m != "base" else ""
            name = f"{m} ★" if m == promoted else m
            cells = [name, model_kind(m, baselines), *[_fmt(vals.get(k)) for k in shown], delta]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    key = ev.promotion.metric
    ranked = [m for m in models if all(key in metrics.get(m, {}).get(b, {}) for b in benches)]
    if len(benches) > 1 and ranked:
        ranks = {b: average_ranks({m: metrics[m][b][key] for m in ranked}) for b in benches}
        lines += [f"## Mean rank by {key} across benchmarks", ""]
        lines += ["| model | " + " | ".join(benches) + " | mean rank |", "|" + "---|" * (len(benches) + 2)]
        for m in sorted(ranked, key=lambda m: sum(ranks[b][m] for b in benches)):
            mean_rank = sum(ranks[b][m] for b in benches) / len(benches)
            cells = [f"{ranks[b][m]:g} ({metrics[m][b][key]:.4f})" for b in benches]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean_rank:.2f} |")
        lines.append("")
    precisions = _precisions(metrics)
    if len(precisions) > 1:
        chosen = promoted if promoted in metrics else next((m for m in models if m == "fine_tuned"), None)
        if chosen is not None:
            lines += precision_table(metrics[chosen], benches, key, precisions, chosen, ev.rescore)
            lines += multiplier_table(
                metrics[chosen], benches, key, ev.rescore_multiplier, chosen, ev.rescore
            )
        lines += [f"## Quantized retrieval ({key})", ""]
        lines += [
            "| model | benchmark | precision | " + key + " | retention | bytes/doc | search ms/query |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in models:
            for bench in benches:
                vals = metrics.get(m, {}).get(bench, {})
                for p in precisions:
                    cells = _precision_cells(vals, p, key, with_disk=False)
                    if cells is not None:
                        lines.append(f"| {m} | {bench} | {p} | {cells} |")
        lines.append("")
    return "\n".join(lines)


_PRECISION_LABEL = {
    "float32": "float32",
    "int8": "int8 (scalar)",
    "binary": "binary (Hamming)",
    "binary_rescore": "binary + rescore",
}


def precision_table(
    per_bench: dict[str, dict[str, float]],
    benches: list[str],
    key: str,
    precisions: list[str],
    model: str,
    rescore: str = "float",
) -> list[str]:
    """Markdown lines: the table a user chooses a precision by — metric, retention vs float32, index bytes per
    document (in memory; the int8 rescoring corpus on disk apart) and search latency per query, per benchmark."""
    lines = [
        f"## Choosing a precision — {model} ({key})",
        "",
        "Retention is the share of the float32 value kept. Bytes are per document of the in-memory index"
        + (
            "; binary + rescore also reads int8 vectors of its candidates from disk"
            if rescore == "int8"
            else ""
        )
        + ". Search ms/query: exact top-k over this benchmark's corpus on this machine, query encoding excluded.",
        "",
        "| benchmark | precision | " + key + " | retention | bytes/doc | search ms/query |",
        "|---|---|---|---|---|---|",
    ]
    for bench in benches:
        vals = per_bench.get(bench, {})
        for p in precisions:
            cells = _precision_cells(vals, p, key, with_disk=True)
            if cells is not None:
                lines.append(f"| {bench} | {_PRECISION_LABEL.get(p, p)} | {cells} |")
    return [*lines, ""]


def _precision_cells(vals: dict[str, float], p: str, key: str, with_disk: bool) -> str | None:
    """``metric | retention | bytes/doc | ms/query`` of precision ``p`` (None when it was not scored);
    ``with_disk`` adds the int8 rescoring corpus read from disk to the bytes."""
    pre = "" if p == "float32" else f"{p}/"
    if pre + key not in vals:
        return None
    ret = "100.0%" if p == "float32" else f"{vals.get(f'{p}/retention/{key}', 0) * 100:.1f}%"
    size = vals.get(pre + "bytes_per_doc")
    disk = vals.get(pre + "rescore_bytes_per_doc") if with_disk else None
    size_s = "–" if size is None else f"{size:.1f}" + (f" (+{disk:.0f} on disk)" if disk else "")
    ms = vals.get(pre + "query_ms")
    return f"{vals[pre + key]:.4f} | {ret} | {size_s} | " + ("–" if ms is None else f"{ms:.3f}")


def multiplier_table(
    per_bench: dict[str, dict[str, float]],
    benches: list[str],
    key: str,
    rescore_multiplier: int,
    model: str,
    rescore: str = "float",
) -> list[str]:
    """Markdown lines: binary + rescore retention against the rescore multiplier (``binary_rescore@<m>`` keys and
    the configured ``binary_rescore``), with plain binary as multiplier 1's floor; empty without a sweep."""
    mults: dict[int, str] = {}
    for vals in per_bench.values():
        for k in vals:
            name, _, rest = k.partition("/")
            if name.startswith("binary_rescore@") and rest == key:
                mults[int(name.split("@", 1)[1])] = name
    if not mults:
        return []
    if any("binary_rescore/" + key in per_bench.get(b, {}) for b in benches):
        mults[rescore_multiplier] = "binary_rescore"
    order = sorted(mults)
    lines = [
        f"## Binary + rescore: {key} retention against the multiplier — {model}",
        "",
        f"Candidates = multiplier x k by Hamming, re-ranked against the {'int8 corpus' if rescore == 'int8' else '±1 codes'}"
        f" with the float query; the configured multiplier is {rescore_multiplier}.",
        "",
        "| benchmark | binary | " + " | ".join(f"x{m}" for m in order) + " |",
        "|---|---|" + "---|" * len(order),
    ]
    for bench in benches:
        vals = per_bench.get(bench, {})
        if key not in vals:
            continue
        binary = vals.get(f"binary/retention/{key}")
        cells = [
            f"{vals[f'{mults[m]}/retention/{key}'] * 100:.1f}%"
            if f"{mults[m]}/retention/{key}" in vals
            else "–"
            for m in order
        ]
        lines.append(
            f"| {bench} | {'–' if binary is None else f'{binary * 100:.1f}%'} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def _publish_wandb(paths: dict[str, Path], rows: list[dict[str, Any]]) -> bool:
    """Log the report to the active W&B run, if any (never imports wandb just to find out there is none)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c not in ("model", "benchmark"), c))
    payload: dict[str, Any] = {
        "eval/comparison": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    }
    for role, p in paths.items():
        if p.suffix == ".png":
            payload[f"eval/{role}"] = wandb.Image(str(p))
    wandb.run.log(payload)
    return True


def write_comparison_report(
    cfg: PipelineConfig,
    eval_manifest: Manifest,
    out_dir: Path,
    *,
    models_order: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.json``, ``checkpoints.png`` and (several precisions)
    ``retention.png`` into ``out_dir``; returns their paths by role (``table``, ``data``, ``checkpoints``,
    ``retention``). Logs them to W&B when a run is active.
    """
    ev = cfg.evaluation
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {m: v for m, v in eval_manifest.metrics.items() if isinstance(v, dict)}
    baselines = {b.name for b in ev.baselines}
    models = order_models([m for m in (models_order or list(metrics)) if m in metrics], baselines)
    promoted = None
    promo = cfg.stage_dir("eval") / "promotion.json"
    if promo.is_file():
        try:
            promoted = json.loads(promo.read_text(encoding="utf-8")).get("promoted")
        except (OSError, ValueError):
            promoted = None
    benches = _benchmarks(cfg, metrics)
    paths: dict[str, Path] = {}
    paths["table"] = atomic.write_text(
        out_dir / "comparison.md", comparison_tables(cfg, metrics, models, promoted) + "\n"
    )
    rows = [
        {"model": m, "benchmark": b, "kind": model_kind(m, baselines), **metrics[m][b]}
        for m in models
        for b in benches
        if b in metrics[m]
    ]
    paths["data"] = atomic.write_json(out_dir / "comparison.json", {"models": models, "rows": rows})
    if benches and models:
        plot_metrics = list(dict.fromkeys([ev.promotion.metric, *ev.primary_metrics]))[:4]
        with atomic.atomic_path(out_dir / "checkpoints.png") as tmp:
            _plot_checkpoints(tmp, models, benches, metrics, plot_metrics, baselines, promoted)
        paths["checkpoints"] = out_dir / "checkpoints.png"
        precisions = _precisions(metrics)
        if len(precisions) > 1:
            with atomic.atomic_path(out_dir / "retention.png") as tmp:
                _plot_retention(tmp, models, benches, metrics, ev.promotion.metric, precisions)
            paths["retention"] = out_dir / "retention.png"
    if _publish_wandb(paths, rows):
        logger.info("comparison report logged to W&B")
    return paths
