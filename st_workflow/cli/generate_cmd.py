"""``st-workflow generate`` and ``st-workflow filter``: the LLM stages on ingest output directories, without Prefect.

``DIR`` arguments of ``--docs`` are ingest outputs (``documents.parquet`` + ``manifest.json``). The endpoint and model
come from ``--config``/``--set`` or ``--base-url``/``--model``; the API key only from the environment (the variable
named by ``generation.endpoint.api_key.env``, ``OPENAI_API_KEY`` by default, or ``--api-key-env``). Answers are cached
under the config's ``cache_dir`` (``--cache-dir``), so re-running a command after an interruption or a budget stop
pays only for the documents not yet done.

Examples::

    st-workflow filter   --docs runs/demo/ingest/arxiv --out out/judged --base-url http://localhost:11434/v1 \\
                         --model qwen3:4b
    st-workflow generate --docs runs/demo/ingest/arxiv --docs runs/demo/ingest/cmr --out out/pairs \\
                         --config configs/indus-sde-st.yaml --set generation.execution.budget_usd=5

``filter`` writes the judgements into ``--out``. ``generate`` writes the gated pairs (``pairs.parquet``,
``summary.json``, ``manifest.json``) into ``--out`` and the intermediate stages into ``--out/llm-filter`` and
``--out/llm-pairs``. Exit status: 0 done, 2 configuration error (e.g. no endpoint), 3 the endpoint refused the
requests (bad key or model), 4 finished incomplete (failures or budget; run again to continue).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from st_workflow.config import ConfigError, PipelineConfig, load_config
from st_workflow.manifest import Manifest
from st_workflow.runtime import apply_config_env


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--docs",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="ingest output directory with documents.parquet + manifest.json (repeatable)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument("--config", metavar="CONFIG", help="YAML config (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set generation.execution.concurrency=32 (repeatable)",
    )
    p.add_argument(
        "--base-url", help="OpenAI-compatible endpoint (OpenAI, vLLM, Ollama), e.g. https://api.openai.com/v1"
    )
    p.add_argument("--model", help="model name sent to the endpoint")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    p.add_argument("--cache-dir", type=Path, help="shared answer cache (default: the config's cache_dir)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _config(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if args.base_url:
        overrides.append(f"generation.endpoint.base_url={args.base_url}")
    if args.model:
        overrides.append(f"generation.endpoint.model={args.model}")
    if args.api_key_env:
        overrides.append(f"generation.endpoint.api_key.env={args.api_key_env}")
    if args.cache_dir:
        overrides.append(f"cache_dir={args.cache_dir.resolve()}")
    cfg = load_config(args.config, overrides)
    apply_config_env(cfg)
    return cfg


def _docs(args: argparse.Namespace) -> list[Manifest]:
    out = []
    for d in args.docs:
        if not (d / "manifest.json").is_file():
            raise ConfigError(f"--docs {d}: no manifest.json there (expected an ingest output directory)")
        out.append(Manifest.read(d))
    return out


def _run(args: argparse.Namespace, what: str) -> int:
    from st_workflow.stage2_generation import (
        EndpointFatalError,
        llm_skip_reason,
        run_gates,
        run_generation,
        run_relevancy_filter,
    )

    cfg = _config(args)
    if (reason := llm_skip_reason(cfg)) is not None:
        print(f"error: {reason}; or pass --base-url", file=sys.stderr)
        return 2
    docs = _docs(args)
    out: Path = args.out
    try:
        if what == "filter":
            m = run_relevancy_filter(cfg, docs, out_dir=out)
            if m is None:
                print(
                    "error: the relevancy filter is disabled (generation.filter.enabled=false)",
                    file=sys.stderr,
                )
                return 2
            result = {"stage": m.stage, "directory": m.directory, "counts": m.counts, "metrics": m.metrics}
            complete = bool(m.metrics.get("complete"))
        else:
            fm = run_relevancy_filter(cfg, docs, out_dir=out / "llm-filter")
            gm = run_generation(cfg, docs, fm, out_dir=out / "llm-pairs")
            if gm is None:
                print("error: generation is disabled (generation.pairs.enabled=false)", file=sys.stderr)
                return 2
            bench = list(getattr(args, "benchmark", None) or [])
            m = run_gates(cfg, gm, docs, bench, filter_manifest=fm, out_dir=out)
            result = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            complete = bool(result.get("complete"))
    except EndpointFatalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=2))
    elif what == "filter":
        c = m.counts
        print(
            f"judged {c['judged']} of {c['documents']} documents: kept {c['kept']}, rejected {c['rejected']}, "
            f"failed {c['failed']}, skipped (budget) {c['skipped_budget']}; cost ${m.metrics['cost_usd']:.4f}"
        )
        print(f"judgements: {Path(m.directory) / 'judgements.parquet'}")
    else:
        p, c = result["pairs"], result["cost_usd"]
        gates = ", ".join(f"{g['gate']} -{g['dropped']}" for g in p["gates"])
        print(
            f"pairs kept {p['kept']} of {p['generated']} generated ({gates}); "
            f"cost ${c['total']:.4f} (${c['per_kept_pair']} per kept pair)"
        )
        print(f"pairs: {out / 'pairs.parquet'}")
    if not complete:
        print(
            "incomplete: some documents failed or the budget was reached; run the same command again to continue",
            file=sys.stderr,
        )
        return 4
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="generate question/context pairs and search terms with an LLM (filter, generate, gates)",
        description="Judge, generate and gate synthetic pairs for ingest outputs. "
        + (__doc__ or "").split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(g)
    g.add_argument(
        "--benchmark",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="BEIR-layout benchmark whose queries and corpus must not leak into the pairs (repeatable)",
    )
    g.set_defaults(func=lambda a: _run(a, "generate"))
    f = sub.add_parser(
        "filter",
        help="judge documents' fitness for grounded QA with an LLM (relevancy filter)",
        description="Judge each document with the Pydantic-AI relevancy agent.",
    )
    _add_common(f)
    f.set_defaults(func=lambda a: _run(a, "filter"))
