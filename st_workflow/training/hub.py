"""Pushing the promoted model, and optionally the pairs dataset with a dataset card, to the Hugging Face Hub.

The push used to run inside the train stage, before its manifest was written: a network error retried the whole
stage (a retrain without checkpoints), and the final model was pushed even when promotion kept another one. Now
``push_task`` (its own task, after promotion) uploads whatever ``<run>/promoted`` points at, and a failed upload
retries only the upload. Errors a retry cannot fix (offline mode, a refused or missing token, an unknown namespace)
raise :class:`HubPushError` at once, naming the repository and the token option, never the token.

The endpoint is ``HF_ENDPOINT`` (read by ``huggingface_hub`` and ``datasets`` when imported), the Hub by default.

Example::

    dataset_url = push_dataset(cfg, pairs_manifest)          # with training.hub.push_dataset
    model_url = push_model(cfg, cfg.run_dir / "promoted", dataset_repo=cfg.training.hub.dataset_repo_id)
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_workflow.config import PipelineConfig

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from st_workflow.manifest import Manifest

#: Hub ``size_categories`` buckets (upper bound exclusive, label).
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


class HubPushError(RuntimeError):
    """A push that a retry cannot fix (offline mode, a refused token, a repository the token may not write)."""


def _token_option(cfg: PipelineConfig) -> str:
    ref = cfg.training.hub.token
    where = [f"the environment variable {ref.env}"] if ref.env else []
    where += [f"the Prefect Secret block {ref.prefect_block!r}"] if ref.prefect_block else []
    return f"training.hub.token ({' or '.join(where) or 'not configured'})"


def _api(cfg: PipelineConfig) -> HfApi:
    """An ``HfApi`` with the configured token; fails at once when the process is in Hub offline mode."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise HubPushError(
            "training.hub.push needs the Hub, but this process is in Hub offline mode (hf_offline: true or "
            "HF_HUB_OFFLINE=1); set hf_offline: false for a run that pushes"
        )
    token = cfg.training.hub.token.resolve()
    return HfApi(token=token.get_secret_value() if token else None)


@contextmanager
def _refusals(cfg: PipelineConfig, what: str, repo_id: str) -> Iterator[None]:
    """Turn the Hub's 401/403 (and a 404 on our own namespace) into a clear :class:`HubPushError`."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            reason = "rejected the token" if status == 401 else "refused write access with this token"
            raise HubPushError(
                f"the Hub {reason} ({status}) pushing the {what} to {repo_id}: set {_token_option(cfg)} to a "
                f"token with write access to the namespace {repo_id.split('/', 1)[0]!r}"
            ) from e
        if status == 404:
            raise HubPushError(
                f"the Hub has no {what} repository {repo_id} (404), and it was not created"
            ) from e
        raise


def _local_files(model_dir: Path) -> dict[str, Path]:
    """Files of a saved model, by path in the repo (hidden files and folders are not part of the model)."""
    root = model_dir.resolve()
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def model_card(card_text: str, dataset_repo: str | None) -> str:
    """The saved model card, with the pairs dataset in its metadata and linked in its text when it was pushed."""
    from huggingface_hub import ModelCard

    if not dataset_repo:
        return card_text
    card = ModelCard(card_text)
    datasets = list(card.data.get("datasets") or [])
    if dataset_repo not in datasets:
        card.data.datasets = [*datasets, dataset_repo]
    link = f"Training pairs: [{dataset_repo}](https://huggingface.co/datasets/{dataset_repo})"
    if link not in card.text:
        card.text = f"\n{link}\n{card.text}"
    return str(card)


def push_model(cfg: PipelineConfig, model_dir: Path, dataset_repo: str | None = None) -> str:
    """Make ``training.hub.repo_id`` hold exactly the model in ``model_dir`` (one commit; files that are not in the
    model are deleted, unchanged ones are skipped); returns the repository URL.

    With ``dataset_repo`` the uploaded model card names and links that dataset (the local card is left as is).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    hub = cfg.training.hub
    repo_id = str(hub.repo_id)
    api = _api(cfg)
    files = _local_files(Path(model_dir))
    if "modules.json" not in files:
        raise HubPushError(f"{model_dir} is not a saved sentence-transformers model (no modules.json)")
    with _refusals(cfg, "model", repo_id):
        url = api.create_repo(repo_id, private=hub.private, exist_ok=True, repo_type="model")
        ops: list[Any] = []
        for rel, path in files.items():
            content: str | bytes = str(path)
            if rel == "README.md":
                content = model_card(path.read_text(encoding="utf-8"), dataset_repo).encode("utf-8")
            ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
        remote = set(api.list_repo_files(repo_id, repo_type="model"))
        ops += [
            CommitOperationDelete(path_in_repo=p) for p in sorted(remote - set(files) - {".gitattributes"})
        ]
        api.create_commit(
            repo_id, operations=ops, commit_message=f"Upload promoted model ({Path(model_dir).name})"
        )
    return str(url)


