"""Per-source contrastive losses, built from ``LossConfig`` on sentence-transformers' own loss classes.

* ``mnrl``: ``MultipleNegativesRankingLoss`` (in-batch negatives, plus the ``negative`` column as a hard negative);
* ``cached_mnrl``: ``CachedMultipleNegativesRankingLoss`` (GradCache): large effective batches in the memory of
  ``mini_batch_size``;
* ``gist``: ``GISTEmbedLoss``: a guide model drops in-batch negatives it rates as near-positives (false negatives).

``gather_across_devices`` adds every rank's embeddings as negatives under DDP; the sampler makes every rank draw
its batch from the same source at the same step, so gathered negatives never cross sources.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from st_workflow.config.training import LossConfig


def loss_name(cfg: LossConfig) -> str:
    """The sentence-transformers class behind ``cfg.type``."""
    return {
        "mnrl": "MultipleNegativesRankingLoss",
        "cached_mnrl": "CachedMultipleNegativesRankingLoss",
        "gist": "GISTEmbedLoss",
    }[cfg.type]


def build_loss(
    model: Any, cfg: LossConfig, *, guides: dict[str, Any] | None = None, cache_dir: str = "."
) -> nn.Module:
    """Instantiate the loss of one source; guide models are loaded once and shared through ``guides``."""
    from sentence_transformers.sentence_transformer import losses

    if cfg.type == "mnrl":
        return losses.MultipleNegativesRankingLoss(
            model, scale=cfg.scale, gather_across_devices=cfg.gather_across_devices
        )
    if cfg.type == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(
            model,
            scale=cfg.scale,
            mini_batch_size=cfg.mini_batch_size,
            gather_across_devices=cfg.gather_across_devices,
        )
    guides = guides if guides is not None else {}
    assert cfg.guide_model
    if cfg.guide_model not in guides:
        from st_workflow.models import load_model

        guide = load_model(cfg.guide_model, device=str(model.device), cache_dir=cache_dir)
        guide.eval()
        for p in guide.parameters():
            p.requires_grad_(False)
        guides[cfg.guide_model] = guide
    return losses.GISTEmbedLoss(
        model,
        guide=guides[cfg.guide_model],
        temperature=cfg.gist_temperature,
        margin_strategy=cfg.gist_margin_strategy,
        margin=cfg.gist_margin,
        gather_across_devices=cfg.gather_across_devices,
    )
