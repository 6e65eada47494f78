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


class DistillationLoss(nn.Module):
    """A source's MNRL loss plus ``weight * mean(1 - cos(student, teacher))`` over every text of the batch.

    The teacher (by default the frozen base model) embeds the same token ids under ``torch.no_grad``; the term
    pulls the fine-tuned embeddings back towards what the base model computed for the same texts, the embedding
    space the general benchmarks were good in, while MNRL moves them towards the new domain. The teacher is kept
    out of the module tree, so its weights are neither trained nor saved. When the batch carries ``labels`` of
    shape ``(batch, columns, dim)`` (the teacher's embeddings, precomputed by the mining stage), they are the
    targets and no teacher forward runs; ``teacher`` may then be ``None``.
    """

    def __init__(self, loss: nn.Module, teacher: Any, weight: float) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer import losses

        if not isinstance(loss, losses.MultipleNegativesRankingLoss):
            raise ValueError(
                f"training.distillation works with loss type mnrl, not {type(loss).__name__}; "
                "set the source's loss to mnrl or distillation.weight to 0"
            )
        self.loss = loss
        self.model = loss.model
        self.weight = float(weight)
        self._teacher = [teacher]
        self.last_terms: dict[str, float] = {}

    def forward(self, sentence_features: Any, labels: Any) -> Any:
        import torch
        from sentence_transformers.base.losses.merged_forward import embed_columns

        features = list(sentence_features)
        inputs = [{k: v for k, v in f.items() if k not in _OUTPUT_KEYS} for f in features]
        embeddings = embed_columns(self.model, features)
        contrastive = self.loss.compute_loss_from_embeddings(embeddings, None)
        if isinstance(labels, torch.Tensor) and labels.dim() == 3 and labels.shape[1] == len(embeddings):
            targets = list(labels.unbind(1))
        else:
            teacher = self._teacher[0]
            if teacher is None:
                raise ValueError("DistillationLoss: no teacher model and no precomputed teacher embeddings")
            with torch.no_grad():
                targets = [teacher(f)["sentence_embedding"] for f in inputs]
        drift = torch.stack(
            [
                (1 - torch.nn.functional.cosine_similarity(e, t.to(e.dtype), dim=-1)).mean()
                for e, t in zip(embeddings, targets, strict=True)
            ]
        ).mean()
        self.last_terms = {"contrastive": float(contrastive.detach()), "drift": float(drift.detach())}
        return contrastive + self.weight * drift


_OUTPUT_KEYS = frozenset({"token_embeddings", "sentence_embedding", "all_layer_embeddings"})


def load_teacher(name: str, *, device: str, cache_dir: str) -> Any:
    """A frozen, eval-mode model to distil from."""
    from st_workflow.models import load_model

    teacher = load_model(name, device=device, cache_dir=cache_dir)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
