"""Weight-space ensembling: models between the base and the fine-tuned one (WiSE-FT, Wortsman et al. 2022).

``theta(alpha) = (1 - alpha) * theta_base + alpha * theta_fine_tuned`` for every floating-point tensor. Fine-tuning
moves a retriever towards the new domain and away from what it knew; points on the straight line between the two
weight vectors usually keep most of the in-domain gain while losing much less general quality, and cost nothing
but a few seconds to make. The ``interpolate`` stage writes one full sentence-transformers model per ratio; the
evaluation scores them on the validation splits and the promotion policy picks among base, checkpoints, fine-tuned
and interpolations alike.

Example:
    >>> import torch
    >>> interpolate_state({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)["w"].tolist()
    [0.25, 0.25]
    >>> candidate_name(0.5)
    'interp-0.50'

Making the models needs two models on disk::

    from st_workflow.training.interpolate import interpolate_stage
    m = interpolate_stage(cfg, train_manifest)      # runs/<run>/interpolate/interp-0.50/ ...
    m.metrics["models"]                              # {"interp-0.50": "/abs/path", ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, stable_hash
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable

STAGE = "interpolate"


def candidate_name(alpha: float) -> str:
    """The model name of ratio ``alpha`` in evaluations and reports."""
    return f"interp-{alpha:.2f}"


def interpolate_state(
    base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` per floating tensor; other tensors (ids, counters) come from ``tuned``.

    Raises:
        ValueError: the two state dicts do not describe the same architecture (keys or shapes differ).
    """
    if set(base) != set(tuned):
        only = sorted(set(base) ^ set(tuned))[:5]
        raise ValueError(f"cannot interpolate: the models have different parameters (e.g. {only})")
    out: dict[str, torch.Tensor] = {}
    for k, t in tuned.items():
        b = base[k]
        if b.shape != t.shape:
            raise ValueError(f"cannot interpolate: {k} has shape {tuple(b.shape)} vs {tuple(t.shape)}")
        if t.is_floating_point():
            out[k] = torch.lerp(b.to(t.dtype), t, float(alpha))
        else:
            out[k] = t.clone()
    return out


def interpolate_model(base_dir: str, tuned_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """Write the model at ratio ``alpha`` as a full sentence-transformers directory (atomically).

    The fine-tuned model supplies everything but the weights (modules, tokenizer, card), so a binarization head
    or any other module it added is kept.
    """
    from st_workflow.models import load_model

    tuned = load_model(str(tuned_dir), device="cpu")
    base = load_model(base_dir, device="cpu")
    state = interpolate_state(base.state_dict(), tuned.state_dict(), alpha)
    tuned.load_state_dict(state)
    tuned.model_card_data.model_name = f"{Path(tuned_dir).name} x{alpha:.2f} + base x{1 - alpha:.2f}"
    with atomic.atomic_dir(out_dir) as tmp:
        tuned.save(str(tmp))
        atomic.write_json(
            tmp / "interpolation.json", {"alpha": alpha, "base": base_dir, "fine_tuned": str(tuned_dir)}
        )
    return Path(out_dir)


def interpolate_stage(cfg: PipelineConfig, trained: Manifest) -> Manifest | None:
    """Stage ``interpolate``: one model per ``training.interpolation.ratios`` between the base and ``trained``.

    Returns None when interpolation is off (no ratios). Manifest: ``metrics.models`` maps candidate names to
    model directories (roles of the same names), ``metrics.ratios`` the ratios. Reused when the fine-tuned model,
    the base model and the ratios are unchanged.
    """
    from st_workflow.models import resolve_model
    from st_workflow.training.stage import model_fingerprint

    ratios = sorted(set(cfg.training.interpolation.ratios))
    if not cfg.training.interpolation.enabled or not ratios:
        return None
    out = cfg.stage_dir(STAGE)
    base_dir = resolve_model(cfg.training.base_model, cfg.cache_path)
    key = stable_hash(
        {
            "stage": STAGE,
            "ratios": ratios,
            "trained": trained.content_hash,
            "base": model_fingerprint(base_dir),
            "code": code_version("training.interpolate"),
        }
    )
    if (hit := reusable(out, key)) is not None:
        get_logger().info("interpolate: reusing %s", out)
        return hit
    tuned = trained.path("model")
    files: dict[str, Any] = {}
    models: dict[str, str] = {}
    for alpha in ratios:
        name = candidate_name(alpha)
        interpolate_model(base_dir, tuned, alpha, out / name)
        files[name] = name
        models[name] = str(out / name)
    get_logger().info("interpolate: %d models between the base and %s -> %s", len(ratios), tuned, out)
    manifest = Manifest.build(
        stage=STAGE,
        directory=out,
        files=files,
        counts={"models": len(ratios)},
        metrics={"ratios": ratios, "models": models},
        config_hash=stable_hash(ratios),
        code_version=code_version("training.interpolate"),
        cache_key=key,
        upstream=[trained],
    )
    manifest.write()
    return manifest
