"""st-workflow: an orchestrated pipeline that turns scientific content into a domain sentence-embedding retriever.

The package is split by concept: ``ingest`` (documents and natural pairs), ``stage2_generation`` (LLM pairs and
relevancy filtering), ``training``, ``evaluation``; ``tasks`` wrap them for Prefect and ``flows`` compose the tasks.
Every stage writes under ``<runs_dir>/<run_name>/<stage>/`` and returns a small :class:`~st_workflow.manifest.Manifest`.
"""

__version__ = "0.1.0"
