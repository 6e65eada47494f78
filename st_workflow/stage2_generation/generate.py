"""Pair generation with Instructor: question/context pairs + search terms, or search terms only (CMR/PDS records).

:class:`PairGenerator` turns a document into a cache key and a request, and makes the Instructor call:
``max_retries`` = ``execution.max_reasks`` re-asks on validation errors (each re-ask carries the validator's message),
transport errors are retried below Instructor (:mod:`.resilience`). When the re-asks are spent the last answer can be
salvaged structurally (:attr:`PairGenerationConfig.salvage_after_reasks`) and left to the gates.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from st_workflow.config.generation import GenerationConfig
from st_workflow.schemas import normalize_whitespace
from st_workflow.stage2_generation.cache import cache_key
from st_workflow.stage2_generation.clients import sampling_kwargs
from st_workflow.stage2_generation.columns import result_schema
from st_workflow.stage2_generation.documents import Doc
from st_workflow.stage2_generation.engine import Job, JobFailed
from st_workflow.stage2_generation.models import VALIDATION_CONTEXT, GeneratedPairs, SearchTerms, schema_hash
from st_workflow.stage2_generation.prompts import cut_text, item_bounds, load_prompt
from st_workflow.stage2_generation.resilience import first_line, raise_wrapped_endpoint_error

NAMESPACE = "pairs"
QA, TERMS = "qa", "search_terms"

#: One row per document in the ``generated`` shards of stage ``llm-pairs``.
GENERATED_SCHEMA = result_schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field(
            "question_context",
            pa.list_(pa.struct([pa.field("query", pa.string()), pa.field("context", pa.string())])),
        ),
        pa.field("search_terms", pa.list_(pa.string())),
    ],
    [pa.field("kept_by_filter", pa.bool_())],
)

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.S)


class PairGenerator:
    """Keys, requests and the Instructor call for one generation config."""

    def __init__(self, gen: GenerationConfig) -> None:
        self.gen = gen
        self.cfg = gen.pairs
        self.model_name = gen.endpoint.model
        self.prompts = {QA: load_prompt(self.cfg.prompt), TERMS: load_prompt(self.cfg.search_terms_prompt)}
        self.models: dict[str, type[BaseModel]] = {QA: GeneratedPairs, TERMS: SearchTerms}
        self.schema_hashes = {t: schema_hash(m) for t, m in self.models.items()}
        self.sampling = sampling_kwargs(gen.endpoint)

    # ------------------------------------------------------------------ per document
    def task_for(self, doc: Doc) -> str:
        return TERMS if doc.source in self.cfg.search_terms_only_sources else QA

    def prompt_version(self, task: str) -> str:
        return self.prompts[task].version

    def _bounds(self, task: str, text: str) -> dict[str, int]:
        c = self.cfg
        if task == TERMS:
            tlo, thi = item_bounds(len(text), c.search_terms_min, c.search_terms_max, c.chars_per_item)
            return {"lo": 0, "hi": 0, "tlo": tlo, "thi": thi}
        lo, hi = item_bounds(len(text), c.min_items, c.max_items, c.chars_per_item)
        return {"lo": lo, "hi": hi, "tlo": lo, "thi": hi}

    def job(self, doc: Doc) -> Job:
        """The cache key and request for ``doc``."""
        task = self.task_for(doc)
        text = cut_text(doc.text, self.cfg.max_doc_chars)
        bounds = self._bounds(task, text)
        key = cache_key(
            kind="pairs",
            task=task,
            content_hash=doc.content_hash,
            prompt_version=self.prompt_version(task),
            schema=self.schema_hashes[task],
            model=self.model_name,
            sampling=self.sampling,
            bounds=bounds,
            max_doc_chars=self.cfg.max_doc_chars,
        )
        messages = self.prompts[task].render(title=doc.title, source=doc.source, text=text, **bounds)
        vctx: dict[str, Any] = {"terms": (bounds["tlo"], bounds["thi"])}
        if task == QA:
            vctx["pairs"] = (bounds["lo"], bounds["hi"])
            vctx["document"] = normalize_whitespace(text)
        size = sum(len(m["content"]) for m in messages)
        return Job(
            key=key, source=doc.source, payload={"task": task, "messages": messages, "vctx": vctx}, size=size
        )

    # ------------------------------------------------------------------ the call
    async def call(self, job: Job, client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """One Instructor call with bounded re-asks; returns (answer, meta) or raises :class:`JobFailed`."""
        from instructor.core import InstructorRetryException

        p = job.payload
        model = self.models[p["task"]]
        # Not Instructor's context=: that would also render the prompt as a Jinja template.
        token = VALIDATION_CONTEXT.set(p["vctx"])
        try:
            obj = await client.create(
                response_model=model,
                messages=p["messages"],
                max_retries=self.gen.execution.max_reasks,
                model=self.model_name,
                **self.sampling,
            )
        except InstructorRetryException as e:
            raise_wrapped_endpoint_error(e)
            salvaged = None
            if self.cfg.salvage_after_reasks:
                salvaged = self._salvage(model, getattr(e, "last_completion", None), p["vctx"])
            if salvaged is not None:
                return salvaged, {"status": "salvaged", "error": first_line(e)}
            raise JobFailed("invalid_output", first_line(e)) from None
        finally:
            VALIDATION_CONTEXT.reset(token)
        return obj.model_dump(mode="json"), {"status": "ok"}

    @staticmethod
    def _salvage(model: type[BaseModel], completion: Any, vctx: dict[str, Any]) -> dict[str, Any] | None:
        raw = answer_text(completion)
        if raw is None:
            return None
        try:
            obj = model.model_validate_json(raw, context={**vctx, "lenient": True})
        except ValidationError:
            return None
        value = obj.model_dump(mode="json")
        if not value.get("question_context") and not value.get("search_terms"):
            return None
        return value


def answer_text(completion: Any) -> str | None:
    """The JSON an OpenAI chat completion answered with: the first tool call's arguments, else the content."""
    try:
        msg = completion.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return None
    calls = getattr(msg, "tool_calls", None) or []
    if calls:
        return calls[0].function.arguments
    content = getattr(msg, "content", None)
    if not content:
        return None
    content = _FENCE.sub("", content.strip())
    try:
        json.loads(content)
    except ValueError:
        return None
    return content
