"""Training: pre-tokenized multi-source data, seeded samplers, losses, schedules, torchrun launch, BAT.

Stage functions (what the Prefect tasks and ``st-workflow train`` call):

* :func:`pretokenize_stage` ``(cfg, pairs_manifest) -> Manifest``: every training source into the shared Arrow cache;
* :func:`mine_stage` ``(cfg, pairs_manifest) -> Manifest``: the pairs with a mined hard negative each (same schema,
  role ``pairs``), between the pairs dataset and pre-tokenization;
* :func:`train_stage` ``(cfg, pairs_manifest, pretok_manifest, *, log_sink=None, should_cancel=None) -> Manifest``:
  train in a process group it owns (one process, or torchrun) and return the model manifest.

Names are imported lazily so that ``python -m st_workflow.training.<module>`` (the torchrun entry point and the
launch shim) starts without importing torch twice over.
"""

from __future__ import annotations

from st_workflow.lazy import lazy_exports

_EXPORTS = {
    "pretokenize_stage": "pretokenize",
    "build_sources": "pretokenize",
    "mine_stage": "mining",
    "train_stage": "stage",
    "resolve_resume": "stage",
    "TrainingCancelled": "launcher",
    "TrainingTimeout": "launcher",
    "TrainingFailed": "launcher",
    "build_command": "launcher",
    "run_process_group": "launcher",
    "Binarize": "binarization",
    "add_binarization": "binarization",
    "binarize_model": "binarization",
    "load_binary_model": "binarization",
    "MultiSourceBatchSampler": "samplers",
    "SourceIndex": "samplers",
    "PreTokenizedCollator": "collator",
    "build_scheduler": "schedules",
    "ripple_lr": "schedules",
    "open_source": "sources",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
