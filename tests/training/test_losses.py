"""Per-source losses are sentence-transformers' own classes, configured from ``LossConfig``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from st_workflow.config.training import LossConfig
from st_workflow.training.losses import build_loss

PAIRS = [("sea ice extent", "Arctic sea ice extent from passive microwave"), ("mars rover", "Curiosity explores Gale crater"),
         ("ozone layer", "Stratospheric ozone absorbs ultraviolet light"), ("solar wind", "Plasma streaming from the Sun")]  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (LossConfig(), losses.MultipleNegativesRankingLoss),
        (
            LossConfig(type="cached_mnrl", mini_batch_size=2, scale=30),
            losses.CachedMultipleNegativesRankingLoss,
        ),
    ],
)
def test_contrastive_losses(tiny_model_path: Path, cfg: LossConfig, cls: type) -> None:
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    loss = build_loss(model, cfg)
    assert type(loss) is cls and loss.scale == cfg.scale
    feats = [model.preprocess([a for a, _ in PAIRS]), model.preprocess([p for _, p in PAIRS])]
    value = loss(feats, None)
    assert torch.isfinite(value) and value > 0


def test_gist_uses_a_shared_frozen_guide(tiny_model_path: Path) -> None:
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    cfg = LossConfig(type="gist", guide_model=str(tiny_model_path), gist_margin=0.05)
    guides: dict = {}
    a, b = build_loss(model, cfg, guides=guides), build_loss(model, cfg, guides=guides)
    assert isinstance(a, losses.GISTEmbedLoss) and a.guide is b.guide and len(guides) == 1
    assert not any(p.requires_grad for p in a.guide.parameters())
    feats = [model.preprocess([x for x, _ in PAIRS]), model.preprocess([p for _, p in PAIRS])]
    assert torch.isfinite(a(feats, None))


def test_gist_without_guide_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="guide_model"):
        LossConfig(type="gist")
