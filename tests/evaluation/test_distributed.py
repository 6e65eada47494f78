"""Rank-sharded encoding under a real ``torchrun`` with 2 gloo processes: every rank gets the full, ordered
embeddings, and evaluating inside DDP gives the single-process metrics on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from st_workflow.evaluation import BenchmarkIREvaluator, encode_sharded, load_local
    from st_workflow.models import load_model

    model_dir, bench_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = load_model(model_dir, device="cpu")
    texts = json.loads((out / "texts.json").read_text())
    emb = encode_sharded(model, texts, kind="document", batch_size=4)
    torch.save(emb, out / f"emb{rank}.pt")
    bench = load_local(bench_dir, name="mini")
    metrics = BenchmarkIREvaluator(bench, ks=[1, 10], name="mini", precisions=["binary"])(model)
    (out / f"metrics{rank}.json").write_text(json.dumps(metrics))
    dist.destroy_process_group()
    """
)


def test_encode_sharded_and_evaluation_under_torchrun(
    tiny_model_path: Path, mini_beir: Path, tmp_path: Path
) -> None:
    from st_workflow.evaluation import BenchmarkIREvaluator, load_local
    from st_workflow.models import load_model

    texts = load_local(mini_beir, name="m").subsets[0].texts[:11]  # 11 texts: shards of 6 and 5
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = tmp_path / "ddp_eval.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tiny_model_path),
            str(mini_beir),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    model = load_model(str(tiny_model_path), device="cpu")
    single = model.encode_document(texts, batch_size=4, convert_to_tensor=True).float()
    e0, e1 = torch.load(tmp_path / "emb0.pt"), torch.load(tmp_path / "emb1.pt")
    assert torch.equal(e0, e1)
    assert e0.shape == single.shape
    assert torch.allclose(e0, single, atol=1e-5)

    m0 = json.loads((tmp_path / "metrics0.json").read_text())
    m1 = json.loads((tmp_path / "metrics1.json").read_text())
    assert m0 == m1
    expected = BenchmarkIREvaluator(
        load_local(mini_beir, name="mini"), ks=[1, 10], name="mini", precisions=["binary"]
    )(model)
    assert set(m0) == set(expected)
    for k, v in expected.items():
        assert m0[k] == pytest.approx(v, abs=1e-6), k
    assert "mini_ndcg@10" in m0 and "mini_binary/ndcg@10" in m0


def test_multi_process_pool_encoding_matches_single_process(tiny_model_path: Path, mini_beir: Path) -> None:
    """Several devices (here two CPU workers, as two GPUs would be) encode through one reused process pool."""
    from st_workflow.evaluation import Encoder, load_local
    from st_workflow.models import load_model

    texts = load_local(mini_beir, name="m").subsets[0].texts[:24]
    model = load_model(str(tiny_model_path), device="cpu")
    single = Encoder(model, batch_size=8).encode(texts, "document")
    with Encoder(model, batch_size=8, devices=["cpu", "cpu"]) as enc:
        pooled = enc.encode(texts, "document")
        again = enc.encode(texts[:5], "query")
        assert enc._pool is not None  # started once, reused
    assert enc._pool is None
    assert pooled.shape == single.shape and torch.allclose(pooled, single, atol=1e-5)
    assert torch.allclose(again, single[:5], atol=1e-5)
