"""Adapt without forgetting: weight-space interpolation and the distillation term, on the tiny random BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from st_workflow.config import load_config
from st_workflow.manifest import Manifest
from st_workflow.training.interpolate import (
    candidate_name,
    interpolate_model,
    interpolate_stage,
    interpolate_state,
)
from st_workflow.training.losses import DistillationLoss, load_teacher

TEXTS = [
    "sea ice extent",
    "Arctic sea ice from passive microwave",
    "mars rover",
    "Curiosity explores Gale crater",
]


def _perturbed(src: Path, dst: Path, scale: float = 0.05) -> Path:
    """A "fine-tuned" model: the tiny BERT with every weight moved (seeded)."""
    model = SentenceTransformer(str(src), device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save(str(dst))
    return dst


def test_interpolate_state_is_a_straight_line_and_checks_shapes() -> None:
    base = {"w": torch.zeros(3), "ids": torch.tensor([1, 2])}
    tuned = {"w": torch.ones(3), "ids": torch.tensor([5, 6])}
    out = interpolate_state(base, tuned, 0.3)
    assert out["w"].tolist() == pytest.approx([0.3] * 3) and out["ids"].tolist() == [5, 6]
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state(base, {"w": torch.ones(3)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state(base, {"w": torch.ones(4), "ids": torch.tensor([1, 2])}, 0.5)


def test_interpolated_models_lie_between_base_and_fine_tuned(tiny_model_path: Path, tmp_path: Path) -> None:
    tuned = _perturbed(tiny_model_path, tmp_path / "tuned")
    ends = {}
    for alpha in (0.0, 0.5, 1.0):
        out = interpolate_model(str(tiny_model_path), tuned, alpha, tmp_path / candidate_name(alpha))
        ends[alpha] = SentenceTransformer(str(out), device="cpu").state_dict()
    base = SentenceTransformer(str(tiny_model_path), device="cpu").state_dict()
    ft = SentenceTransformer(str(tuned), device="cpu").state_dict()
    k = next(k for k, v in base.items() if v.is_floating_point() and v.numel() > 10)
    assert torch.allclose(ends[0.0][k], base[k]) and torch.allclose(ends[1.0][k], ft[k])
    assert torch.allclose(ends[0.5][k], (base[k] + ft[k]) / 2, atol=1e-6)
    assert (tmp_path / "interp-0.50" / "interpolation.json").is_file()


def test_the_stage_writes_one_model_per_ratio_and_is_reused(tiny_model_path: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"training.base_model={tiny_model_path}",
            "training.interpolation.ratios=[0.75, 0.25]",
        ],
    )
    train_dir = cfg.stage_dir("train")
    _perturbed(tiny_model_path, train_dir / "model")
    trained = Manifest.build(stage="train", directory=train_dir, files={"model": "model"})
    m = interpolate_stage(cfg, trained)
    assert m is not None and sorted(m.metrics["models"]) == ["interp-0.25", "interp-0.75"]
    assert all(Path(p, "modules.json").is_file() for p in m.metrics["models"].values())
    again = interpolate_stage(cfg, trained)
    assert again is not None and again.created_at == m.created_at  # reused, not rewritten
    off = cfg.model_copy(deep=True)
    off.training.interpolation.ratios = []
    assert interpolate_stage(off, trained) is None


def test_distillation_adds_the_drift_from_the_frozen_teacher(tiny_model_path: Path, tmp_path: Path) -> None:
    tuned = _perturbed(tiny_model_path, tmp_path / "tuned", scale=0.2)
    student = SentenceTransformer(str(tuned), device="cpu")
    mnrl = losses.MultipleNegativesRankingLoss(student)
    teacher = load_teacher(str(tiny_model_path), device="cpu", cache_dir=str(tmp_path))
    assert not any(p.requires_grad for p in teacher.parameters())
    features = [student.preprocess(TEXTS[0::2]), student.preprocess(TEXTS[1::2])]
    loss = DistillationLoss(mnrl, teacher, weight=2.0)
    total = loss([dict(f) for f in features], None)
    plain = mnrl([dict(f) for f in features], None)
    drift = loss.last_terms["drift"]
    assert drift > 0 and float(total.detach()) == pytest.approx(float(plain.detach()) + 2.0 * drift, rel=1e-5)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(n.startswith("_teacher") for n, _ in loss.named_parameters())
    same = DistillationLoss(losses.MultipleNegativesRankingLoss(teacher), teacher, weight=1.0)
    same([dict(f) for f in features], None)
    assert same.last_terms["drift"] == pytest.approx(
        0.0, abs=1e-6
    )  # a model distilled towards itself: no drift
    with pytest.raises(ValueError, match="works with loss type mnrl"):
        DistillationLoss(losses.CachedMultipleNegativesRankingLoss(student), teacher, weight=1.0)


def test_precomputed_teacher_embeddings_replace_the_teacher_forward(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """The mining stage's embeddings of the base model, passed as labels, give the same loss as the online teacher."""
    import numpy as np

    from st_workflow.training.collator import PreTokenizedCollator

    tuned = _perturbed(tiny_model_path, tmp_path / "tuned", scale=0.2)
    student = SentenceTransformer(str(tuned), device="cpu")
    teacher = load_teacher(str(tiny_model_path), device="cpu", cache_dir=str(tmp_path))
    anchors, positives = TEXTS[0::2], TEXTS[1::2]
    with torch.no_grad():
        emb = np.stack([teacher.encode(anchors), teacher.encode(positives)], axis=1)  # (rows, columns, dim)
    rows = [
        {"anchor_input_ids": student.preprocess([a])["input_ids"][0].tolist(),
         "positive_input_ids": student.preprocess([p])["input_ids"][0].tolist(), "row": i, "dataset_name": "s"}
        for i, (a, p) in enumerate(zip(anchors, positives, strict=True))
    ]  # fmt: skip
    batch = PreTokenizedCollator(pad_token_id=0, token_type_ids=True, teacher={"s": emb.astype(np.float16)})(
        rows
    )
    assert batch["label"].shape == (2, 2, emb.shape[-1])
    features = [
        {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")}
        for c in ("anchor", "positive")
    ]
    mnrl = losses.MultipleNegativesRankingLoss(student)
    offline = DistillationLoss(mnrl, None, weight=1.0)
    offline([dict(f) for f in features], batch["label"])
    online = DistillationLoss(mnrl, teacher, weight=1.0)
    online([dict(f) for f in features], None)
    assert offline.last_terms["drift"] == pytest.approx(online.last_terms["drift"], abs=2e-3)
    with pytest.raises(ValueError, match="no teacher"):
        offline([dict(f) for f in features], None)
