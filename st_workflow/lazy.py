"""Packages whose public names are imported on first access (PEP 562 module ``__getattr__``).

``training``, ``evaluation`` and ``stage2_generation`` re-export names from modules that import torch,
sentence-transformers, Instructor or Pydantic AI; importing the package for one config type or a skip decision must
not pay for those.

Example:
    >>> __all__, __getattr__, __dir__ = lazy_exports("st_workflow", {"stable_hash": "hashing"})
    >>> __getattr__("stable_hash")({"a": 1}) == __getattr__("stable_hash")({"a": 1})
    True
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, where ``exports`` maps a name to its submodule.

    A name is imported from ``package.<submodule>`` on first access and then kept in the package's namespace, so
    later accesses cost a dictionary lookup.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return sorted(exports), __getattr__, __dir__
