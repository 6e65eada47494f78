"""The model card: sentence-transformers' generated card plus a section on how this pipeline trained the model.

sentence-transformers writes ``README.md`` on ``model.save`` (base model, architecture, losses, hyper-parameters,
training logs). :func:`pipeline_section` adds what only the pipeline knows: every data source with its kind,
rows kept and dropped, weight, loss and replay flag, the sampling strategy, the schedule, the run's metrics and the
lineage of manifests back to the raw inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st_workflow import atomic

SECTION_TITLE = "## Training pipeline (st-workflow)"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def pipeline_section(
    *,
    run_name: str,
    description: str,
    sources: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any],
    lineage: list[dict[str, Any]],
    binary: bool,
    wandb_hint: str | None = None,
) -> str:
    """Markdown for the card (pure function: easy to test and to diff)."""
    lines = [SECTION_TITLE, ""]
    if description:
        lines += [description.strip(), ""]
    lines += [f"Run `{run_name}`.", ""]
    if binary:
        lines += [
            "This model outputs **binary (±1) embeddings** (binarization-aware training). Rank with Hamming "
            "distance on packed bits, or cosine similarity, which orders identically. Load it with "
            "`SentenceTransformer(path, trust_remote_code=True)` (its `Binarize` module lives in `st_workflow`).",
            "",
        ]
    lines += [
        "### Data sources",
        "",
        "| source | kind | rows | dropped | weight | batches/epoch | loss | replay |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for s in sources:
        dropped = sum((s.get("dropped") or {}).values())
        lines.append(
            f"| {s['name']} | {s.get('kind', '')} | {s.get('rows', '')} | {dropped} | {_fmt(s.get('weight', 1.0))} "
            f"| {s.get('batches_per_epoch', '')} | {s.get('loss', '')} | {'yes' if s.get('replay') else 'no'} |"
        )
    lines += ["", "### Hyper-parameters", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in hyperparameters.items()]
    if metrics:
        lines += ["", "### Training metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if isinstance(v, int | float | str)]
    if lineage:
        lines += ["", "### Lineage", "", "| stage | name | content hash |", "|---|---|---|"]
        lines += [
            f"| {r.get('stage', '')} | {r.get('name', '')} | `{str(r.get('content_hash', ''))[:16]}` |"
            for r in lineage
        ]
        lines += ["", "The full chain is in `lineage.json` next to this card."]
    if wandb_hint:
        lines += ["", f"Offline W&B data: upload with `{wandb_hint}`."]
    return "\n".join(lines) + "\n"


def append_section(model_dir: Path, section: str) -> Path:
    """Append (or replace) the pipeline section of ``README.md`` in ``model_dir``."""
    readme = Path(model_dir) / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if SECTION_TITLE in text:
        text = text[: text.index(SECTION_TITLE)].rstrip() + "\n"
    return atomic.write_text(readme, (text.rstrip() + "\n\n" if text else "") + section)
