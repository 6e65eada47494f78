"""Eval dumps: one JSON per benchmark, keyed by model (or checkpoint) name, that accumulates a run's history.

Shape of ``<eval stage dir>/<benchmark>.json``::

    {"format": 1, "benchmark": {...identity, corpus hashes, qrels hashes...},
     "models": {"checkpoint-40": {"model": "<path or id>", "weights_hash": "...", "updated_at": "...",
                                  "results": {"<task>": {"float32": {"metrics": {"ndcg@10": ...}, "n_queries": 300,
                                                         "fingerprint": "...", "seconds": 0.4}}},
                                  "bytes_per_doc": {"float32": 1536.0}}},
     "history": {"fine_tuned": [<the entry it replaced when its weights changed>]}}

A (model x task x precision) result is reused whenever an entry anywhere in the dump has the same fingerprint
(weights hash, corpus, qrels, settings), so a renamed but identical checkpoint is not recomputed and a retrained
``fine_tuned`` is. Files are rewritten atomically after every finished result.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.evaluation.evaluator import TaskResult
from st_workflow.evaluation.metrics import IRResult, aggregate

DUMP_FORMAT = 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class EvalDump:
    """The dump of one benchmark (see the module docstring for its shape)."""

    def __init__(self, path: str | Path, data: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = data or {
            "format": DUMP_FORMAT,
            "benchmark": {},
            "models": {},
            "history": {},
        }
        self._by_fp: dict[str, dict[str, Any]] = {}
        for entry in self.data.get("models", {}).values():
            for per_p in entry.get("results", {}).values():
                for res in per_p.values():
                    self._by_fp[res["fingerprint"]] = res

    @classmethod
    def load(cls, path: str | Path) -> EvalDump:
        """Read a dump (an absent file is an empty dump).

        Raises:
            ValueError: naming the file when it is not a dump this code can read.
        """
        p = Path(path)
        if not p.is_file():
            return cls(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"eval dump {p} is not valid JSON ({e}); move it away to start a fresh dump"
            ) from e
        if not isinstance(data, dict) or data.get("format") != DUMP_FORMAT or "models" not in data:
            raise ValueError(f"eval dump {p} has an unknown format (expected format {DUMP_FORMAT})")
        data.setdefault("history", {})
        return cls(p, data)

    # ------------------------------------------------------------------ updates
    def set_benchmark(self, description: dict[str, Any]) -> None:
        self.data["benchmark"] = description

    def set_model(self, name: str, *, model: str, weights_hash: str) -> None:
        """Register ``name``; when its weights changed, the old entry moves to ``history``."""
        models = self.data["models"]
        old = models.get(name)
        if old is not None and old.get("weights_hash") != weights_hash:
            old = {**old, "replaced_at": _now()}
            self.data["history"].setdefault(name, []).append(old)
            old = None
        if old is None:
            models[name] = {
                "model": model,
                "weights_hash": weights_hash,
                "updated_at": _now(),
                "results": {},
                "bytes_per_doc": {},
            }
        else:
            old["model"] = model

    def drop_if_empty(self, name: str) -> None:
        """Forget ``name`` when it has no result (e.g. its model could not be loaded)."""
        entry = self.data["models"].get(name)
        if entry is not None and not any(entry.get("results", {}).values()):
            del self.data["models"][name]

    def find(self, fingerprint: str) -> dict[str, Any] | None:
        """A stored result with this fingerprint, under any model name."""
        return self._by_fp.get(fingerprint)

    def put(self, name: str, task: str, precision: str, result: TaskResult | Mapping[str, Any]) -> None:
        entry = self.data["models"][name]
        res = result.to_json() if isinstance(result, TaskResult) else dict(result)
        entry["results"].setdefault(task, {})[precision] = res
        entry["updated_at"] = _now()
        self._by_fp[res["fingerprint"]] = res

    def set_bytes(self, name: str, bytes_per_doc: Mapping[str, float]) -> None:
        self.data["models"][name]["bytes_per_doc"].update(bytes_per_doc)

    def save(self) -> Path:
        return atomic.write_json(self.path, self.data)

    # ------------------------------------------------------------------ views
    def results(self, name: str) -> dict[str, dict[str, dict[str, Any]]]:
        return self.data["models"].get(name, {}).get("results", {})

    def bytes_per_doc(self, name: str) -> dict[str, float]:
        return self.data["models"].get(name, {}).get("bytes_per_doc", {})


def summarize(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    tasks: Iterable[str] | None = None,
    precisions: Iterable[str] = ("float32",),
    detail_metrics: Iterable[str] = ("ndcg@10", "mrr@10", "recall@10"),
    bytes_per_doc: Mapping[str, float] | None = None,
    validation_tasks: Iterable[str] = (),
    task_keys: bool = True,
) -> dict[str, float]:
    """Flat ``{metric: value}`` of one model on one benchmark (the eval manifest's leaves).

    Keys, for float32 (no prefix) and every other precision ``p`` (prefix ``p/``), over ``tasks`` (the headline
    tasks: test splits):

    * ``ndcg@10`` ...: every metric, mean over tasks (qrels files / sub-benchmarks);
    * ``weighted/ndcg@10``: query-weighted mean, and ``<task>/ndcg@10``: per task, for ``detail_metrics``;
    * ``p/retention/ndcg@10``: ``p``'s value / float32's, for ``detail_metrics``;
    * ``bytes_per_doc``, ``p/bytes_per_doc``: index size; ``n_queries``: judged queries evaluated.

    The same keys over ``validation_tasks`` (what choices are made on) carry the prefix ``validation/``.

    Example:
        >>> r = {"test": {"float32": {"metrics": {"ndcg@10": 0.5}, "n_queries": 4}},
        ...      "validation": {"float32": {"metrics": {"ndcg@10": 0.7}, "n_queries": 2}}}
        >>> flat = summarize(r, tasks=["test"], validation_tasks=["validation"])
        >>> flat["ndcg@10"], flat["validation/ndcg@10"]
        (0.5, 0.7)
    """
    detail = list(dict.fromkeys(detail_metrics))
    val = list(validation_tasks)
    flat: dict[str, float] = {}
    if val:
        sub = summarize(
            results, tasks=val, precisions=precisions, detail_metrics=detail, task_keys=len(val) > 1
        )
        flat |= {f"validation/{k}": v for k, v in sub.items() if "bytes_per_doc" not in k}
    task_ids = (
        [t for t in tasks if t not in val] if tasks is not None else [t for t in results if t not in val]
    )
    base_mean: dict[str, float] = {}
    for p in precisions:
        per_task = {
            t: IRResult(results[t][p]["metrics"], results[t][p]["n_queries"])
            for t in task_ids
            if p in results.get(t, {})
        }
        if not per_task:
            continue
        agg = aggregate(per_task)
        prefix = "" if p == "float32" else f"{p}/"
        for m, v in agg["mean"].items():
            flat[prefix + m] = v
        for m in detail:
            if m in agg["weighted"]:
                flat[f"{prefix}weighted/{m}"] = agg["weighted"][m]
            for t, r in per_task.items() if task_keys else ():
                if m in r.metrics:
                    flat[f"{prefix}{t}/{m}"] = r.metrics[m]
        if p == "float32":
            base_mean = agg["mean"]
            flat["n_queries"] = float(sum(r.n_queries for r in per_task.values()))
        else:
            for m in detail:
                ref = base_mean.get(m)
                if ref and m in agg["mean"]:
                    flat[f"{p}/retention/{m}"] = agg["mean"][m] / ref
        sizes = [results[t][p].get("bytes_per_doc") for t in per_task]
        sizes = [float(b) for b in sizes if b is not None]
        if sizes:
            flat[prefix + "bytes_per_doc"] = math.fsum(sizes) / len(sizes)
        elif bytes_per_doc and p in bytes_per_doc:
            flat[prefix + "bytes_per_doc"] = float(bytes_per_doc[p])
    return {k: v for k, v in flat.items() if not (isinstance(v, float) and math.isnan(v))}
