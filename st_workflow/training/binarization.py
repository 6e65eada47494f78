"""Binarization-aware training (the paper's EQAT, the original's BAT) and post-training binarization.

:class:`Binarize` is a sentence-transformers module placed after pooling. Its forward pass always outputs
``sign(x - threshold)`` in ``{-1, +1}`` (``sign(0) = +1``, so no code is ever 0), and in training its backward pass
is a straight-through estimator:

* ``identity``: the gradient passes unchanged (the original's BAT);
* ``clipped``: the gradient passes only where ``|x| <= 1`` (the usual STE, which stops pushing saturated values);
* ``tanh``: the gradient of ``tanh(beta * x)``, with ``beta`` annealed from ``beta_start`` to ``beta_end`` over
  training (:class:`BetaAnnealCallback`), so the surrogate sharpens towards sign.

Why the training similarity matches Hamming ranking: for codes ``a, b`` in ``{-1, +1}^d``,
``a . b = d - 2 * hamming(a, b)`` and ``|a| = |b| = sqrt(d)``, so ``cos(a, b) = 1 - 2 * hamming(a, b) / d``. The
MNRL loss therefore trains exactly the ranking that Hamming distance on packed bits (``quantize_embeddings(...,
"ubinary")``) gives at evaluation, with cosine logits in ``[-1, 1]`` as for float models, so ``scale`` keeps its
usual meaning (the original's ``(a.b + 1) / 2`` variant silently halved it).

The module saves its config (and thresholds, when calibrated) like any sentence-transformers module, with its
import path in ``modules.json``. sentence-transformers 6 imports classes outside its own namespace only with
``trust_remote_code=True``; :func:`load_binary_model` does that for a model directory this package wrote.

Example:
    >>> import torch
    >>> b = Binarize(estimator="clipped")
    >>> b({"sentence_embedding": torch.tensor([[-0.5, 0.0, 2.0]])})["sentence_embedding"].tolist()
    [[-1.0, 1.0, 1.0]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sentence_transformers.base.modules.module import Module
from torch import Tensor
from transformers import TrainerCallback

# One Hamming implementation (64-bit words, never a Q x N x bytes broadcast), re-exported for callers here.
from st_workflow.evaluation.hamming import hamming_distances as hamming_distances

try:
    from typing import Self
except ImportError:  # pragma: no cover
    from typing import Self

Estimator = Literal["identity", "clipped", "tanh"]
_ESTIMATORS = ("identity", "clipped", "tanh")


def sign_pm1(x: Tensor) -> Tensor:
    """``sign`` with ``sign(0) = +1``: every output is exactly -1 or +1."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, estimator: str, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.estimator = estimator
        ctx.beta = beta
        return sign_pm1(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.estimator == "identity":
            g = grad
        elif ctx.estimator == "clipped":
            g = grad * (x.abs() <= 1).to(grad.dtype)
        else:
            t = torch.tanh(ctx.beta * x)
            g = grad * ctx.beta * (1 - t * t)
        return g, None, None


def binarize_ste(x: Tensor, estimator: Estimator = "clipped", beta: float = 1.0) -> Tensor:
    """``sign(x)`` forward, straight-through ``estimator`` backward."""
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown straight-through estimator {estimator!r}; choose one of {_ESTIMATORS}")
    return _SignSTE.apply(x, estimator, float(beta))


class Binarize(Module):
    """Sentence-transformers module: ``sentence_embedding -> sign(sentence_embedding - threshold)``.

    Args:
        estimator: straight-through variant used in training (``identity``, ``clipped``, ``tanh``).
        beta: current beta of the ``tanh`` estimator (annealed during training, saved for the record).
        beta_start: first beta of the annealing.
        beta_end: last beta of the annealing.
        dimension: embedding dimension when per-dimension thresholds are kept (post-training calibration).
    """

    config_keys: ClassVar[list[str]] = ["estimator", "beta", "beta_start", "beta_end", "dimension"]

    def __init__(
        self,
        estimator: Estimator = "clipped",
        beta: float = 1.0,
        beta_start: float = 1.0,
        beta_end: float = 10.0,
        dimension: int | None = None,
    ) -> None:
        super().__init__()
        if estimator not in _ESTIMATORS:
            raise ValueError(f"unknown straight-through estimator {estimator!r}; choose one of {_ESTIMATORS}")
        self.estimator = estimator
        self.beta = float(beta)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.dimension = dimension
        if dimension is not None:
            self.register_buffer("threshold", torch.zeros(dimension))

    def forward(self, features: dict[str, Tensor], **kwargs: Any) -> dict[str, Tensor]:
        x = features["sentence_embedding"]
        if self.dimension is not None:
            x = x - self.threshold.to(x.dtype)
        if self.training and torch.is_grad_enabled():
            features["sentence_embedding"] = binarize_ste(x, self.estimator, self.beta)
        else:
            features["sentence_embedding"] = sign_pm1(x)
        return features

    def get_embedding_dimension(self) -> int | None:
        return self.dimension

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        if self.dimension is not None:
            self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> Self:
        hub = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path, **hub)
        module = cls(**{k: v for k, v in config.items() if k in cls.config_keys})
        if module.dimension is not None:
            cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module


