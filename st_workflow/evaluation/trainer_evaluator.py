"""A sentence-transformers evaluator over our benchmarks, for in-training evaluation (also under DDP).

Pass it as ``evaluator=`` to ``SentenceTransformerTrainer``: metrics are MTEB-exact, and when the trainer runs under
``torchrun`` every rank encodes its shard of the corpus and queries (the original evaluated on rank 0 while the
other ranks waited). Results carry no corpus cache: the weights change between calls.

Example::

    from st_workflow.evaluation import BenchmarkIREvaluator, load_local
    evaluator = BenchmarkIREvaluator(load_local(holdout_dir, name="in-domain"), ks=[10], name="in-domain")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss, evaluator=evaluator)
    # logs eval_in-domain_ndcg@10, eval_in-domain_mrr@10, ...
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from st_workflow.evaluation.benchmarks import Benchmark
from st_workflow.evaluation.dumps import summarize
from st_workflow.evaluation.evaluator import EvalSettings, RetrievalEvaluator


class BenchmarkIREvaluator(SentenceEvaluator):
    """Evaluate a model on a :class:`Benchmark` inside a training loop.

    Args:
        benchmark: the benchmark (e.g. ``load_local(dir, name=...)``); keep it small for frequent evaluations.
        ks: cut-offs.
        precisions: also score quantized indexes (``binary``, ``binary_rescore``, ``int8``).
        name: metric prefix.
        primary: primary metric (model selection with ``load_best_model_at_end``).
        batch_size: encoding batch size per rank.
    """

    def __init__(
        self,
        benchmark: Benchmark,
        *,
        ks: list[int] | None = None,
        precisions: list[str] | None = None,
        name: str = "",
        primary: str = "ndcg@10",
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.name = name or benchmark.name
        settings = EvalSettings(
            ks=ks or [1, 5, 10], precisions=precisions or ["float32"], batch_size=batch_size
        )
        self.evaluator = RetrievalEvaluator(settings, cache=None)
        self.primary_metric = primary
        self.greater_is_better = True

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        run = self.evaluator.evaluate(model, self.benchmark, model_hash="in-training")
        results = {t: {p: r.to_json() for p, r in per.items()} for t, per in run.results.items()}
        flat = summarize(
            results,
            tasks=[t.id for t in self.benchmark.tasks()],
            precisions=self.evaluator.settings.precisions,
            detail_metrics=[self.primary_metric],
            bytes_per_doc=None,
        )
        flat.pop("n_queries", None)
        metrics = self.prefix_name_to_metrics(flat, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark.name, "ks": self.evaluator.settings.ks}
