"""The natural pair of a document: title -> abstract (arXiv) or title -> structured "Label: value" description.

As the original built CMR and PDS pairs (``stage2_cmr_pds_title_description_pair_runner.py``): the positive is the
description plus the record's structured facts, one ``Label: value`` line each, in a configured order, e.g.::

    Description: Daily global sea surface temperature at 1 km ...
    Purpose: ...
    Science keywords: EARTH SCIENCE > OCEANS > OCEAN TEMPERATURE > SEA SURFACE TEMPERATURE
    Platform: Aqua, Terra
    Instrument: MODIS

Which positive a kind gets is the source class's answer (``natural_positive``); CMR and PDS use
:func:`structured_description`. The same function gives the natural-pair positive and the held-out benchmark's corpus text, so the benchmark asks
exactly the question training teaches (title -> description). Values are collapsed to one line; long lists are cut
to ``MAX_VALUES`` entries; the whole positive is cut at a word boundary to ``max_positive_chars``.

Example:
    >>> from st_workflow.config.pairs import NaturalPairsConfig
    >>> doc = {"title": "SST", "text": "Daily sea surface temperature.",
    ...        "metadata": {"kind": "cmr", "platforms": ["Aqua"], "instruments": ["MODIS"]}}
    >>> print(natural_pair(doc, "cmr", NaturalPairsConfig())[2])
    Description: Daily sea surface temperature.
    Platform: Aqua
    Instrument: MODIS
"""

from __future__ import annotations

from typing import Any

import orjson

from st_workflow.config.pairs import NaturalPairsConfig
from st_workflow.ingest.documents import collapse
from st_workflow.ingest.sources.base import TITLE_ABSTRACT, TITLE_DESCRIPTION, source_class

__all__ = [
    "TITLE_ABSTRACT",
    "TITLE_DESCRIPTION",
    "natural_pair",
    "pair_type",
    "structured_description",
    "truncate",
]
MAX_VALUES = 20
"""At most this many entries of a list-valued field (keywords, instruments...) go into a positive."""

_CMR_FIELDS: dict[str, tuple[str, str]] = {  # label -> (metadata key, separator)
    "Purpose": ("purpose", ""),
    "Science keywords": ("science_keywords", "; "),
    "Platform": ("platforms", ", "),
    "Instrument": ("instruments", ", "),
    "Project": ("projects", ", "),
    "Location": ("location_keywords", "; "),
    "Keywords": ("ancillary_keywords", ", "),
    "Data type": ("collection_data_type", ""),
    "DOI": ("doi", ""),
}
_PDS_FIELDS: dict[str, tuple[str, str]] = {
    "Target": ("target", ", "),
    "Investigation": ("investigation", ", "),
    "Instrument host": ("instrument_host", ", "),
    "Instrument": ("instrument", ", "),
    "Telescope": ("telescope", ", "),
    "Facility": ("facility", ", "),
    "Keywords": ("keywords", ", "),
    "Node": ("node", ""),
    "Also known as": ("alternate_titles", "; "),
}


def pair_type(kind: str) -> str:
    """The natural pair type the source kind declares (``title-abstract`` for arXiv and ADS); unknown kinds:
    ``title-description``."""
    cls = source_class(kind)
    return cls.pair_type if cls is not None else TITLE_DESCRIPTION


PLACEHOLDERS = frozenset(
    {"not applicable", "not provided", "n/a", "na", "none", "unknown", "unk", "null", "-"}
)
"""Values that say nothing (CMR's ``NOT APPLICABLE`` platforms...) and are left out of positives."""


def _informative(x: Any) -> bool:
    return x not in (None, "") and collapse(str(x)).casefold() not in PLACEHOLDERS


def _value(meta: dict[str, Any], key: str, sep: str) -> str:
    v = meta.get(key)
    if isinstance(v, list):
        return collapse(sep.join(str(x) for x in [x for x in v if _informative(x)][:MAX_VALUES]))
    return collapse(str(v)) if _informative(v) else ""


def _pds_type(meta: dict[str, Any]) -> str:
    ctx = meta.get("context_type")
    base = (
        str(ctx).replace("_", " ")
        if ctx
        else str(meta.get("product_class") or "").removeprefix("Product_").replace("_", " ")
    )
    typ = meta.get("type")
    return f"{base} ({typ})" if base and typ and str(typ) != base else (base or str(typ or ""))


def structured_description(text: str, meta: dict[str, Any], kind: str, fields: list[str]) -> str:
    """The "Label: value" lines of a CMR or PDS document (other kinds: the text itself)."""
    table = _CMR_FIELDS if kind == "cmr" else _PDS_FIELDS if kind == "pds" else None
    if table is None:
        return text
    lines = []
    for label in fields:
        if label == "Description":
            value = collapse(text)
        elif label == "Type" and kind == "pds":
            value = _pds_type(meta)
        elif label == "Short name" and kind == "cmr":
            value = collapse(" ".join(str(meta[k]) for k in ("short_name", "version") if meta.get(k)))
        elif label in table:
            value = _value(meta, *table[label])
        else:
            value = ""
        if value:
            lines.append(f"{label}: {value}")
    return "\n".join(lines)


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at a word boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > max_chars // 2 else cut).rstrip()


def natural_pair(doc: dict[str, Any], kind: str, cfg: NaturalPairsConfig) -> tuple[str, str, str]:
    """``(type, anchor, positive)`` of a document row (``metadata`` may be the JSON string or a dict).

    The source kind's class says what the positive is (:meth:`~st_workflow.ingest.sources.base.SourceBase.
    natural_positive`); a kind no longer installed falls back to the text.
    """
    meta = doc.get("metadata") or {}
    if isinstance(meta, str):
        meta = orjson.loads(meta) if meta else {}
    title, text = doc.get("title") or "", doc.get("text") or ""
    cls = source_class(kind)
    positive = cls.natural_positive(text, meta, cfg) if cls is not None else text
    return pair_type(kind), title, truncate(positive, cfg.max_positive_chars)
