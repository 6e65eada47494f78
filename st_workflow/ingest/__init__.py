"""Ingest: documents from arXiv, NASA CMR, NASA PDS, Hugging Face datasets and local files; natural pairs; the
held-out in-domain benchmark.

Stage functions (plain Python; :mod:`st_workflow.tasks.data` wraps them as Prefect tasks):

* :func:`ingest_source` ``(cfg, source_name) -> Manifest``: one source into ``<run>/ingest/<source>/``
  (:func:`ingest_to_dir` does the same for any directory; the ``st-workflow ingest`` command uses it);
* :func:`build_holdout` ``(cfg, doc_manifests) -> Manifest | None``: the seeded in-domain BEIR benchmark;
* :func:`build_natural_pairs` ``(cfg, doc_manifests, holdout) -> Manifest``: title -> abstract/description pairs,
  checked free of held-out text.
"""

from st_workflow.ingest.holdout import build_holdout, holdout_score, read_heldout
from st_workflow.ingest.natural_pairs import LeakageError, build_natural_pairs, check_no_leakage
from st_workflow.ingest.stage import OutputDirError, ingest_source, ingest_to_dir, read_documents
from st_workflow.ingest.structured import natural_pair

__all__ = [
    "LeakageError",
    "OutputDirError",
    "build_holdout",
    "build_natural_pairs",
    "check_no_leakage",
    "holdout_score",
    "ingest_source",
    "ingest_to_dir",
    "natural_pair",
    "read_documents",
    "read_heldout",
]
