"""Learning-rate schedules: the original workflow's custom schedule and the standard Hugging Face ones.

The original trained with a hand-written ``LambdaLR`` that could not be switched off. Here it is one selectable
``training.scheduler.type`` (``warmup_linear_cosine_ripple``) next to every Hugging Face scheduler, ``constant``
included.

The custom schedule, on optimizer step ``s`` of ``T`` with ``W`` warm-up steps:

* ``s < W``: ``lr = lr_max * s / W`` (linear warm-up from 0);
* after: ``e = s - W``, ``M = T - W``, ``p = min(e / (M - 1), 1)`` (``p = 1`` when ``M == 1``),
  ``base = lr_max * (1 - p) + lr_min * p`` and ``lr = max(0, base + f * base * cos(2 pi (e mod C) / C))``;
* ``M <= 0``: ``lr = lr_min``.

Example:
    >>> lr = ripple_lr(0, total_steps=100, warmup_steps=10, lr_max=1e-3, lr_min=1e-4)
    >>> lr
    0.0
    >>> round(ripple_lr(10, total_steps=100, warmup_steps=10, lr_max=1e-3, lr_min=1e-4), 6)  # e=0: +10% ripple
    0.0011
"""

from __future__ import annotations

import math
from functools import partial

import torch

from st_workflow.config.training import SchedulerConfig

#: ``training.scheduler.type`` values served by ``transformers.get_scheduler``.
HF_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
CUSTOM = "warmup_linear_cosine_ripple"


def warmup_steps_for(cfg: SchedulerConfig, total_steps: int) -> int:
    """Warm-up steps: ``warmup_steps`` when set, else ``ceil(warmup_ratio * total_steps)`` (as Hugging Face does)."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return math.ceil(cfg.warmup_ratio * total_steps)


def ripple_lr(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    lr_max: float,
    lr_min: float = 5e-6,
    cycle_steps: int = 8000,
    magnitude_fraction: float = 0.1,
) -> float:
    """Learning rate of the custom schedule at optimizer step ``step`` (the formula in the module docstring)."""
    if step < warmup_steps:
        return lr_max * step / warmup_steps if warmup_steps > 0 else lr_max
    m = total_steps - warmup_steps
    if m <= 0:
        return lr_min
    e = step - warmup_steps
    p = 1.0 if m == 1 else min(e / (m - 1), 1.0)
    base = lr_max * (1.0 - p) + lr_min * p
    return max(
        0.0, base + magnitude_fraction * base * math.cos(2 * math.pi * (e % cycle_steps) / cycle_steps)
    )


def _ripple_factor(step: int, **kwargs: float) -> float:
    return ripple_lr(step, **kwargs) / kwargs["lr_max"]


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int, lr_max: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler named by ``cfg.type`` over ``total_steps`` optimizer steps.

    Its state (``last_epoch``) is what a checkpoint saves; the schedule itself is rebuilt from the config, so a
    resumed run continues on the same curve.
    """
    warmup = warmup_steps_for(cfg, total_steps)
    if cfg.type == CUSTOM:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", lr_max)
        fn = partial(
            _ripple_factor,
            total_steps=total_steps,
            warmup_steps=warmup,
            lr_max=lr_max,
            lr_min=cfg.lr_min,
            cycle_steps=cfg.cycle_steps,
            magnitude_fraction=cfg.magnitude_fraction,
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    from transformers import get_scheduler

    return get_scheduler(
        cfg.type, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
