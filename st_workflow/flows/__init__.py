"""Prefect flows. Each is a readable chain of tasks; domain logic lives in the stage packages.

* ``stage2-data`` (:func:`stage2_data_flow`): ingest -> relevancy filter -> generation -> gates -> pairs dataset
* ``train`` (:func:`train_flow`): pre-tokenize -> train -> evaluate checkpoints -> report -> promote
* ``evaluate`` (:func:`evaluate_flow`): any models x benchmarks
* ``pipeline`` (:func:`pipeline_flow`): all of them
"""

from st_workflow.flows.evaluate import evaluate_flow
from st_workflow.flows.pipeline import pipeline_flow
from st_workflow.flows.stage2_data import stage2_data_flow
from st_workflow.flows.train import train_flow

FLOWS = {
    "pipeline": pipeline_flow,
    "stage2-data": stage2_data_flow,
    "train": train_flow,
    "evaluate": evaluate_flow,
}

__all__ = ["FLOWS", "evaluate_flow", "pipeline_flow", "stage2_data_flow", "train_flow"]
