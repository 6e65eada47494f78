"""Binarization-aware training: sign forward with sign(0)=+1, the three straight-through gradients, a module that
saves and reloads, cosine on ±1 codes that ranks exactly like Hamming distance, and post-training binarization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim, quantize_embeddings

from st_workflow.training.binarization import (
    BetaAnnealCallback,
    Binarize,
    add_binarization,
    binarize_model,
    binarize_ste,
    hamming_distances,
    load_binary_model,
)

TEXTS = [
    "Sea surface temperature from MODIS Aqua",
    "Mars Science Laboratory Curiosity rover",
    "Global precipitation measurement mission",
    "Lunar reconnaissance orbiter camera",
    "Arctic sea ice extent daily",
    "Jupiter magnetosphere plasma waves",
]


def test_forward_is_sign_with_zero_mapped_to_plus_one() -> None:
    x = torch.tensor([-2.0, -1e-8, 0.0, 1e-8, 3.0])
    for est in ("identity", "clipped", "tanh"):
        assert binarize_ste(x, est, 5.0).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_straight_through_gradients() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    binarize_ste(x, "identity").backward(g)
    assert x.grad.tolist() == g.tolist()
    x.grad = None
    binarize_ste(x, "clipped").backward(g)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    x.grad = None
    beta = 3.0
    binarize_ste(x, "tanh", beta).backward(g)
    expected = g * beta * (1 - torch.tanh(beta * x.detach()) ** 2)
    assert torch.allclose(x.grad, expected)


def test_bat_model_trains_through_the_sign(tiny_model_path: Path) -> None:
    model = add_binarization(SentenceTransformer(str(tiny_model_path), device="cpu"), "clipped")
    assert isinstance(list(model)[-1], Binarize) and "Normalize" not in str(model)
    loss = MultipleNegativesRankingLoss(model)
    feats = [model.preprocess(TEXTS[:3]), model.preprocess(TEXTS[3:])]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    loss(feats, None).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the STE lets gradients reach the encoder
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_beta_is_annealed_by_global_step(tiny_model_path: Path) -> None:
    model = add_binarization(SentenceTransformer(str(tiny_model_path), device="cpu"), "tanh", 1.0, 9.0)
    cb = BetaAnnealCallback(model)

    class S:
        global_step, max_steps = 3, 4

    cb.on_step_begin(None, S(), None)
    assert list(model)[-1].beta == pytest.approx(7.0)


def test_round_trip_as_a_proper_module_and_hamming_consistency(tiny_model_path: Path, tmp_path: Path) -> None:
    model = add_binarization(SentenceTransformer(str(tiny_model_path), device="cpu"), "tanh", 2.0, 8.0)
    model.save(str(tmp_path / "bat"))
    modules = json.loads((tmp_path / "bat" / "modules.json").read_text())
    assert (
        modules[-1]["type"] == "st_workflow.training.binarization.Binarize"
    )  # an import path, unlike the original
    cfg = json.loads((tmp_path / "bat" / modules[-1]["path"] / "config.json").read_text())
    assert cfg["estimator"] == "tanh" and cfg["beta_end"] == 8.0
    reloaded = load_binary_model(tmp_path / "bat", device="cpu")
    assert isinstance(list(reloaded)[-1], Binarize)
    a = model.encode(TEXTS, convert_to_numpy=True)
    b = reloaded.encode(TEXTS, convert_to_numpy=True)
    assert np.array_equal(a, b) and set(np.unique(a)) == {-1.0, 1.0}
    # Training similarity (cosine on ±1 codes) is an exact affine map of Hamming distance on packed bits.
    d = a.shape[1]
    cos = cos_sim(torch.from_numpy(a[:3]), torch.from_numpy(a[3:])).numpy()
    packed = quantize_embeddings(a, precision="ubinary")
    ham = hamming_distances(packed[:3], packed[3:])
    assert np.allclose(cos, 1 - 2 * ham / d, atol=1e-6)
    assert (np.argsort(-cos, axis=1, kind="stable") == np.argsort(ham, axis=1, kind="stable")).all()


def test_post_training_binarization_of_any_model(tiny_model_path: Path, tmp_path: Path) -> None:
    base = SentenceTransformer(str(tiny_model_path), device="cpu")
    plain = binarize_model(base)
    assert np.array_equal(plain.encode(TEXTS), np.where(base.encode(TEXTS) >= 0, 1.0, -1.0))
    calibrated = binarize_model(base, calibration_texts=TEXTS * 3, output_dir=tmp_path / "cal")
    codes = calibrated.encode(TEXTS)
    # Median thresholds balance every bit over the calibration set.
    assert np.abs((codes > 0).mean(axis=0) - 0.5).max() <= 0.5 / 1 and (codes > 0).mean() == pytest.approx(
        0.5, abs=0.1
    )
    again = load_binary_model(tmp_path / "cal", device="cpu")
    assert np.array_equal(again.encode(TEXTS), codes)
    assert torch.equal(list(again)[-1].threshold, list(calibrated)[-1].threshold)
