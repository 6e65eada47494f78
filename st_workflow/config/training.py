"""Configuration of training: data sources with weights and losses, schedule, launch, checkpoints, BAT."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from st_workflow.config.base import Fraction, NonNegInt, PositiveInt, SecretRef, StrictModel


class PairColumns(StrictModel):
    """Which input columns become anchor / positive / negative."""

    anchor: str = "anchor"
    """Anchor (query) column."""
    positive: str = "positive"
    """Positive (document) column."""
    negative: str | None = None
    """Optional hard-negative column."""


class PipelinePairs(StrictModel):
    """Pairs this pipeline built (natural and/or synthetic), selected by type and source."""

    kind: Literal["pipeline"] = "pipeline"
    """Discriminator: ``pipeline``."""
    types: list[str] = Field(default_factory=list)
    """Pair types to use (``title-description``, ``title-abstract``, ``question-answer``, ``search_term-document``); empty: all."""
    sources: list[str] = Field(default_factory=list)
    """Ingest sources to use; empty: all."""
    synthesized: bool | None = None
    """Only synthetic (true), only natural (false) or both (unset)."""


class HfPairs(StrictModel):
    """A Hugging Face pair dataset, e.g. ``sentence-transformers/s2orc`` ``title-abstract-pair``."""

    kind: Literal["hf"] = "hf"
    """Discriminator: ``hf``."""
    dataset: str
    """Dataset id (or local directory)."""
    config: str | None = None
    """Configuration name."""
    split: str = "train"
    """Split (slicing such as ``train[:1000]`` allowed)."""
    revision: str | None = None
    """Git revision to pin."""
    data_files: list[str] = Field(default_factory=list)
    """Data files passed to ``load_dataset`` (e.g. with ``dataset: json`` or a local directory)."""
    columns: PairColumns = Field(default_factory=PairColumns)
    """Column mapping; a dotted path such as ``positives.docs.0`` reaches into nested fields and lists."""


class LocalPairs(StrictModel):
    """A local JSONL / Parquet / CSV file of pairs."""

    kind: Literal["local"] = "local"
    """Discriminator: ``local``."""
    path: str
    """File path (``pkg://`` for bundled data)."""
    format: Literal["auto", "jsonl", "parquet", "csv", "tsv"] = "auto"
    """File format; ``auto`` goes by the suffix."""
    columns: PairColumns = Field(default_factory=PairColumns)
    """Column mapping (dotted paths reach into nested fields)."""


class BeirPairs(StrictModel):
    """A BEIR-layout dataset's qrels as pairs (query text -> relevant document text)."""

    kind: Literal["beir"] = "beir"
    """Discriminator: ``beir``."""
    path: str
    """BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)."""
    split: str = "train"
    """Qrels split to turn into pairs."""
    min_score: int = 1
    """Smallest qrels score that counts as relevant."""


PairData = Annotated[PipelinePairs | HfPairs | LocalPairs | BeirPairs, Field(discriminator="kind")]


class LossConfig(StrictModel):
    """The contrastive loss of a source."""

    type: Literal["mnrl", "cached_mnrl", "gist"] = "mnrl"
    """MultipleNegativesRankingLoss, its cached (GradCache) variant, or GISTEmbed (needs ``guide_model``)."""
    scale: float = 20.0
    """Logit scale (inverse temperature)."""
    mini_batch_size: PositiveInt = 32
    """Mini-batch of the cached loss."""
    gather_across_devices: bool = False
    """Use every rank's embeddings as negatives under DDP."""
    guide_model: str | None = None
    """Guide model for GISTEmbed."""
    gist_temperature: float = Field(default=0.01, gt=0)
    """Temperature of GISTEmbed."""
    gist_margin_strategy: Literal["absolute", "relative"] = "absolute"
    """How GISTEmbed discards negatives the guide rates as (near-)positives."""
    gist_margin: float = 0.0
    """Margin of that false-negative filter."""

    @model_validator(mode="after")
    def _gist_needs_guide(self) -> LossConfig:
        if self.type == "gist" and not self.guide_model:
            raise ValueError("loss.type 'gist' needs loss.guide_model (the guide model id or path)")
        return self


class TrainSource(StrictModel):
    """One training data source: its data, weight and loss."""

    name: str
    """Source name (loss key, batch-sampler key, W&B label)."""
    data: PairData = Field(default_factory=PipelinePairs)
    """Where the pairs come from."""
    weight: float = Field(default=1.0, gt=0)
    """Multiplier on the source's batches per epoch (the original's semantics); >1 repeats data."""
    loss: LossConfig | None = None
    """Loss for this source; unset uses ``training.loss``."""
    replay: bool = False
    """Anti-forgetting replay of an earlier stage: with ``sampler.replay_share`` set, the replay sources together
    take that share of every epoch's batches; reported separately."""
    max_rows: PositiveInt | None = None
    """Cap on rows read from the source."""
    enabled: bool = True
    """Skip the source when false."""


class SchedulerConfig(StrictModel):
    """Learning-rate schedule."""

    type: Literal[
        "warmup_linear_cosine_ripple",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
    ] = "linear"
    """``warmup_linear_cosine_ripple`` is the original's custom schedule; the rest are Hugging Face schedulers."""
    warmup_ratio: Fraction = 0.1
    """Share of optimizer steps spent warming up."""
    warmup_steps: NonNegInt | None = None
    """Warm-up steps; overrides ``warmup_ratio``."""
    lr_min: float = 5e-6
    """Floor of the linear decay (custom schedule)."""
    cycle_steps: PositiveInt = 8000
    """Ripple period in optimizer steps (custom schedule)."""
    magnitude_fraction: Fraction = 0.1
    """Ripple amplitude as a fraction of the current base LR (custom schedule)."""


class SamplerConfig(StrictModel):
    """How batches are drawn across sources (every batch comes from one source)."""

    strategy: Literal["weighted", "proportional", "round_robin", "temperature"] = "weighted"
    """``weighted``: weights multiply each source's batches per epoch; ``temperature``: p ~ size^(1/T)."""
    temperature: float = Field(default=2.0, gt=0)
    """Temperature of the ``temperature`` strategy."""
    no_duplicates: bool = True
    """No repeated text inside a batch (false negatives otherwise)."""
    group_by_length: bool = True
    """Group similar lengths into batches (less padding) while keeping the order seeded."""
    length_window: PositiveInt = 32
    """Batches per length-sorting window: larger pads less, smaller keeps batches more random."""
    replay_share: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Share of each epoch's batches drawn from the sources marked ``replay`` (split between them by size);
    the other sources keep their batches from ``strategy``. Unset: replay sources are counted like any other."""


class LaunchConfig(StrictModel):
    """How the training process is started (torchrun)."""

    nproc_per_node: PositiveInt = 1
    """Processes per node; 1 runs a single plain process."""
    nnodes: str = "1"
    """Number of nodes, or a range ``min:max`` for elastic launches."""
    node_rank: NonNegInt | None = None
    """This node's rank (static rendezvous)."""
    rdzv_backend: str = "c10d"
    """Rendezvous backend for multi-node runs."""
    rdzv_endpoint: str | None = None
    """``host:port`` of the rendezvous for multi-node runs."""
    rdzv_id: str | None = None
    """Rendezvous job id (defaults to the run name)."""
    master_port: PositiveInt | None = None
    """Port for single-node runs (a free one is chosen when unset)."""
    omp_num_threads: PositiveInt | None = None
    """Threads per process; unset: cores / processes."""
    master_addr: str = "127.0.0.1"
    """Address of rank 0 for single-node runs with a fixed ``master_port``."""
    max_restarts: NonNegInt = 0
    """torchrun restarts of the worker group after a failure."""
    extra_args: list[str] = Field(default_factory=list)
    """Extra torchrun arguments, passed through verbatim (e.g. ``--rdzv-conf=timeout=900``)."""
    timeout_s: PositiveInt | None = None
    """Kill the whole process group after this many seconds."""
    kill_grace_s: float = Field(default=10.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when the process group is stopped."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend; auto is nccl on GPU, gloo on CPU."""
    lock_timeout_s: float | None = Field(default=None, ge=0)
    """Seconds to wait for another run that is training into the same run directory (it holds
    ``<run>/train/.commit.lock``); unset: wait until it ends, 0: fail at once. The error names the holder."""
    env_passthrough: list[str] = Field(default_factory=list)
    """Extra environment variables (``fnmatch`` patterns such as ``AWS_*``) the training processes may see, on top
    of the allow-list of :func:`st_workflow.training.launcher.launch_env`; every other variable of the caller (API
    keys, tokens) stays out of the torchrun ranks."""


class BinarizationConfig(StrictModel):
    """Binarization-aware training (the paper's EQAT, the original's BAT)."""

    enabled: bool = False
    """Append a sign() module with a straight-through gradient after pooling."""
    estimator: Literal["identity", "clipped", "tanh"] = "clipped"
    """Straight-through variant; ``tanh`` anneals tanh(beta x) towards sign."""
    beta_start: float = 1.0
    """Initial beta of the tanh estimator."""
    beta_end: float = 10.0
    """Final beta of the tanh estimator (annealed linearly over training)."""


class InterpolationConfig(StrictModel):
    """Weight-space ensembling (WiSE-FT): models between the base and the fine-tuned weights."""

    enabled: bool = True
    """Write the interpolated models after training (they become promotion candidates)."""
    ratios: list[Fraction] = Field(default_factory=list)
    """Shares of the fine-tuned weights, e.g. ``[0.5, 0.75]``: ``(1 - r) * base + r * fine_tuned``; empty: none."""


class DistillationConfig(StrictModel):
    """An extra loss term that keeps the embeddings near a frozen teacher's (by default the base model's)."""

    weight: float = Field(default=0.0, ge=0.0)
    """Weight of ``mean(1 - cos(student, teacher))`` over every text of a batch; 0 switches it off."""
    teacher: str | None = None
    """Teacher model (same tokenizer as the student); unset: the base model."""


class CheckpointConfig(StrictModel):
    """Checkpointing and resume."""

    save_steps: PositiveInt | None = None
    """Save every N optimizer steps; unset: only the final model."""
    save_total_limit: PositiveInt | None = 3
    """Keep at most this many checkpoints per configuration (``<train dir>/checkpoints/<key>/``, one directory
    per training cache key); checkpoints of other configurations are never deleted."""
    resume_from: str | None = "auto"
    """``auto``: resume from the latest checkpoint written under the same cache key (a retried or cancelled run
    continues); ``latest``: the most recently written checkpoint of any configuration in the stage directory; a
    path: that checkpoint; unset: start fresh (this configuration's earlier checkpoints are replaced)."""


class InTrainingEvalConfig(StrictModel):
    """Retrieval evaluation while training, on benchmarks handed to the train stage (e.g. the hold-out).

    Every rank encodes its shard of each benchmark (``st_workflow.evaluation.BenchmarkIREvaluator``); the original
    evaluated on rank 0 while the other ranks idled.
    """

    steps: PositiveInt | None = None
    """Evaluate every N optimizer steps; unset: no in-training evaluation."""
    benchmarks: list[str] = Field(default_factory=list)
    """Names of the benchmarks to use among those handed to the train stage; empty: all of them."""
    split: str = "validation"
    """Qrels split of each benchmark (the hold-out writes ``validation`` and ``test``: watch validation, report
    test); a benchmark without this split falls back to ``test``."""
    max_queries: PositiveInt | None = 300
    """Seeded subset of queries per benchmark, so that evaluating stays cheap."""
    ks: list[PositiveInt] = Field(default_factory=lambda: [10])
    """Cut-offs of the logged metrics."""
    batch_size: PositiveInt = 64
    """Encoding batch size per rank."""


class HubConfig(StrictModel):
    """Optional push of the promoted model (and the pairs dataset) to the Hugging Face Hub, after promotion.

    The push is its own task with its own retries: a failed upload never re-runs training. The endpoint is
    ``HF_ENDPOINT`` (the Hub by default); the run must be online (``hf_offline`` false).
    """

    push: bool = False
    """Upload ``<run>/promoted`` (whatever promotion chose, not necessarily the final model) after promotion."""
    repo_id: str | None = None
    """Target model repository (``namespace/name``)."""
    private: bool = True
    """Create the repositories as private (an existing repository keeps its visibility)."""
    token: SecretRef = Field(default_factory=lambda: SecretRef(env="HF_TOKEN"))
    """Hub token with write access to the repositories' namespaces; never logged or stored."""
    push_dataset: bool = False
    """Also push the run's pairs dataset (Parquet + a dataset card) to ``dataset_repo_id``; the model card links it."""
    dataset_repo_id: str | None = None
    """Target dataset repository (``namespace/name``); required with ``push_dataset``."""
    dataset_license: str = "other"
    """Hub license id in the dataset card. The pairs are texts of the ingested sources (NASA CMR and PDS metadata,
    arXiv titles and abstracts under their authors' licenses), so the default says "other" and the card names them."""
    retries: NonNegInt = 3
    """Retries of the push task after a transient error (network, timeout, HTTP 408/429/5xx); 401/403/404 and
    offline mode fail at once."""
    retry_delay_s: float = Field(default=30.0, ge=0)
    """Delay before the first retry; each next one waits 4x longer (30 s, 2 min, 8 min by default)."""

    @model_validator(mode="after")
    def _repo_when_pushing(self) -> HubConfig:
        if self.push and not self.repo_id:
            raise ValueError("training.hub.push is true but training.hub.repo_id is not set")
        if self.push and self.push_dataset and not self.dataset_repo_id:
            raise ValueError("training.hub.push_dataset is true but training.hub.dataset_repo_id is not set")
        return self

    def retry_delays(self) -> list[float]:
        """The push task's delay before each retry (exponential backoff)."""
        return [self.retry_delay_s * 4**i for i in range(self.retries)]


class TrainingConfig(StrictModel):
    """Fine-tuning of the sentence-embedding model."""

    enabled: bool = True
    """Train (false: evaluate the base model only)."""
    base_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """Model id or path to start from (``tiny-bert`` builds a tiny random BERT)."""
    max_seq_length: PositiveInt = 128
    """Tokens per text (the original padded everything to 1024)."""
    epochs: float = Field(default=1.0, gt=0)
    """Training epochs."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    max_pairs: PositiveInt | None = None
    """Cap on training pairs per epoch over all sources (seeded subsample); for time-boxed runs."""
    batch_size: PositiveInt = 32
    """Per-device batch size."""
    gradient_accumulation_steps: PositiveInt = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(default=2e-5, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast dtype of the forward and backward pass (master weights stay fp32), as ``evaluation.dtype`` and
    ``mining.dtype``. ``auto``: bf16 on GPUs that support it (else fp16) and on CPUs with native bf16 units
    (``avx512_bf16``/``amx_bf16``, about 2x faster steps), fp32 on other CPUs; float16 on a CPU runs fp32. The
    former name ``precision`` (``fp32 | bf16 | fp16``) is still read."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device; auto picks CUDA when available."""
    pretokenize: bool = True
    """Train from the pre-tokenized Arrow cache."""
    dataloader_num_workers: NonNegInt = 0
    """DataLoader workers per process."""
    logging_steps: PositiveInt = 10
    """Log the loss every N steps."""
    model_name: str | None = None
    """Display name in the model card; unset: derived from the run name."""
    trace_batches: bool = False
    """Write every batch's row ids per rank to ``<train dir>/trace`` (audits sampling, resume and sharding)."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """Default loss for sources that set none."""
    sources: list[TrainSource] = Field(default_factory=lambda: [TrainSource(name="pipeline")])
    """Training data registry."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """Multi-source sampling."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Learning-rate schedule."""
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    """torchrun launch."""
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoints and resume."""
    binarization: BinarizationConfig = Field(default_factory=BinarizationConfig)
    """Binarization-aware training."""
    evaluation: InTrainingEvalConfig = Field(default_factory=InTrainingEvalConfig)
    """Retrieval evaluation during training."""
    interpolation: InterpolationConfig = Field(default_factory=InterpolationConfig)
    """Weight-space ensembles of the base and the fine-tuned model (promotion candidates)."""
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    """Keep the embeddings near the frozen base model's while training."""
    hub: HubConfig = Field(default_factory=HubConfig)
    """Hub push."""

    @model_validator(mode="before")
    @classmethod
    def _precision_is_dtype(cls, data: Any) -> Any:
        # ``precision: bf16`` (the old name and values) reads as ``dtype: bfloat16``.
        if isinstance(data, dict) and "precision" in data:
            data = dict(data)
            old = data.pop("precision")
            new = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(old, old)
            if data.setdefault("dtype", new) != new:
                raise ValueError(f"training.precision={old!r} and training.dtype={data['dtype']!r} disagree")
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> TrainingConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"training.sources: duplicate names {dupes}")
        enabled = [s for s in self.sources if s.enabled]
        if self.sampler.replay_share and not any(s.replay for s in enabled):
            raise ValueError(
                "training.sampler.replay_share is set but no enabled training source has replay: true"
            )
        if self.sampler.replay_share and all(s.replay for s in enabled):
            raise ValueError("training.sampler.replay_share needs at least one source that is not replay")
        return self
