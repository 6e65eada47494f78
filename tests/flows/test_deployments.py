"""prefect.yaml and the Python deployments describe the same four deployments."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from st_workflow.config import PipelineConfig
from st_workflow.deployments import DEPLOYMENTS, build_runner_deployments

REPO = Path(__file__).resolve().parents[2]


def _yaml_deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _flow_of(entrypoint: str):
    path, func = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def test_yaml_and_python_agree() -> None:
    from_yaml = {f"{_flow_of(d['entrypoint']).name}/{d['name']}": d for d in _yaml_deployments()}
    from_py = {d.full_name: d for d in DEPLOYMENTS}
    assert (
        set(from_yaml)
        == set(from_py)
        == {"stage2-data/regenerate", "train/default", "evaluate/default", "pipeline/default"}
    )
    default_cron = PipelineConfig().orchestration.regenerate_cron
    for name, spec in from_py.items():
        d = from_yaml[name]
        assert d["entrypoint"] == spec.entrypoint
        strategy = "CANCEL_NEW" if spec.scheduled else "ENQUEUE"
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": strategy}
        assert d["parameters"]["config_path"] == "configs/demo.yaml"
        if spec.scheduled:
            assert d["schedules"] == [{"cron": default_cron, "timezone": "UTC"}]
        else:
            assert "schedules" not in d


def test_runner_deployments_carry_schedule_and_limit() -> None:
    deps = {
        d.name + ":" + d.flow_name: d
        for d in build_runner_deployments("configs/tiny.yaml", ["seed=1"], cron="0 3 * * 1")
    }
    regen = deps["regenerate:stage2-data"]
    assert regen.parameters == {"config_path": "configs/tiny.yaml", "overrides": ["seed=1"]}
    assert len(regen.schedules) == 1 and regen.schedules[0].schedule.cron == "0 3 * * 1"
    assert regen.concurrency_limit == 1
    assert regen.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert deps["default:train"].concurrency_options.collision_strategy == "ENQUEUE"
    assert not deps["default:train"].schedules
