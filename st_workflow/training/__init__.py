"""Training: pre-tokenized multi-source data, seeded samplers, losses, schedules, torchrun launch, BAT.

Stage functions (what the Prefect tasks and ``st-workflow train`` call):

* :func:`pretokenize_stage` ``(cfg, pairs_manifest) -> Manifest``: every training source into the shared Arrow cache;
* :func:`train_stage` ``(cfg, pairs_manifest, pretok_manifest, *, log_sink=None, should_cancel=None) -> Manifest``:
  train in a process group it owns (one process, or torchrun) and return the model manifest.

Names are imported lazily so that ``python -m st_workflow.training.<module>`` (the torchrun entry point and the
launch shim) starts without importing torch twice over.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pretokenize_stage": "st_workflow.training.pretokenize",
    "build_sources": "st_workflow.training.pretokenize",
    "train_stage": "st_workflow.training.stage",
    "resolve_resume": "st_workflow.training.stage",
    "TrainingCancelled": "st_workflow.training.launcher",
    "TrainingTimeout": "st_workflow.training.launcher",
    "TrainingFailed": "st_workflow.training.launcher",
    "build_command": "st_workflow.training.launcher",
    "run_process_group": "st_workflow.training.launcher",
    "Binarize": "st_workflow.training.binarization",
    "add_binarization": "st_workflow.training.binarization",
    "binarize_model": "st_workflow.training.binarization",
    "load_binary_model": "st_workflow.training.binarization",
    "MultiSourceBatchSampler": "st_workflow.training.samplers",
    "SourceIndex": "st_workflow.training.samplers",
    "PreTokenizedCollator": "st_workflow.training.collator",
    "build_scheduler": "st_workflow.training.schedules",
    "ripple_lr": "st_workflow.training.schedules",
    "open_source": "st_workflow.training.sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'st_workflow.training' has no attribute {name!r}")
