"""``pipeline``: the stage-2 data flow followed by the train flow, as one run with one report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from st_workflow.flows.stage2_data import stage2_data_flow
from st_workflow.flows.train import train_flow


@flow(name="pipeline")
def pipeline_flow(
    config_path: str = "configs/demo.yaml", overrides: list[str] | None = None
) -> dict[str, Any]:
    """Everything: documents -> pairs -> fine-tuned, evaluated, promoted model -> ``<run>/report.md``."""
    started_at = time.time()
    data = stage2_data_flow(config_path, overrides, started_at=started_at)
    return train_flow(
        config_path,
        overrides,
        pairs=data["pairs"],
        benchmark=data["benchmark"],
        prior_stages=data["stages"],
        started_at=started_at,
    )
