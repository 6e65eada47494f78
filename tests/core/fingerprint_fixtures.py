"""Fixed fixtures whose fingerprints ``test_fingerprints`` pins (a model directory, a BEIR benchmark, a module).

Every byte here is part of the pinned values: change nothing, or re-derive the values from the code of the
previous release (see the test module).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Files of the model directory: weights and configs, plus the training state and cards a weights hash ignores.
MODEL_FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": bytes(range(256)) * 4,
    "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"do_lower_case": true}',
    "vocab.txt": b"[PAD]\n[UNK]\nmars\ndust\n",
    "sentence_bert_config.json": b'{"max_seq_length": 64}',
    "optimizer.pt": b"optimizer state",
    "trainer_state.json": b'{"global_step": 3}',
    "README.md": b"# a model card\n",
    "lineage.json": b"{}",
    "rng_state.pth": b"rng",
    ".gitattributes": b"*.bin filter=lfs\n",
    "eval/results.json": b"{}",
}


def make_model_dir(root: Path) -> Path:
    """The model directory, with fixed mtimes (memoised hashes key on them, values do not)."""
    for rel, data in MODEL_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    return root


def make_benchmark_dir(root: Path) -> Path:
    """A BEIR benchmark: corpus, queries, two qrels files, and a manifest no benchmark hash may read."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": "d1", "title": "Mars", "text": "Dust storms on Mars."},
        {"_id": "d2", "text": "Comet tails."},
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "Mars dust?"}) + "\n", encoding="utf-8"
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t0\n", encoding="utf-8")
    (root / "manifest.json").write_text('{"created_at": "now"}', encoding="utf-8")
    return root


def make_module() -> Any:
    """A small torch module with fixed weights (no random initialisation involved)."""
    import torch

    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7)
        lin.bias.copy_(torch.tensor([0.5, -0.25]))
    return torch.nn.Sequential(lin, torch.nn.Tanh())


def hub_cache_ref(hub_cache: Path, repo_id: str, sha: str) -> None:
    """What a fetch leaves in the Hugging Face cache: ``refs/main`` naming the commit ``main`` resolved to."""
    ref = hub_cache / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(sha, encoding="utf-8")
