"""The train stage end to end, with real subprocesses and real torchrun (gloo): the manifest and model, exact resume,
pre-tokenized = on-the-fly, DDP with two processes, cancellation and a killed caller leaving nothing behind, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from _train_helpers import TINY, processes_mentioning, tiny_config
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from st_workflow.beir import write_benchmark
from st_workflow.config import PipelineConfig
from st_workflow.manifest import Manifest
from st_workflow.training import TrainingCancelled, pretokenize_stage, train_stage
from st_workflow.training.binarization import load_binary_model

SECRET = "wandb-secret-value-never-logged-0123456789"
TWO_SOURCES = [
    {"name": "arxiv", "data": {"kind": "pipeline", "types": ["title-abstract"]}},
    {
        "name": "pds",
        "data": {"kind": "pipeline", "sources": ["pds"]},
        "weight": 2.0,
        "loss": {"type": "cached_mnrl", "mini_batch_size": 4},
    },
]


def _ref_config(
    root: Path, cache: Path, run_name: str, wandb_mode: str = "disabled", **extra: object
) -> PipelineConfig:
    cfg = tiny_config(
        root,
        cache,
        run_name=run_name,
        wandb_mode=wandb_mode,
        max_steps=8,
        sources=TWO_SOURCES,
        trace_batches=True,
        **{"checkpoints.save_steps": 4, "sampler.group_by_length": False, **extra},
    )
    return cfg


def _losses(result_file: Path) -> dict[int, float]:
    hist = json.loads(result_file.read_text())["log_history"]
    return {h["step"]: h["loss"] for h in hist if "loss" in h}


def _trace(train_dir: Path, rank: int = 0) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for line in (train_dir / "trace" / f"rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = [rec["source"], *rec["rows"]]
    return out


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, pairs_manifest: Manifest, test_cache_dir: Path):
    """One uninterrupted run: two sources with their own losses, checkpoints, trace, W&B offline."""
    root = tmp_path_factory.mktemp("ref")
    old = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = SECRET
    try:
        cfg = _ref_config(root, test_cache_dir, "ref", wandb_mode="offline")
        cfg.wandb.log_model = True
        lines: list[str] = []
        m = train_stage(cfg, pairs_manifest, None, log_sink=lines.append)
    finally:
        if old is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = old
    return cfg, m, lines


def test_manifest_model_card_lineage_and_reuse(reference, pairs_manifest: Manifest) -> None:
    cfg, m, lines = reference
    assert set(m.files) >= {"model", "checkpoints", "result", "trace"}
    assert m.counts["steps"] == 8 and m.metrics["global_step"] == 8
    assert sorted(p.name for p in m.path("checkpoints").glob("checkpoint-*")) == [
        "checkpoint-4",
        "checkpoint-8",
    ]
    model = SentenceTransformer(str(m.path("model")), device="cpu")
    assert model.encode(["sea ice"]).shape == (1, 32)
    card = (m.path("model") / "README.md").read_text()
    assert "## Training pipeline (st-workflow)" in card and "| pds | pipeline |" in card
    assert "CachedMultipleNegativesRankingLoss" in card and "MultipleNegativesRankingLoss" in card
    lineage = json.loads((m.path("model") / "lineage.json").read_text())
    assert {r["stage"] for r in lineage} >= {"pairs", "pretokenize"}
    assert any(r["content_hash"] == pairs_manifest.content_hash for r in lineage)
    assert any(line.startswith("step 8/8 loss") for line in lines)
    trace = _trace(Path(m.directory))
    assert {v[0] for v in trace.values()} == {"arxiv", "pds"}  # batches from both sources, one source each
    # Reused on a second call: no launch, same content.
    again: list[str] = []
    t0 = time.perf_counter()
    m2 = train_stage(cfg, pairs_manifest, None, log_sink=again.append)
    assert m2.content_hash == m.content_hash and not any("launching" in x for x in again)
    assert time.perf_counter() - t0 < 10


def test_wandb_offline_run_without_secrets(reference) -> None:
    cfg, m, _ = reference
    offline = list((cfg.run_dir / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(m.metrics["wandb_run_id"])
    assert m.metrics["wandb_sync"] == f"wandb sync {offline[0]}"
    assert m.metrics["wandb_artifact"].startswith(f"model-{m.metrics['wandb_run_id']}")
    for p in cfg.run_dir.rglob("*"):
        if p.is_file() and p.stat().st_size < 50_000_000:
            assert SECRET.encode() not in p.read_bytes(), p


def test_resume_reproduces_the_uninterrupted_run_exactly(
    reference, pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    _, ref, _ = reference
    cfg = _ref_config(tmp_path, test_cache_dir, "resume", wandb_mode="offline")
    train_dir = cfg.stage_dir("train")
    with pytest.raises(
        TrainingCancelled
    ):  # checkpoints live under the configuration's key: checkpoints/<key>/
        train_stage(
            cfg,
            pairs_manifest,
            None,
            should_cancel=lambda: any(train_dir.glob("checkpoints/*/checkpoint-4/.complete")),
        )
    (ckpt4,) = [p.parent for p in train_dir.glob("checkpoints/*/checkpoint-4/.complete")]
    assert processes_mentioning(str(train_dir / "job.json")) == []  # cancellation leaves no process behind
    assert not (train_dir / "model").exists() and not (train_dir / "manifest.json").exists()
    run_id = (train_dir / "wandb_run_id.txt").read_text()
    cfg.training.checkpoints.resume_from = str(ckpt4)
    lines: list[str] = []
    m = train_stage(cfg, pairs_manifest, None, log_sink=lines.append)
    assert any("resuming at step 4" in x for x in lines)
    assert m.metrics["resumed_from"] == str(ckpt4) and m.counts["steps"] == 8
    ref_losses, losses = _losses(ref.path("result")), _losses(m.path("result"))
    assert {s: losses[s] for s in range(5, 9)} == pytest.approx(
        {s: ref_losses[s] for s in range(5, 9)}, rel=1e-6
    )
    assert _trace(train_dir) == _trace(
        Path(ref.directory)
    )  # the same batches, in the same order, at the same steps
    a, b = _weights(ref.path("model")), _weights(m.path("model"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # The W&B run continues under the same id.
    assert m.metrics["wandb_run_id"] == run_id
    assert len(list((cfg.run_dir / "wandb" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_training_on_the_cache_equals_on_the_fly_tokenization(
    reference, pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    _, ref, _ = reference
    cfg = _ref_config(tmp_path, test_cache_dir, "otf", pretokenize=False, **{"checkpoints.save_steps": None})
    pretok = pretokenize_stage(cfg, pairs_manifest)
    assert pretok.metrics["mode"] == "text"
    m = train_stage(cfg, pairs_manifest, pretok)
    assert _losses(m.path("result")) == pytest.approx(_losses(ref.path("result")), rel=1e-5)
    a, b = _weights(ref.path("model")), _weights(m.path("model"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def _mnrl(model: SentenceTransformer, rows: list[dict]) -> float:
    loss = MultipleNegativesRankingLoss(model)
    model.eval()
    with torch.no_grad():
        vals = [
            loss(
                [
                    model.preprocess([r["anchor"] for r in rows[i : i + 16]]),
                    model.preprocess([r["positive"] for r in rows[i : i + 16]]),
                ],
                None,
            ).item()
            for i in range(0, len(rows), 16)
        ]
    return sum(vals) / len(vals)


def test_ddp_two_gloo_processes(
    pairs_manifest: Manifest, pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path
) -> None:
    bench = tmp_path / "mini-bench"
    held = pair_rows[70:110]
    write_benchmark(
        bench,
        corpus=[(f"d{i}", "", r["positive"]) for i, r in enumerate(held)],
        queries=[(f"q{i}", r["anchor"]) for i, r in enumerate(held)],
        qrels={"test": [(f"q{i}", f"d{i}", 1) for i in range(len(held))]},
    )
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="ddp",
        max_steps=8,
        trace_batches=True,
        learning_rate=0.003,
        sources=[*TWO_SOURCES[:1], {"name": "pds", "data": {"kind": "pipeline", "sources": ["pds"]}}],
        **{
            "launch.nproc_per_node": 2,
            "loss.gather_across_devices": True,
            "sampler.strategy": "proportional",
            "evaluation.steps": 4,
        },
    )
    lines: list[str] = []
    m = train_stage(cfg, pairs_manifest, None, log_sink=lines.append, eval_benchmarks={"mini": bench})
    assert m.metrics["world_size"] == 2 and m.metrics["global_batch_size"] == 16 and m.counts["steps"] == 8
    assert any(x.startswith("[rank 1] training") for x in lines)
    evals = [h for h in json.loads(m.path("result").read_text())["log_history"] if "eval_mini_ndcg@10" in h]
    assert [h["step"] for h in evals] == [4, 8]  # in-training retrieval evaluation, sharded over both ranks
    assert 0 < m.metrics["last_eval"]["eval_mini_ndcg@10"] <= 1
    r0, r1 = _trace(Path(m.directory), 0), _trace(Path(m.directory), 1)
    assert sorted(r0) == sorted(r1) == list(range(8))
    rows_by_source: dict[str, list[int]] = {}
    for step in r0:
        (s0, *b0), (s1, *b1) = r0[step], r1[step]
        assert s0 == s1  # same source and loss on both ranks at every step
        assert len(b0) == len(b1) == 8 and not set(b0) & set(b1)  # disjoint data
        rows_by_source.setdefault(s0, []).extend(b0 + b1)
    assert all(len(v) == len(set(v)) for v in rows_by_source.values())  # no row twice within the epoch
    base = SentenceTransformer(
        str(Path(json.loads((Path(m.directory) / "job.json").read_text())["model_path"])), device="cpu"
    )
    base.max_seq_length = tuned_len = cfg.training.max_seq_length
    tuned = SentenceTransformer(str(m.path("model")), device="cpu")
    tuned.max_seq_length = tuned_len
    assert _mnrl(tuned, pair_rows[:96]) < _mnrl(base, pair_rows[:96])  # the loss falls


def test_killed_caller_takes_torchrun_and_workers_with_it(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    cfg = tiny_config(
        tmp_path, test_cache_dir, run_name="orphans", max_steps=100000, **{"launch.nproc_per_node": 2}
    )
    pretokenize_stage(cfg, pairs_manifest)
    job = str(cfg.stage_dir("train") / "job.json")
    src = (
        "import sys\nfrom st_workflow.config import PipelineConfig\nfrom st_workflow.manifest import Manifest\n"
        "from st_workflow.training import train_stage\n"
        f"cfg = PipelineConfig.model_validate_json({cfg.model_dump_json()!r})\n"
        f"train_stage(cfg, Manifest.read({pairs_manifest.directory!r}), None, log_sink=lambda l: print(l, flush=True))\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = caller.stdout.readline()
            assert line, "the caller ended before training started"
            if line.startswith("[rank 0] step 2/"):
                break
        assert len(processes_mentioning(job)) >= 3  # torchrun agent + 2 workers
        caller.send_signal(signal.SIGKILL)
        caller.wait(timeout=10)
    finally:
        if caller.poll() is None:
            caller.kill()
    end = time.monotonic() + 30
    while time.monotonic() < end and processes_mentioning(job):
        time.sleep(0.25)
    assert processes_mentioning(job) == []


def test_cli_trains_a_bat_model_from_any_pairs_file(
    pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from st_workflow.cli import main

    conf = tmp_path / "c.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "run_name": "cli",
                "runs_dir": str(tmp_path / "runs"),
                "cache_dir": str(test_cache_dir),
                "training": {
                    "base_model": TINY,
                    "max_seq_length": 32,
                    "batch_size": 8,
                    "max_steps": 3,
                    "logging_steps": 1,
                },
                "wandb": {"mode": "disabled"},
            }
        )
    )
    assert main(["train", str(conf), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "no pairs dataset" in err and "st-workflow run --flow stage2-data" in err and "--pairs" in err
    pq.write_table(
        pa.Table.from_pylist([{"anchor": r["anchor"], "positive": r["positive"]} for r in pair_rows[:60]]),
        tmp_path / "mine.parquet",
    )
    rc = main(
        [
            "train",
            str(conf),
            "--pairs",
            str(tmp_path / "mine.parquet"),
            "--set",
            "training.binarization.enabled=true",
            "--set",
            "training.binarization.estimator=tanh",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "pairs: 60 rows" in out and "step 3/3 loss" in out
    model_dir = tmp_path / "runs" / "cli" / "train" / "model"
    codes = load_binary_model(model_dir, device="cpu").encode(["sea ice", "mars rover"])
    assert set(codes.ravel().tolist()) == {-1.0, 1.0}
    assert "binary (±1) embeddings" in (model_dir / "README.md").read_text()


def test_resuming_from_the_last_checkpoint_trains_no_further_step(
    reference, pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    """A run that died after its final checkpoint (before the model was saved) resumes to the same model, and
    does not train the extra step Hugging Face's loop would take (it checks for the end only after a step)."""
    _, ref, _ = reference
    (last,) = [p.parent for p in ref.path("checkpoints").glob("checkpoint-8/.complete")]
    cfg = _ref_config(tmp_path, test_cache_dir, "final")
    cfg.training.checkpoints.resume_from = str(last)
    lines: list[str] = []
    m = train_stage(cfg, pairs_manifest, None, log_sink=lines.append)
    assert m.metrics["global_step"] == 8 and m.counts["steps"] == 8
    assert any("nothing left to train" in x for x in lines)
    a, b = _weights(ref.path("model")), _weights(m.path("model"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
