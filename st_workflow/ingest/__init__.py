"""Ingest: documents from arXiv, NASA CMR, NASA PDS, Hugging Face datasets and local files; natural pairs; the
held-out in-domain benchmark.

Stage functions (plain Python, wrapped as Prefect tasks in :mod:`st_workflow.tasks.data`):

* :func:`ingest_source` ``(cfg, source_name) -> Manifest`` — one source into ``<run>/ingest/<source>/``;
  :func:`ingest_to_dir` is the same for an arbitrary directory (the ``st-workflow ingest`` command).
"""

from st_workflow.ingest.stage import OutputDirError, ingest_source, ingest_to_dir, read_documents

__all__ = ["OutputDirError", "ingest_source", "ingest_to_dir", "read_documents"]
