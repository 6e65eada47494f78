"""GPU check: one command, under five minutes, that exercises and measures the CUDA paths.

On a CUDA machine it

* trains ``all-MiniLM-L6-v2`` and a BERT-base-sized model (random weights: the hub is not needed, the speed is the
  same) for a fixed number of optimizer steps through the real train stage (pre-tokenized cache, our worker,
  bf16 autocast, SDPA attention), and reports samples/s and model FLOPs utilisation (MFU);
* encodes a corpus (the bundled CMR / PDS / arXiv texts) with each model under bf16 and reports sentences/s;
* runs the torchrun path on the GPUs present (NCCL over every GPU; on a single GPU, two ranks sharing it over gloo,
  which still exercises torchrun, DDP and the rank-0 save).

``--dry-run`` runs the same code on the CPU with a tiny BERT, two steps and a small corpus (the test suite runs
it), so the script is known to work before a GPU machine is lent.

    python benchmarks/gpu_check.py                     # on the GPU machine; writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json

MFU counts model FLOPs of the real (unpadded) tokens: per text of ``T`` tokens, ``T * (6 N + 12 L H T)`` for a
forward and backward pass (``N`` non-embedding parameters, ``L`` layers, ``H`` hidden size; the PaLM appendix
formula), two texts per pair, divided by the GPU's dense bf16 peak. Padding and the loss are overhead, as they
should be.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import machine, write_report  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 6000 Ada": 364.0,
    "A6000": 155.0,
    "4090": 165.0,
}

MODELS = {
    "minilm": {"id": "sentence-transformers/all-MiniLM-L6-v2"},
    "bert-base": {"tiny": {"hidden": 768, "layers": 12, "heads": 12, "vocab": 30522, "max_len": 512}},
}
DRY_MODELS = {"tiny": {"tiny": {"hidden": 64, "layers": 2, "heads": 2, "vocab": 2000, "max_len": 128}}}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (None when the table does not know it).

    Example:
        >>> peak_tflops("NVIDIA H200")
        989.0
        >>> peak_tflops("NVIDIA H100 PCIe")
        756.0
        >>> peak_tflops("a CPU") is None
        True
    """
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # longest first: "H100 PCIe" before "H100"
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


def train_flops_per_text(tokens: float, non_embedding_params: int, layers: int, hidden: int) -> float:
    """Forward + backward model FLOPs of one text of ``tokens`` tokens (PaLM appendix B).

    Example:
        >>> train_flops_per_text(100, 1_000_000, 2, 64)
        615360000.0
    """
    return tokens * (6.0 * non_embedding_params + 12.0 * layers * hidden * tokens)


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        info |= {
            "gpus": torch.cuda.device_count(),
            "gpu": torch.cuda.get_device_name(0),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cuda": torch.version.cuda,
            "peak_bf16_tflops": peak_tflops(torch.cuda.get_device_name(0)),
        }
    return info


def model_path(name: str, spec: dict[str, Any], cache: Path) -> str:
    if "id" in spec:
        from st_workflow.models import resolve_model

        return str(resolve_model(spec["id"], cache))
    from st_workflow.models.tiny import build_tiny_bert

    return str(build_tiny_bert(cache / "models", **spec["tiny"]))


def model_shape(path: str) -> dict[str, Any]:
    """Layers, hidden size, non-embedding parameters and the attention implementation of a saved model."""
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(path, device="cpu")
    auto = m[0].auto_model
    emb = sum(p.numel() for n, p in auto.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in auto.parameters())
    return {
        "layers": int(auto.config.num_hidden_layers),
        "hidden": int(auto.config.hidden_size),
        "params": int(total),
        "non_embedding_params": int(total - emb),
        "attn_implementation": getattr(auto.config, "_attn_implementation", None),
        "tokenizer": m.tokenizer,
    }


def mean_tokens(tokenizer, pairs: list[dict[str, str]], max_len: int) -> float:
    """Mean real tokens per text (anchor and positive), truncated to ``max_len`` as training does."""
    lengths = [
        len(tokenizer(r[c], truncation=True, max_length=max_len)["input_ids"])
        for r in pairs
        for c in ("anchor", "positive")
    ]
    return sum(lengths) / len(lengths)


def train_check(
    *,
    path: str,
    pairs: list[dict[str, str]],
    work: Path,
    cache: Path,
    device: str,
    steps: int,
    batch: int,
    max_len: int,
    nproc: int = 1,
    backend: str = "auto",
) -> dict[str, Any]:
    """Fixed steps through the real pre-tokenize + train stages; samples/s after the first step."""
    from training_throughput import write_pairs_stage

    from st_workflow.config import load_config
    from st_workflow.training import pretokenize_stage, train_stage

    pm = write_pairs_stage(pairs, work / "pairs", source="gpu-check")
    cfg = load_config(
        None,
        [
            "run_name=gpu-check",
            f"runs_dir={work / 'runs'}",
            f"cache_dir={cache}",
            f"training.base_model={path}",
            f"training.max_seq_length={max_len}",
            f"training.batch_size={batch}",
            f"training.max_steps={steps}",
            f"training.logging_steps={max(1, steps // 4)}",
            f"training.device={device}",
            f"training.dtype={'bfloat16' if device == 'cuda' else 'auto'}",
            "training.sampler.strategy=proportional",
            "training.sampler.group_by_length=true",
            "training.checkpoints.resume_from=null",
            "training.interpolation.ratios=[]",
            f"training.launch.nproc_per_node={nproc}",
            f"training.launch.backend={backend}",
            "wandb.mode=disabled",
        ],
    )
    pretok = pretokenize_stage(cfg, pm)
    m = train_stage(cfg, pm, pretok, log_sink=lambda line: None)
    return {
        "steps": m.metrics["global_step"],
        "train_seconds": round(m.metrics["train_seconds"], 3),
        "steady_samples_per_second": round(m.metrics["steady_samples_per_second"], 3),
        "precision": m.metrics.get("precision"),
        "processes": nproc,
        "saved": (Path(m.directory) / "model" / "modules.json").is_file(),
    }


