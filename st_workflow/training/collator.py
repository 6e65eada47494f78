"""Collators: dynamic padding of pre-tokenized rows, and sentence-transformers' own on-the-fly path.

sentence-transformers 6.2's ``SentenceTransformerDataCollator`` tokenizes every text column at collate time, so a
pre-tokenized dataset needs its own collator (platform notes §6). :class:`PreTokenizedCollator` takes rows holding
``{column}_input_ids`` (unpadded token ids written by :mod:`st_workflow.training.pretokenize`) and emits exactly
what the default collator would have emitted for the same texts (``{column}_input_ids``,
``{column}_attention_mask``, ``{column}_token_type_ids`` when the tokenizer uses them, ``{column}_modality``),
padded only to the longest row of the batch (the original padded everything to 1024).

Both collators also pass the row ids on as ``row_index`` so the trainer can trace exactly which rows it trained on.

Example:
    >>> c = PreTokenizedCollator(pad_token_id=0, token_type_ids=False)
    >>> b = c([{"anchor_input_ids": [5, 6, 7], "row": 0}, {"anchor_input_ids": [8], "row": 1}])
    >>> b["anchor_input_ids"].tolist(), b["anchor_attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

ROW_KEY = "row"
ROW_INDEX = "row_index"
_SUFFIX = "_input_ids"


@dataclass
class PreTokenizedCollator:
    """Pad pre-tokenized columns per batch.

    Args:
        pad_token_id: the tokenizer's padding id.
        token_type_ids: also emit all-zero ``token_type_ids`` (BERT-style tokenizers do on the fly).
        padding_side: ``right`` (encoders) or ``left`` (decoder-style models).
        pad_to_multiple_of: round the padded length up (e.g. 8 for tensor cores on GPU).
    """

    pad_token_id: int
    token_type_ids: bool = True
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    valid_label_columns: list[str] = field(default_factory=list)
    teacher: dict[str, Any] | None = None
    """Per source, a ``(rows, columns, dim)`` array of teacher embeddings: emitted as ``label`` for the batch's
    rows (the distillation term's targets, precomputed instead of a teacher forward per step)."""

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(s) for s in seqs), default=0)
        if self.pad_to_multiple_of and width % self.pad_to_multiple_of:
            width += self.pad_to_multiple_of - width % self.pad_to_multiple_of
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s)
            if not n:
                continue
            if self.padding_side == "left":
                ids[i, width - n :] = torch.as_tensor(s, dtype=torch.long)
                mask[i, width - n :] = 1
            else:
                ids[i, :n] = torch.as_tensor(s, dtype=torch.long)
                mask[i, :n] = 1
        return ids, mask

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            return {}
        batch: dict[str, Any] = {}
        first = features[0]
        if "dataset_name" in first:
            batch["dataset_name"] = first["dataset_name"]
        for key in first:
            if not key.endswith(_SUFFIX):
                continue
            col = key[: -len(_SUFFIX)]
            ids, mask = self._pad([f[key] for f in features])
            batch[f"{col}_input_ids"] = ids
            if self.token_type_ids:
                batch[f"{col}_token_type_ids"] = torch.zeros_like(ids)
            batch[f"{col}_attention_mask"] = mask
            batch[f"{col}_modality"] = "text"
        if ROW_KEY in first:
            rows = [f[ROW_KEY] for f in features]
            batch[ROW_INDEX] = torch.tensor(rows, dtype=torch.long)
            if self.teacher is not None and first.get("dataset_name") in self.teacher:
                batch["label"] = torch.from_numpy(self.teacher[first["dataset_name"]][rows]).float()
        return batch


@dataclass
class OnTheFlyCollator(SentenceTransformerDataCollator):
    """sentence-transformers' default collator (tokenizes at collate time), minus the ``row`` id column."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = (
            [f.pop(ROW_KEY) for f in features if ROW_KEY in f]
            if features and ROW_KEY in features[0]
            else None
        )
        batch = super().__call__(features)
        if rows is not None:
            batch[ROW_INDEX] = torch.tensor(rows, dtype=torch.long)
        return batch
