"""The original's custom LR schedule against its formula (original-workflow.md §2.7), and the HF schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from st_workflow.config.training import SchedulerConfig
from st_workflow.training.schedules import build_scheduler, ripple_lr, warmup_steps_for


def spec_lr(s: int, T: int, W: int, lr_max: float, lr_min: float, C: int, f: float) -> float:
    """§2.7 written out independently: warm-up, then linear decay with a cosine ripple of fraction f every C steps."""
    if s < W:
        return lr_max * s / W
    M = T - W
    if M <= 0:
        return lr_min
    e = s - W
    p = 1.0 if M == 1 else min(e / (M - 1), 1.0)
    base = lr_max * (1 - p) + lr_min * p
    return max(0.0, base + f * base * math.cos(2 * math.pi * (e % C) / C))


@pytest.mark.parametrize(
    ("T", "W", "C", "f"),
    [(1000, 100, 80, 0.1), (50, 0, 7, 0.3), (10, 10, 8000, 0.1), (12, 11, 3, 0.5), (5, 3, 2, 1.0)],
)
def test_ripple_matches_the_formula_everywhere(T: int, W: int, C: int, f: float) -> None:
    for s in range(T + 3):
        got = ripple_lr(
            s, total_steps=T, warmup_steps=W, lr_max=2e-5, lr_min=5e-6, cycle_steps=C, magnitude_fraction=f
        )
        assert got == pytest.approx(spec_lr(s, T, W, 2e-5, 5e-6, C, f), rel=1e-12, abs=1e-18)


def test_ripple_landmarks() -> None:
    kw = {
        "total_steps": 101,
        "warmup_steps": 10,
        "lr_max": 1.0,
        "lr_min": 0.1,
        "cycle_steps": 20,
        "magnitude_fraction": 0.1,
    }
    assert ripple_lr(0, **kw) == 0.0
    assert ripple_lr(5, **kw) == pytest.approx(0.5)  # linear warm-up
    assert ripple_lr(10, **kw) == pytest.approx(1.1)  # e = 0: peak plus the full +10 % ripple
    assert ripple_lr(20, **kw) == pytest.approx((1 - 10 / 90 * 0.9) * 0.9)  # half a cycle: -10 %
    assert ripple_lr(100, **kw) == pytest.approx(0.1 * (1 + 0.1 * math.cos(2 * math.pi * (90 % 20) / 20)))
    # No room after warm-up: the floor.
    assert ripple_lr(3, total_steps=3, warmup_steps=3, lr_max=1.0, lr_min=0.2) == 0.2


def test_scheduler_drives_the_optimizer_along_the_formula_and_resumes_from_its_state() -> None:
    cfg = SchedulerConfig(
        type="warmup_linear_cosine_ripple",
        warmup_ratio=0.1,
        lr_min=1e-4,
        cycle_steps=7,
        magnitude_fraction=0.2,
    )
    T, lr = 40, 1e-3
    W = warmup_steps_for(cfg, T)
    assert W == 4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_scheduler(cfg, opt, T, lr)
    seen, saved = [], None
    for s in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if s == 16:
            saved = (sched.state_dict(), opt.state_dict())
    assert seen == pytest.approx([spec_lr(s, T, W, lr, 1e-4, 7, 0.2) for s in range(T)], rel=1e-9)
    # A checkpoint stores the scheduler's step; the curve is rebuilt from config, so a resumed run continues on it.
    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([p2], lr=lr)
    sched2 = build_scheduler(cfg, opt2, T, lr)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[0])
    resumed = []
    for _ in range(17, T):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(seen[17:], rel=1e-12)


@pytest.mark.parametrize(
    "kind", ["linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts"]
)
def test_hugging_face_schedulers_are_selectable(kind: str) -> None:
    cfg = SchedulerConfig(type=kind, warmup_steps=2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(cfg, opt, 10, 1.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if kind == "constant":
        assert lrs == [1.0] * 10  # the schedule can be switched off (the original could not)
    else:
        assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0)  # two warm-up steps
    if kind == "linear":
        assert lrs[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 10)])
