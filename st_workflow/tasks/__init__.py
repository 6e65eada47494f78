"""Thin Prefect task wrappers around the stage functions.

Each task does three things only: call one stage function lazily imported (so a cached run never imports torch),
declare how it is cached (:class:`~st_workflow.tasks.caching.ManifestCachePolicy`) and retried (transient errors
only), and publish a small artifact. Domain logic stays in the stage packages.
"""