def _counts(values: list[Any]) -> dict[str, int]:
    return dict(sorted(collections.Counter(str(v) for v in values).items(), key=lambda kv: (-kv[1], kv[0])))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` label for ``n`` rows."""
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>100M")


def dataset_card(cfg: PipelineConfig, rows: int, sources: dict[str, int], types: dict[str, int]) -> str:
    """A dataset card (README.md with YAML metadata) for the pairs dataset: license, task, size, where pairs
    come from and which kinds they are."""
    from huggingface_hub import DatasetCardData

    hub = cfg.training.hub
    data = DatasetCardData(
        license=hub.dataset_license,
        language=["en"],
        task_categories=["sentence-similarity"],
        size_categories=[size_category(rows)],
        pretty_name=f"{cfg.run_name} training pairs",
        tags=["sentence-transformers", "retrieval", "st-workflow"],
    )
    table = "\n".join(f"| {k} | {v} |" for k, v in sources.items())
    kinds = "\n".join(f"| {k} | {v} |" for k, v in types.items())
    model = f" [{hub.repo_id}](https://huggingface.co/{hub.repo_id})" if hub.push and hub.repo_id else ""
    text = f"""# {cfg.run_name} training pairs

(anchor, positive[, negative]) pairs that fine-tuned the sentence-embedding model{model}, built by st-workflow's
pipeline: {rows} pairs, none of which leaks into the run's benchmarks (no benchmark query, no text of a document
judged relevant to one, near-duplicates included). {cfg.description.strip()}

## Sources

| source | pairs |
|---|---|
{table}

## Pair types

| type | pairs |
|---|---|
{kinds}

## License

The texts are those of the ingested sources: NASA CMR collection and PDS product metadata, and arXiv titles and
abstracts, which keep the licenses their authors chose. Check a source's terms before redistributing its texts.
"""
    return f"---\n{data.to_yaml()}\n---\n\n{text}"


def push_dataset(cfg: PipelineConfig, pairs: Manifest) -> str:
    """Push the run's pairs Parquet to ``training.hub.dataset_repo_id`` with ``datasets`` (``push_to_hub``) and a
    dataset card; returns the dataset URL.

    The card is committed first: ``push_to_hub`` keeps an existing card and only adds its ``dataset_info`` and
    ``configs`` to the metadata, so the card ends with both.
    """
    import pyarrow.parquet as pq
    from datasets import Dataset

    hub = cfg.training.hub
    repo_id = str(hub.dataset_repo_id)
    api = _api(cfg)
    parquet = pairs.path("pairs")
    table = pq.read_table(parquet, columns=["source", "type"])
    card = dataset_card(
        cfg, table.num_rows, _counts(table["source"].to_pylist()), _counts(table["type"].to_pylist())
    )
    token = hub.token.resolve()
    with _refusals(cfg, "dataset", repo_id):
        url = api.create_repo(repo_id, private=hub.private, exist_ok=True, repo_type="dataset")
        api.upload_file(
            path_or_fileobj=card.encode("utf-8"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="Dataset card",
        )
        ds = Dataset.from_parquet(str(parquet), cache_dir=str(cfg.cache_path / "datasets"))
        ds.push_to_hub(
            repo_id,
            private=hub.private,
            token=token.get_secret_value() if token else None,
            commit_message=f"Upload pairs of run {cfg.run_name}",
        )
    return str(url)
