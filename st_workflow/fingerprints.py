"""Model fingerprints: the one place that says what identifies a model in a cache key.

A cache key never uses a model's *name*: a retrained ``fine_tuned`` directory must get new keys, an unchanged
checkpoint evaluated under another name must reuse them, and a new upload to a hub repository must move every key
built on it. So a model is identified by its content, in one of these ways:

* :func:`weights_hash`: a local directory by what it *computes*: weights, configs, tokenizer and module files, not
  optimizer or trainer state, RNG states, model cards or lineage (evaluation, mining and the teacher store);
* :func:`tree_hash`: a local directory by *every* file in it (the ``train`` stage's base model: it has always
  been keyed so, and a changed key there means retraining);
* :func:`hub_fingerprint`: a hub id by its resolved commit sha, nothing downloaded; an id whose revision is unknown
  (offline, never fetched) falls back to a hash of the id alone (:func:`hub_id_hash`);
* :func:`model_hash` / :func:`model_fingerprint`: a name or path, whichever it is (directory: ``weights_hash`` /
  ``tree_hash``; hub id: ``hub_fingerprint``);
* :func:`module_hash`: a model *in memory* (module structure and every tensor), when there is no directory;
* :func:`tokenizer_fingerprint`: only what tokenizing reads (pre-tokenized caches survive a change of weights).

Every value here is part of cache keys already on users' disks: changing how one is computed re-embeds, re-mines or
retrains. ``tests/core/test_fingerprints.py`` pins them.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> before = weights_hash(d)
    >>> _ = (d / "optimizer.pt").write_bytes(b"state")  # training state: not what the model computes
    >>> weights_hash(d) == before, tree_hash(d) == before
    (True, False)
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from st_workflow.hashing import sha256_file, sha256_text, sha256_tree, stable_hash

if TYPE_CHECKING:
    import torch

__all__ = [
    "TOKENIZER_FILES",
    "hub_fingerprint",
    "hub_id_hash",
    "model_fingerprint",
    "model_hash",
    "module_hash",
    "tokenizer_fingerprint",
    "tree_hash",
    "weights_hash",
]

logger = logging.getLogger(__name__)

#: Files in a model/checkpoint directory that do not change what the model computes.
NOT_WEIGHTS = frozenset(
    {
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "trainer_state.json",
        "training_args.bin",
        "README.md",
        "lineage.json",
        "eval",
    }
)
#: The files tokenizing reads (and the sentence-transformers configs that set lower-casing and lengths).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_weights_memo: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


# ---------------------------------------------------------------------------------------------- local directories
def _weight_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root)
        if rel.parts[0] in NOT_WEIGHTS or rel.name.startswith(("rng_state", ".")) or ".tmp-" in rel.name:
            continue
        files.append(p)
    return files


def weights_hash(model_dir: str | Path) -> str:
    """Content hash of a model directory: weights, configs, tokenizer and module files (not optimizer state,
    trainer state or model cards), memoised on (path, size, mtime) for the process.

    Raises:
        FileNotFoundError: the directory holds no file to hash.

    Example:
        >>> from st_workflow.models import resolve_model
        >>> len(weights_hash(resolve_model("sentence-transformers/all-MiniLM-L6-v2")))
        64
    """
    root = Path(model_dir).resolve()
    files = _weight_files(root)
    if not files:
        raise FileNotFoundError(f"model directory {root} has no files to hash")
    stat = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(root), stat)
    if memo_key not in _weights_memo:
        parts = [f"{rel}\0{sha256_file(root / rel)}" for rel, _, _ in stat]
        _weights_memo[memo_key] = sha256_text("\n".join(parts))
    return _weights_memo[memo_key]


@cache
def _tree_hash(path: str, mtime: float) -> str:
    return sha256_tree(path)


def tree_hash(model_dir: str | Path) -> str:
    """Hash of every file of a model directory (:func:`st_workflow.hashing.sha256_tree`), memoised for the process
    on the path and the newest file's mtime."""
    p = Path(model_dir)
    return _tree_hash(str(p), max(q.stat().st_mtime for q in p.rglob("*") if q.is_file()))


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """Content hash of the tokenizer files (:data:`TOKENIZER_FILES`) of a model directory; a hub id (not a
    directory): :func:`hub_id_hash`."""
    root = Path(model_dir)
    if not root.is_dir():
        return hub_id_hash(str(model_dir))
    parts = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name in TOKENIZER_FILES:
            parts[p.relative_to(root).as_posix()] = sha256_file(p)
    return stable_hash(parts)


# ---------------------------------------------------------------------------------------------- hub ids
def hub_id_hash(repo_id: str) -> str:
    """The fallback identity of a hub model whose revision is unknown: its id alone (cannot tell revisions
    apart)."""
    return stable_hash({"hub_id": repo_id})


def hub_fingerprint(repo_id: str, revision: str = "main", timeout_s: float = 20.0) -> str | None:
    """Identity of a hub model for cache keys: its id and resolved commit sha (no download); None when unknown.

    A new upload to the repository moves the sha and so every key built on it, which a hash of the name alone
    could not notice. The sha comes from :func:`st_workflow.models.resolve.hub_revision` (the Hub, or the local
    cache offline).
    """
    from st_workflow.models.resolve import hub_revision

    sha = hub_revision(repo_id, revision, timeout_s)
    return stable_hash({"hub_id": repo_id, "revision": sha}) if sha else None


def _hub_identity(repo_id: str, *, warn: bool) -> str:
    if (fp := hub_fingerprint(repo_id)) is not None:
        return fp
    if warn:
        logger.warning("model %s has no known hub revision; its cache key uses the id only", repo_id)
    return hub_id_hash(repo_id)


# ---------------------------------------------------------------------------------------------- any name or path
def model_hash(name_or_path: str, resolved: str | None = None) -> str:
    """What a model computes, by name or path: :func:`weights_hash` of the directory (``resolved``, the
    resolver's local copy, when given); for a hub id, its :func:`hub_fingerprint` (nothing is downloaded).

    A hub id whose revision cannot be had falls back to :func:`hub_id_hash` (logged).
    """
    local = Path(resolved or name_or_path)
    if local.is_dir():
        return weights_hash(local)
    return _hub_identity(name_or_path, warn=True)


def model_fingerprint(model_path: str) -> str:
    """Every file of a local model directory (:func:`tree_hash`); a hub id: as :func:`model_hash` (its resolved
    commit, its id when that is unknown). The ``train`` stage's base-model key."""
    p = Path(model_path)
    if not p.is_dir():
        return _hub_identity(model_path, warn=False)
    return tree_hash(p)


# ---------------------------------------------------------------------------------------------- in memory
def module_hash(model: torch.nn.Module) -> str:
    """Hash of a model *in memory*: its module structure (pooling, normalisation...) and every weight tensor.

    Used when there is no directory to hash, e.g. evaluating inside a training loop, where the weights change
    between calls and a name would be wrong.
    """
    import torch

    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
