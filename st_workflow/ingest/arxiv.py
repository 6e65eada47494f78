"""arXiv metadata: the Kaggle snapshot (streamed), OAI-DC lines, category filtering and the Kaggle download.

Two line formats are read by the same loop, per line:

* Kaggle ``arxiv-metadata-oai-snapshot.json``: an object with ``id, title, abstract, categories, authors, doi,
  journal-ref, versions, update_date...``;
* arXiv OAI-PMH ``oai_dc`` as ``["<id>", {"title": [...], "description": [abstract, "Comment: ..."],
  "subject": ["Astrophysics - Solar and Stellar Astrophysics", ...], ...}]``. Subject *names* are mapped back to
  category codes (``astro-ph.SR``) so that one ``categories`` filter works for both.

The file is read line by line in binary by :func:`st_workflow.ingest.readers.iter_jsonl` (constant memory: one line
plus one output row group at a time); a line that is not JSON, not UTF-8, or larger than the size bound is
quarantined with its ``file:line`` locator.

Example:
    >>> line = b'{"id": "0704.0001", "title": "Diphoton\\\\n  production", "abstract": "  A fully differential calculation.", "categories": "hep-ph"}'
    >>> c = snapshot_candidate(parse_line(line), "f:1", ("hep-",))
    >>> c.id, c.metadata["categories"]
    ('0704.0001', ['hep-ph'])
    >>> snapshot_candidate(parse_line(line), "f:1", ("astro-ph",)) is FILTERED
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from st_workflow.ingest import documents
from st_workflow.ingest.documents import WRONG_TYPE, Candidate, Rejection

ABS_URL = "https://arxiv.org/abs/"
KAGGLE_FILE = "arxiv-metadata-oai-snapshot.json"
MAX_AUTHORS_CHARS = 2000
"""Author strings are cut to this length in the metadata (a few papers list thousands of authors)."""

FILTERED = documents.FILTERED
"""Returned by :func:`snapshot_candidate` for a record outside the configured categories."""

# arXiv subject names (as OAI-DC writes them) -> category codes. Archive-level names map to the archive code.
_ARCHIVES = {
    "Astrophysics": "astro-ph",
    "Condensed Matter": "cond-mat",
    "General Relativity and Quantum Cosmology": "gr-qc",
    "High Energy Physics - Experiment": "hep-ex",
    "High Energy Physics - Lattice": "hep-lat",
    "High Energy Physics - Phenomenology": "hep-ph",
    "High Energy Physics - Theory": "hep-th",
    "Mathematical Physics": "math-ph",
    "Nonlinear Sciences": "nlin",
    "Nuclear Experiment": "nucl-ex",
    "Nuclear Theory": "nucl-th",
    "Physics": "physics",
    "Quantum Physics": "quant-ph",
    "Mathematics": "math",
    "Computer Science": "cs",
    "Quantitative Biology": "q-bio",
    "Quantitative Finance": "q-fin",
    "Statistics": "stat",
    "Electrical Engineering and Systems Science": "eess",
    "Economics": "econ",
}
_SUBCATEGORIES = {
    "astro-ph": {
        "Cosmology and Nongalactic Astrophysics": "CO",
        "Earth and Planetary Astrophysics": "EP",
        "Astrophysics of Galaxies": "GA",
        "High Energy Astrophysical Phenomena": "HE",
        "Instrumentation and Methods for Astrophysics": "IM",
        "Solar and Stellar Astrophysics": "SR",
    },
    "physics": {
        "Accelerator Physics": "acc-ph",
        "Atmospheric and Oceanic Physics": "ao-ph",
        "Applied Physics": "app-ph",
        "Atomic and Molecular Clusters": "atm-clus",
        "Atomic Physics": "atom-ph",
        "Biological Physics": "bio-ph",
        "Chemical Physics": "chem-ph",
        "Classical Physics": "class-ph",
        "Computational Physics": "comp-ph",
        "Data Analysis, Statistics and Probability": "data-an",
        "Physics Education": "ed-ph",
        "Fluid Dynamics": "flu-dyn",
        "General Physics": "gen-ph",
        "Geophysics": "geo-ph",
        "History and Philosophy of Physics": "hist-ph",
        "Instrumentation and Detectors": "ins-det",
        "Medical Physics": "med-ph",
        "Optics": "optics",
        "Plasma Physics": "plasm-ph",
        "Popular Physics": "pop-ph",
        "Physics and Society": "soc-ph",
        "Space Physics": "space-ph",
    },
    "cond-mat": {
        "Disordered Systems and Neural Networks": "dis-nn",
        "Mesoscale and Nanoscale Physics": "mes-hall",
        "Materials Science": "mtrl-sci",
        "Other Condensed Matter": "other",
        "Quantum Gases": "quant-gas",
        "Soft Condensed Matter": "soft",
        "Statistical Mechanics": "stat-mech",
        "Strongly Correlated Electrons": "str-el",
        "Superconductivity": "supr-con",
    },
    "nlin": {
        "Adaptation and Self-Organizing Systems": "AO",
        "Chaotic Dynamics": "CD",
        "Cellular Automata and Lattice Gases": "CG",
        "Pattern Formation and Solitons": "PS",
        "Exactly Solvable and Integrable Systems": "SI",
    },
}


def subject_to_category(subject: str) -> str | None:
    """An OAI-DC subject name as an arXiv category code; None for MSC/PACS codes and unknown names.

    Example:
        >>> subject_to_category("Astrophysics - Solar and Stellar Astrophysics")
        'astro-ph.SR'
        >>> subject_to_category("Physics - Space Physics"), subject_to_category("Mathematics - Dynamical Systems")
        ('physics.space-ph', 'math')
    """
    subject = subject.strip()
    if subject in _ARCHIVES:
        return _ARCHIVES[subject]
    archive_name, sep, sub = subject.partition(" - ")
    if not sep or archive_name not in _ARCHIVES:
        return None
    archive = _ARCHIVES[archive_name]
    code = _SUBCATEGORIES.get(archive, {}).get(sub.strip())
    return f"{archive}.{code}" if code else archive


def category_matches(categories: list[str], prefixes: tuple[str, ...]) -> bool:
    """Whether any category matches any prefix (``astro-ph`` ~ ``astro-ph.EP``, not ``math`` ~ ``math-ph``).

    Example:
        >>> category_matches(["math-ph"], ("math",)), category_matches(["hep-th"], ("hep-",))
        (False, True)
    """
    for cat in categories:
        for p in prefixes:
            if cat.startswith(p) and (len(cat) == len(p) or p[-1] in ".-" or cat[len(p)] == "."):
                return True
    return False


def parse_line(line: bytes) -> Any:
    """JSON of one snapshot line (raises ``orjson.JSONDecodeError``)."""
    return orjson.loads(line)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def snapshot_candidate(
    obj: Any, locator: str, prefixes: tuple[str, ...] = ()
) -> Candidate | Rejection | object:
    """A parsed snapshot line (either format) as a candidate, a rejection, or :data:`FILTERED`."""
    if isinstance(obj, dict):
        return _kaggle(obj, locator, prefixes)
    if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], dict):
        return _oai_dc(obj[0], obj[1], locator, prefixes)
    return Rejection(
        WRONG_TYPE, None, "line is neither a Kaggle object nor an OAI-DC [id, {...}] pair", locator, raw=obj
    )


def _kaggle(obj: dict[str, Any], locator: str, prefixes: tuple[str, ...]) -> Candidate | Rejection | object:
    # The hot loop of a multi-GB snapshot: plain dict work, no helper calls on the common path.
    get = obj.get
    cats_raw = get("categories")
    if type(cats_raw) is str:
        categories = cats_raw.split()
    elif cats_raw is None:
        categories = []
    else:
        return Rejection(
            WRONG_TYPE,
            "categories",
            f"categories is a {type(cats_raw).__name__}, expected a string",
            locator,
            id=_str_or_none(get("id")),
            raw=obj,
        )
    if prefixes and not category_matches(categories, prefixes):
        return FILTERED
    doc_id = get("id")
    meta: dict[str, Any] = {"kind": "arxiv", "format": "kaggle", "categories": categories}
    authors = get("authors")
    if type(authors) is str and authors:
        meta["authors"] = authors if len(authors) <= MAX_AUTHORS_CHARS else authors[:MAX_AUTHORS_CHARS]
    for key, out in _KAGGLE_OPTIONAL:
        v = get(key)
        if type(v) is str and v:
            meta[out] = v
    versions = get("versions")
    if type(versions) is list and versions and type(versions[0]) is dict:
        created = versions[0].get("created")
        if type(created) is str and created:
            meta["created"] = created
    url = ABS_URL + doc_id if type(doc_id) is str and doc_id else None
    return Candidate(doc_id, get("title"), get("abstract"), url, meta, locator, raw=obj)


_KAGGLE_OPTIONAL = (
    ("doi", "doi"),
    ("journal-ref", "journal_ref"),
    ("update_date", "update_date"),
    ("license", "license"),
)


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _oai_dc(
    doc_id: Any, dc: dict[str, Any], locator: str, prefixes: tuple[str, ...]
) -> Candidate | Rejection | object:
    subjects = [s for s in dc.get("subject") or [] if isinstance(s, str)]
    categories = list(dict.fromkeys(c for c in map(subject_to_category, subjects) if c))
    if prefixes and not category_matches(categories, prefixes):
        return FILTERED
    identifiers = [i for i in dc.get("identifier") or [] if isinstance(i, str)]
    doi = next((i[4:] for i in identifiers if i.lower().startswith("doi:")), None)
    creators = [c for c in dc.get("creator") or [] if isinstance(c, str)]
    dates = [d for d in dc.get("date") or [] if isinstance(d, str)]
    metadata = {
        "kind": "arxiv",
        "format": "oai_dc",
        "categories": categories,
        "subjects": subjects,
        "authors": "; ".join(creators)[:MAX_AUTHORS_CHARS] or None,
        "doi": doi,
        "created": dates[0] if dates else None,
        "update_date": dates[-1] if dates else None,
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    url = ABS_URL + doc_id if isinstance(doc_id, str) and doc_id else None
    return Candidate(
        doc_id, _first(dc.get("title")), _first(dc.get("description")), url, metadata, locator, raw=dc
    )


# ------------------------------------------------------------------------------------------------ Kaggle download
class SnapshotMissingError(FileNotFoundError):
    """The snapshot is not on disk and cannot be downloaded here; the message says exactly what to do."""


def kaggle_credentials() -> str | None:
    """Where Kaggle credentials were found (``env`` or the kaggle.json path), or None."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "env"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "env"
    cfg_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if (cfg_dir / "kaggle.json").is_file():
        return str(cfg_dir / "kaggle.json")
    return None


