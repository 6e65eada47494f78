"""The root pipeline configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from st_workflow.config.base import StrictModel
from st_workflow.config.evaluation import EvaluationConfig
from st_workflow.config.generation import GenerationConfig
from st_workflow.config.ingest import IngestConfig
from st_workflow.config.mining import MiningConfig
from st_workflow.config.orchestration import OrchestrationConfig
from st_workflow.config.pairs import PairsConfig
from st_workflow.config.tracking import WandbConfig
from st_workflow.config.training import TrainingConfig
from st_workflow.hashing import stable_hash


class PipelineConfig(StrictModel):
    """Everything one pipeline run needs. Loaded from YAML by :func:`st_workflow.config.load_config`."""

    run_name: str = "default"
    """Name of the run; outputs go to ``<runs_dir>/<run_name>/<stage>/``."""
    runs_dir: str = "runs"
    """Root of all run directories (relative to the working directory)."""
    cache_dir: str = ".cache/st-workflow"
    """Content-addressed caches shared by runs (tokenized datasets, corpus embeddings, LLM answers, tiny models)."""
    seed: int = 42
    """Seed of every random choice (hold-out, sampling, initialisation)."""
    description: str = ""
    """Free text shown in reports and model cards."""
    hf_offline: bool | None = None
    """Set ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (true/false); unset leaves the environment as it is."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Document sources."""
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    """Natural pairs and the held-out in-domain benchmark."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """LLM relevancy filter and pair generation."""
    mining: MiningConfig = Field(default_factory=MiningConfig)
    """Hard-negative mining between the pairs dataset and pre-tokenization."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Fine-tuning."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Benchmarks and promotion."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Experiment tracking."""
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    """Prefect and Dask."""

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"run_name must be a plain directory name, got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineConfig:
        for what, names in (
            ("ingest.sources", [s.name for s in self.ingest.sources]),
            ("evaluation.benchmarks", [b.name for b in self.evaluation.benchmarks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate names {dupes}")
        return self

    @model_validator(mode="after")
    def _push_needs_the_hub(self) -> PipelineConfig:
        # Fail at load, not hours later at the push task: an offline run can never upload.
        if self.hf_offline and self.training.hub.push:
            raise ValueError(
                "training.hub.push is true but hf_offline is true: a push needs the Hub "
                "(set hf_offline: false, or training.hub.push: false)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        """``<runs_dir>/<run_name>`` as an absolute path."""
        return (Path(self.runs_dir) / self.run_name).resolve()

    def stage_dir(self, stage: str) -> Path:
        """Directory of one stage's outputs."""
        return self.run_dir / stage

    @property
    def cache_path(self) -> Path:
        """Absolute shared cache directory."""
        return Path(self.cache_dir).resolve()

    def section_hash(self, *sections: str) -> str:
        """Hash of the named top-level sections (plus the seed): the config part of a stage's cache key."""
        data = self.model_dump(mode="json")
        data["training"].pop("hub", None)  # where the model is published changes no stage's output
        return stable_hash({"seed": self.seed, **{s: data[s] for s in sections}})
