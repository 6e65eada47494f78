"""Helpers of the training tests: real pairs from the bundled samples, tiny configs, process scans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from st_workflow.config import PipelineConfig, load_config
from st_workflow.manifest import Manifest
from st_workflow.schemas import PAIR_SCHEMA, normalize_whitespace

TINY = "tiny-bert:hidden=32,layers=2,heads=2,vocab=2000,max_len=128"


def _natural_pair(title: str, positive: str, type_: str, source: str, doc_id: str) -> dict:
    return {
        "anchor": normalize_whitespace(title),
        "positive": normalize_whitespace(positive),
        "negative": None,
        "type": type_,
        "source": source,
        "synthesized": False,
        "doc_id": doc_id,
        "model": None,
        "prompt_version": None,
    }


def sample_pairs(samples_dir: Path, n_arxiv: int = 80, n_pds: int = 80) -> list[dict]:
    """Natural pairs from the real bundled records: arXiv title -> abstract, PDS title -> description."""
    rows: list[dict] = []
    with open(
        samples_dir / "arxiv" / "arxiv-browse.abs_converted.physics_astro.519.jsonl", encoding="utf-8"
    ) as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("title") and r.get("abstract"):
                rows.append(_natural_pair(r["title"], r["abstract"], "title-abstract", "arxiv", r["id"]))
            if len(rows) >= n_arxiv:
                break
    k = 0
    with open(
        samples_dir / "pds" / "context-pds4.product_context.1651.extracted.jsonl", encoding="utf-8"
    ) as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("title") and r.get("description") and k < n_pds:
                rows.append(
                    _natural_pair(r["title"], r["description"], "title-description", "pds", r["lidvid"])
                )
                k += 1
    return rows


def write_pairs_manifest(directory: Path, rows: list[dict]) -> Manifest:
    """A ``pairs`` stage manifest over a PAIR_SCHEMA Parquet (what the lead's pairs stage writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), directory / "pairs.parquet")
    m = Manifest.build(
        stage="pairs",
        directory=directory,
        files={"pairs": ("pairs.parquet", len(rows))},
        counts={"pairs": len(rows)},
        config_hash="test",
        code_version="test",
        cache_key="test",
    )
    m.write()
    return m


def tiny_config(
    tmp_path: Path, cache_dir: Path, run_name: str = "t", wandb_mode: str = "disabled", **training: object
) -> PipelineConfig:
    """A config training the tiny BERT for a few steps, everything under ``tmp_path``."""
    overrides = [
        f"run_name={run_name}",
        f"runs_dir={tmp_path / 'runs'}",
        f"cache_dir={cache_dir}",
        f"training.base_model={TINY}",
        "training.max_seq_length=48",
        "training.batch_size=8",
        "training.learning_rate=0.001",
        "training.max_steps=6",
        "training.logging_steps=1",
        "training.launch.kill_grace_s=5",
        f"wandb.mode={wandb_mode}",
    ]
    overrides += [
        f"training.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in training.items()
    ]
    return load_config(None, overrides)


def processes_mentioning(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``marker``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = (
                Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            )
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            out.append(int(name))
    return out