def add_binarization(
    model: Any, estimator: Estimator = "clipped", beta_start: float = 1.0, beta_end: float = 10.0
) -> Any:
    """A model with :class:`Binarize` after pooling (any trailing ``Normalize`` dropped: ±1 codes need none).

    The model is rebuilt from its modules (same weights, same device), so it can be trained as usual.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    modules = list(model)
    while modules and isinstance(modules[-1], Normalize):
        modules.pop()
    modules = [m for m in modules if not isinstance(m, Binarize)]
    modules.append(Binarize(estimator=estimator, beta=beta_start, beta_start=beta_start, beta_end=beta_end))
    new = SentenceTransformer(modules=modules, device=str(model.device), similarity_fn_name="cosine")
    new.model_card_data = model.model_card_data
    new.model_card_data.register_model(new)
    return new


def binarize_model(
    model: Any,
    calibration_texts: list[str] | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 64,
) -> Any:
    """Post-training binarization of any sentence-transformers model.

    Appends :class:`Binarize` so the model itself emits ±1 codes. With ``calibration_texts`` the threshold of each
    dimension is its median over those texts, which balances the bits of models whose dimensions are not centred
    at 0 (the plain ``> 0`` rule of ``quantize_embeddings`` wastes bits there). Saved to ``output_dir`` when given.
    """
    from sentence_transformers import SentenceTransformer

    if isinstance(model, str | Path):
        from st_workflow.models import load_model

        model = load_model(str(model))
    dim = model.get_embedding_dimension() if calibration_texts else None
    bin_model = add_binarization(model, estimator="identity")
    if calibration_texts:
        emb = SentenceTransformer(modules=list(bin_model)[:-1], device=str(model.device)).encode(
            calibration_texts, batch_size=batch_size, convert_to_numpy=True
        )
        layer = Binarize(estimator="identity", dimension=int(dim or emb.shape[1]))
        layer.threshold.copy_(torch.from_numpy(np.median(emb, axis=0)).float())
        bin_model = SentenceTransformer(
            modules=[*list(bin_model)[:-1], layer], device=str(model.device), similarity_fn_name="cosine"
        )
    bin_model.eval()
    if output_dir is not None:
        bin_model.save(str(output_dir))
    return bin_model


def load_binary_model(path: str | Path, device: str | None = None) -> Any:
    """Load a model that contains :class:`Binarize` (a directory this package wrote)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device, trust_remote_code=True)


class BetaAnnealCallback(TrainerCallback):
    """Anneal ``Binarize.beta`` linearly from ``beta_start`` to ``beta_end`` over the run's optimizer steps.

    Beta is a function of the global step, so a resumed run continues on the same curve.
    """

    def __init__(self, model: Any) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, Binarize)]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        frac = min(1.0, state.global_step / max(1, state.max_steps))
        for layer in self.layers:
            layer.beta = layer.beta_start + (layer.beta_end - layer.beta_start) * frac
