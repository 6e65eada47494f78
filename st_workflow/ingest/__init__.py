"""Ingest: documents from arXiv, NASA CMR, NASA PDS, NASA ADS, Hugging Face datasets and local files (one
:mod:`~st_workflow.ingest.sources` module per kind, plug-ins through the ``st_workflow.sources`` entry point group);
natural pairs; the held-out in-domain benchmark.

Stage functions (plain Python; :mod:`st_workflow.tasks.data` wraps them as Prefect tasks):

* :func:`ingest_source` ``(cfg, source_name) -> Manifest``: one source into ``<run>/ingest/<source>/``
  (:func:`ingest_to_dir` does the same for any directory; the ``st-workflow ingest`` command uses it);
* :func:`build_holdout` ``(cfg, doc_manifests) -> Manifest | None``: the seeded in-domain BEIR benchmark;
* :func:`build_natural_pairs` ``(cfg, doc_manifests, holdout) -> Manifest``: title -> abstract/description pairs,
  checked free of held-out text.

Names are imported on first access: the config package imports :mod:`st_workflow.ingest.sources` while it is being
built, which must not pull in the stages (they import the config).
"""

from st_workflow.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    "st_workflow.ingest",
    {
        "LeakageError": "natural_pairs",
        "OutputDirError": "stage",
        "build_holdout": "holdout",
        "build_natural_pairs": "natural_pairs",
        "check_no_leakage": "natural_pairs",
        "holdout_score": "holdout",
        "ingest_source": "stage",
        "ingest_to_dir": "stage",
        "natural_pair": "structured",
        "read_documents": "stage",
        "read_heldout": "holdout",
    },
)
