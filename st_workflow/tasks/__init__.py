"""Thin Prefect task wrappers around the stage functions.

Each task does three things only: call one stage function lazily imported (so a cached run never imports torch),
declare how it is cached (:class:`~st_workflow.tasks.caching.ManifestCachePolicy`) and retried (transient errors
only), and publish a small artifact. Each runs its stage under
:func:`~st_workflow.tasks.progress.reports_progress`, so the stages it opens are progress bars on the run's page.
Domain logic stays in the stage packages.
"""
