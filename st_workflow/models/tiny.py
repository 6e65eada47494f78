"""A tiny random-weight BERT sentence-transformer, built deterministically on the fly.

Tests and ``configs/tiny.yaml`` need a model that trains in seconds on two CPU cores. The WordPiece vocabulary is
learnt from the bundled sample records (a fixed corpus, so the same vocab every time), the weights come from a seeded
initialisation, and the result is cached under ``<cache>/tiny-bert-<hash>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from st_workflow import atomic
from st_workflow.hashing import stable_hash
from st_workflow.resources import DATA_ROOT

_DEFAULTS = {"hidden": 64, "layers": 2, "heads": 2, "vocab": 3000, "max_len": 256, "seed": 0}


def parse_tiny_spec(spec: str) -> dict[str, int]:
    """Parse ``tiny-bert:hidden=64,layers=2`` into keyword arguments.

    Example:
        >>> parse_tiny_spec("tiny-bert:hidden=32,vocab=500")["hidden"]
        32
    """
    params = dict(_DEFAULTS)
    _, _, rest = spec.partition(":")
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in params:
            raise ValueError(f"tiny-bert spec {spec!r}: unknown parameter {key!r}; known: {sorted(params)}")
        params[key] = int(value)
    return params


def _vocab_corpus() -> list[str]:
    """Titles and texts of the bundled samples: a fixed corpus for a reproducible vocabulary."""
    texts: list[str] = []
    samples = DATA_ROOT / "samples"
    for f in sorted(samples.rglob("*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                texts.append(line[:2000])
    return texts


def build_tiny_bert(
    root: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    vocab: int = 3000,
    max_len: int = 256,
    seed: int = 0,
) -> Path:
    """Build (once) and return the directory of a tiny sentence-transformer (BERT -> mean pooling -> normalize)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    spec = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "vocab": vocab,
        "max_len": max_len,
        "seed": seed,
        "format": 1,
    }
    target = Path(root) / f"tiny-bert-{stable_hash(spec, 12)}"
    if (target / "modules.json").is_file():
        return target
    with atomic.atomic_dir(target) as tmp:
        hf_dir = tmp / "hf"
        hf_dir.mkdir()
        wp = BertWordPieceTokenizer(lowercase=True)
        wp.train_from_iterator(_vocab_corpus(), vocab_size=vocab, min_frequency=2, show_progress=False)
        wp.save_model(str(hf_dir))
        tok = BertTokenizerFast(
            vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=True, model_max_length=max_len
        )
        tok.save_pretrained(str(hf_dir))
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            max_position_embeddings=max_len,
        )
        BertModel(cfg).save_pretrained(str(hf_dir))
        transformer = Transformer(str(hf_dir), max_seq_length=max_len)
        model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), Normalize()], device="cpu")
        model.save(str(tmp / "st"))
        (tmp / "spec.json").write_text(json.dumps(spec))
        # The ST directory is the model; keep it at the top level, drop the intermediate HF export.
        shutil.rmtree(hf_dir)
        for p in (tmp / "st").iterdir():
            p.rename(tmp / p.name)
        (tmp / "st").rmdir()
    return target