def ensure_snapshot(path: Path, dataset: str) -> Path:
    """Return ``path`` if it exists, else download ``dataset`` from Kaggle into its directory (when credentials and
    the ``kaggle`` package are there) or raise :class:`SnapshotMissingError` with the exact steps."""
    if path.is_file():
        return path
    where = kaggle_credentials()
    steps = (
        f"arXiv snapshot not found: {path}\n"
        "To get it, either\n"
        "  1. create a Kaggle API token (https://www.kaggle.com/settings -> API -> Create New Token), save it as\n"
        "     ~/.kaggle/kaggle.json (chmod 600) or export KAGGLE_USERNAME and KAGGLE_KEY, then\n"
        "     pip install 'st-workflow[kaggle]' and re-run (the download is automatic), or run by hand:\n"
        f"     kaggle datasets download -d {dataset} -p {path.parent} --unzip\n"
        f"  2. or download {KAGGLE_FILE} from https://www.kaggle.com/datasets/{dataset} yourself and point\n"
        "     ingest.sources.<name>.snapshot at it (st-workflow ingest arxiv --snapshot FILE)."
    )
    if where is None:
        raise SnapshotMissingError(steps + "\nNo Kaggle credentials were found (checked env and ~/.kaggle).")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # type: ignore[import-not-found]
    except ImportError:
        raise SnapshotMissingError(
            steps + f"\nKaggle credentials found ({where}) but the 'kaggle' package is not installed."
        ) from None
    from st_workflow.ingest.logs import logger as get_logger

    path.parent.mkdir(parents=True, exist_ok=True)
    get_logger().info("downloading Kaggle dataset %s into %s (several GB)", dataset, path.parent)
    api = KaggleApi()
    api.authenticate()
    api.dataset_download_files(dataset, path=str(path.parent), unzip=True, quiet=False)
    if not path.is_file():
        raise SnapshotMissingError(f"Kaggle download of {dataset} finished but {path} is still missing")
    return path
