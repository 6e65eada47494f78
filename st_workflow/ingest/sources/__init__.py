"""Ingest sources: one module and one class per kind (see :mod:`st_workflow.ingest.sources.base`).

``st_workflow.config.ingest`` is imported first: it builds the ``kind`` union from the registry, which imports the
source modules, so whichever of the two a program imports first, the config side is complete before a source
module runs.
"""

import st_workflow.config.ingest  # noqa: F401  (builds the registry and the SourceConfig union; see above)
from st_workflow.ingest.sources.base import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    Listing,
    SourceBase,
    SourceRegistryError,
    register,
    source_class,
    source_classes,
    source_kinds,
)

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Listing",
    "SourceBase",
    "SourceRegistryError",
    "register",
    "source_class",
    "source_classes",
    "source_kinds",
]