def encode_check(path: str, texts: list[str], device: str, batch: int, max_len: int) -> dict[str, Any]:
    """Sentences/s of ``encode`` under bf16 autocast (fp32 on a CPU without bf16 units), after one warm-up batch."""
    import torch
    from sentence_transformers import SentenceTransformer

    from st_workflow.models.dtype import autocast, resolve_dtype

    dtype = resolve_dtype("auto", device)
    model = SentenceTransformer(path, device=device)
    model.max_seq_length = max_len
    with torch.inference_mode(), autocast(dtype, device):
        model.encode(texts[:batch], batch_size=batch)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=batch, convert_to_numpy=True)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {
        "sentences": len(texts),
        "seconds": round(wall, 3),
        "sentences_per_second": round(len(texts) / wall, 1),
        "dtype": dtype,
        "dim": int(emb.shape[1]),
    }


def corpus_texts(n: int) -> list[str]:
    """``n`` document texts from the bundled demo records (repeated when the bundle has fewer)."""
    from training_throughput import demo_pairs

    texts = [r["positive"] for r in demo_pairs(10_000)]
    return (texts * (n // len(texts) + 1))[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny BERT, two steps: checks the script itself"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per model (default 60; dry run 2)"
    )
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default 128; dry run 8)")
    p.add_argument("--max-len", type=int, default=None, help="tokens per text (default 256; dry run 64)")
    p.add_argument("--corpus", type=int, default=None, help="documents to encode (default 20000; dry run 64)")
    p.add_argument("--cache", default=str(REPO / ".cache" / "st-workflow"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = p.parse_args(argv)

    import torch
    from training_throughput import demo_pairs

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    steps = args.steps or (2 if dry else 60)
    batch = args.batch or (8 if dry else 128)
    n_docs = args.corpus or (64 if dry else 20_000)
    args.max_len = args.max_len or (64 if dry else 256)
    cache = Path(args.cache)
    env = environment(device)
    peak = env.get("peak_bf16_tflops")
    pairs = demo_pairs(max(steps * batch, 64) + batch)
    texts = corpus_texts(n_docs)
    work = Path(tempfile.mkdtemp(prefix="stw-gpu-check-"))
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    for name, spec in (DRY_MODELS if dry else MODELS).items():
        print(f"== {name}", flush=True)
        path = model_path(name, spec, cache)
        shape = model_shape(path)
        tokens = mean_tokens(shape.pop("tokenizer"), pairs, args.max_len)
        train = train_check(
            path=path, pairs=pairs, work=work / name, cache=cache, device=device, steps=steps, batch=batch,
            max_len=args.max_len,
        )  # fmt: skip
        flops_per_sample = 2 * train_flops_per_text(
            tokens, shape["non_embedding_params"], shape["layers"], shape["hidden"]
        )
        achieved = train["steady_samples_per_second"] * flops_per_sample / 1e12
        train |= {
            "mean_tokens_per_text": round(tokens, 1),
            "model_tflops_per_second": round(achieved, 2),
            "mfu": round(achieved / peak, 4) if peak else None,
        }
        encode = encode_check(path, texts, device, batch=min(256, batch * 2), max_len=args.max_len)
        results[name] = {"model": shape, "train": train, "encode": encode}
        print(f"   train {train['steady_samples_per_second']} samples/s, MFU {train['mfu']}", flush=True)
        print(f"   encode {encode['sentences_per_second']} sentences/s ({encode['dtype']})", flush=True)

    # The torchrun path: every GPU over NCCL; one GPU (or the dry run's CPU) is shared by two gloo ranks.
    gpus = int(env.get("gpus") or 0)
    nproc, backend = (gpus, "nccl") if gpus > 1 else (2, "gloo")
    first = next(iter(DRY_MODELS if dry else MODELS))
    print(f"== torchrun: {nproc} processes, {backend}", flush=True)
    ddp = train_check(
        path=model_path(first, (DRY_MODELS if dry else MODELS)[first], cache), pairs=pairs, work=work / "ddp",
        cache=cache, device=device, steps=steps, batch=batch, max_len=args.max_len, nproc=nproc, backend=backend,
    )  # fmt: skip
    results["torchrun"] = {"model": first, "backend": backend, **ddp}
    print(
        f"   {ddp['steady_samples_per_second']} samples/s over {nproc} ranks, saved={ddp['saved']}",
        flush=True,
    )

    report = {
        "benchmark": "gpu_check",
        "dry_run": dry,
        "device": device,
        "steps": steps,
        "batch_size": batch,
        "max_seq_length": args.max_len,
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "environment": env,
        "machine": machine(),
        "results": results,
    }
    write_report(args.out, report)
    print(f"written to {args.out} ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
