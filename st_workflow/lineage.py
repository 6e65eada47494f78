"""Lineage: the full chain of manifests behind an artifact, written next to the final model as ``lineage.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st_workflow.manifest import Manifest


def collect_lineage(manifests: list[Manifest]) -> list[dict[str, Any]]:
    """Walk the manifests and, recursively, every upstream manifest they reference (each listed once).

    Upstream manifests are read from disk; one that has since disappeared is listed with ``"missing": true`` so the
    record stays honest instead of failing the run.
    """
    seen: dict[str, dict[str, Any]] = {}
    stack = list(manifests)
    while stack:
        m = stack.pop()
        key = str(m.manifest_path)
        if key in seen:
            continue
        seen[key] = {
            "stage": m.stage,
            "name": m.name,
            "manifest": key,
            "content_hash": m.content_hash,
            "cache_key": m.cache_key,
            "config_hash": m.config_hash,
            "code_version": m.code_version,
            "counts": m.counts,
            "files": {role: {"path": str(m.path(role)), "sha256": f.sha256} for role, f in m.files.items()},
            "upstream": [u.path for u in m.upstream],
        }
        for ref in m.upstream:
            if ref.path in seen:
                continue
            if Path(ref.path).is_file():
                stack.append(Manifest.read(ref.path))
            else:
                seen[ref.path] = {
                    "stage": ref.stage,
                    "name": ref.name,
                    "manifest": ref.path,
                    "content_hash": ref.content_hash,
                    "missing": True,
                }
    order = {
        "ingest": 0,
        "benchmark": 1,
        "pairs-natural": 2,
        "llm-filter": 3,
        "llm-pairs": 4,
        "llm-gates": 5,
        "pairs": 6,
        "pretokenize": 7,
        "train": 8,
        "eval": 9,
    }
    return sorted(seen.values(), key=lambda r: (order.get(r["stage"], 99), r["name"], r["manifest"]))
