"""Benchmark: LLM stage throughput against a local OpenAI-compatible server with a fixed latency.

Goal (issue 4): with latency L and concurrency C, 2,000 documents reach at least 0.9 x C / L documents per second,
i.e. the sliding window keeps C calls in flight and our client-side work (Instructor parsing, validation, cache
writes, Parquet shards) is not the bottleneck. The server runs as a separate process, as an endpoint would.

    python benchmarks/llm_throughput.py                         # L = 1 s, C = 16 and 64, 2,000 documents
    python benchmarks/llm_throughput.py --latency 2 --concurrency 64 --append   # add rows to the same JSON
    python benchmarks/llm_throughput.py --latency 0.25 --concurrency 8 32 --docs 500 --out /tmp/x.json

The figure is documents / engine time (from the first call to the last answer stored); the stage's wall time
(loading, consolidating shards, manifest) is reported beside it. Every run starts from an empty answer cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import machine, write_report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from st_workflow.config import load_config  # noqa: E402
from st_workflow.manifest import Manifest  # noqa: E402
from st_workflow.testing.documents import write_documents  # noqa: E402

_TOPICS = [
    ("sea surface temperature", "MODIS", "Aqua"),
    ("river discharge", "SWOT", "KaRIn"),
    ("aerosol optical depth", "MISR", "Terra"),
    ("soil moisture", "SMAP", "L-band radiometer"),
    ("ice sheet elevation", "ICESat-2", "ATLAS"),
    ("ozone column", "OMI", "Aura"),
    ("Martian dust storms", "Mars Reconnaissance Orbiter", "MCS"),
    ("solar wind protons", "Parker Solar Probe", "SWEAP"),
]


def synthetic_docs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct, paragraph-length science records (about 1,200 characters each)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        var, mission, inst = _TOPICS[i % len(_TOPICS)]
        year = 2000 + rng.randrange(25)
        res = rng.choice([250, 500, 1000, 4000, 9000])
        sents = [
            f"The {mission} {inst} record {i} provides {var} estimates at {res} m resolution since {year}.",
            f"Retrievals of {var} combine calibrated radiances with an atmospheric correction tuned for scene {i}.",
            f"Validation against in situ networks shows a bias below {rng.randint(2, 9)} percent for {var}.",
            f"The product is distributed in netCDF-4 with quality flags, uncertainty layers and granule metadata {i}.",
            f"Users combine {mission} {var} with reanalysis fields to study trends over {rng.randint(5, 20)} years.",
            f"Known limitations include cloud contamination and sparse coverage at high latitudes for record {i}.",
            f"Version {rng.randint(1, 7)}.{rng.randint(0, 9)} reprocessing improved the {inst} calibration drift.",
            f"Daily, monthly and climatological {var} aggregates are derived from the level 2 swath data {i}.",
        ]
        docs.append(
            {
                "id": f"bench-{i:05d}",
                "source": "arxiv",
                "title": f"{mission} {inst} {var} record {i}",
                "text": " ".join(sents),
            }
        )
    return docs


def start_server(latency: float, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "st_workflow.testing.openai_server",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--latency",
            str(latency),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the LLM server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


def run_one(
    work: Path,
    docs: list[Manifest],
    base_url: str,
    latency: float,
    c: int,
    n: int,
    mode: str,
    run_generation: Any,
) -> dict[str, Any]:
    """One stage run at concurrency ``c`` from an empty answer cache."""
    cfg = load_config(
        None,
        [
            f"runs_dir={work / 'runs'}",
            f"cache_dir={work / f'cache-{latency}-{c}'}",
            f"run_name=l{latency}-c{c}",
            f"generation.endpoint.base_url={base_url}",
            "generation.endpoint.api_key.env=ST_BENCH_NO_KEY",
            f"generation.execution.concurrency={c}",
            "generation.execution.prefect_concurrency_limit=null",
            "generation.execution.progress_every_s=30",
            "generation.filter.enabled=false",
            f"generation.pairs.mode={mode}",
        ],
    )
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    gm = run_generation(cfg, docs, None)
    wall = time.perf_counter() - t0
    assert gm is not None and gm.metrics["complete"], gm.counts if gm else None
    engine = json.loads((Path(gm.directory) / "run_stats.json").read_text())["engine"]
    rate = n / engine["elapsed_s"]
    return {
        "latency_s": latency,
        "concurrency": c,
        "documents": n,
        "engine_s": engine["elapsed_s"],
        "stage_wall_s": round(wall, 3),
        "docs_per_s": round(rate, 2),
        "ideal_docs_per_s": round(c / latency, 2),
        "target_docs_per_s": round(0.9 * c / latency, 2),
        "efficiency": round(rate / (c / latency), 3),
        "meets_target": rate >= 0.9 * c / latency,
        "generated": gm.counts["generated"],
        "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--latency", type=float, nargs="+", default=[1.0], help="values of the server latency L (s)"
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], help="values of C")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--mode", choices=["tools", "json"], default="tools")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "llm_throughput.json"))
    ap.add_argument(
        "--append", action="store_true", help="merge into --out (replacing rows with the same L and C)"
    )
    args = ap.parse_args()

    from st_workflow.stage2_generation import run_generation

    work = Path(tempfile.mkdtemp(prefix="st-llm-bench-"))
    docs = [write_documents(work / "ingest", synthetic_docs(args.docs), "bench")]
    results = []
    try:
        for latency in args.latency:
            proc, base_url = start_server(latency, work / f"server-{latency}")
            try:
                for c in args.concurrency:
                    results.append(
                        run_one(work, docs, base_url, latency, c, args.docs, args.mode, run_generation)
                    )
                    print(json.dumps(results[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    if args.append and out.is_file():
        done = {(r["latency_s"], r["concurrency"]) for r in results}
        old = json.loads(out.read_text())["results"]
        results = [r for r in old if (r["latency_s"], r["concurrency"]) not in done] + results
    results.sort(key=lambda r: (r["latency_s"], r["concurrency"]))
    report = {
        "benchmark": "llm_throughput",
        "goal": "docs_per_s >= 0.9 * C / L for 2,000 documents",
        "command": "python benchmarks/llm_throughput.py " + " ".join(sys.argv[1:]),
        "mode": args.mode,
        "machine": machine(),
        "results": results,
    }
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
