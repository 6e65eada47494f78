"""The relevancy filter: a Pydantic-AI agent judges each document's fitness for grounded question answering.

Output ``ContentQuality{quality: VERY_GOOD|GOOD|POOR, reasons}``; the keep-set is ``generation.filter.keep``
(default VERY_GOOD and GOOD), applied in code and recorded in the stage output, not decided by hand afterwards.
The agent gets ``execution.max_reasks`` output retries; transport errors are retried below it (:mod:`.resilience`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from st_workflow.config.generation import GenerationConfig
from st_workflow.stage2_generation.cache import cache_key
from st_workflow.stage2_generation.clients import sampling_kwargs
from st_workflow.stage2_generation.columns import result_schema
from st_workflow.stage2_generation.documents import Doc
from st_workflow.stage2_generation.engine import Job, JobFailed
from st_workflow.stage2_generation.models import ContentQuality, schema_hash
from st_workflow.stage2_generation.prompts import cut_text, load_prompt
from st_workflow.stage2_generation.resilience import first_line, raise_wrapped_endpoint_error

NAMESPACE = "relevancy"

#: One row per judged document in ``judgements.parquet`` of stage ``llm-filter``.
JUDGEMENT_SCHEMA = result_schema(
    [
        pa.field("quality", pa.string()),
        pa.field("reasons", pa.list_(pa.string())),
        pa.field("kept", pa.bool_(), nullable=False),
    ]
)


class RelevancyJudge:
    """Keys, requests and the Pydantic-AI call for one generation config."""

    def __init__(self, gen: GenerationConfig) -> None:
        self.gen = gen
        self.cfg = gen.filter
        self.model_name = gen.endpoint.model
        self.prompt = load_prompt(self.cfg.prompt)
        self.schema = schema_hash(ContentQuality)
        self.sampling = sampling_kwargs(gen.endpoint)

    @property
    def prompt_version(self) -> str:
        return self.prompt.version

    def judges(self, doc: Doc) -> bool:
        """Whether ``doc``'s source is judged (``filter.sources`` empty = all); others pass unjudged."""
        return not self.cfg.sources or doc.source in self.cfg.sources

    def job(self, doc: Doc) -> Job:
        text = cut_text(doc.text, self.cfg.max_doc_chars)
        key = cache_key(
            kind="relevancy",
            content_hash=doc.content_hash,
            prompt_version=self.prompt_version,
            schema=self.schema,
            model=self.model_name,
            sampling=self.sampling,
            max_doc_chars=self.cfg.max_doc_chars,
        )
        user = self.prompt.render(title=doc.title, source=doc.source, text=text)[1]["content"]
        return Job(
            key=key, source=doc.source, payload={"prompt": user}, size=len(user) + len(self.prompt.system)
        )

    def agent(self, client: Any) -> Any:
        from st_workflow.stage2_generation.clients import relevancy_agent

        return relevancy_agent(client, self.model_name, self.prompt.system, self.gen.execution.max_reasks)

    async def call(self, job: Job, agent: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """One agent run; returns (verdict, meta) or raises :class:`JobFailed`."""
        from pydantic_ai.exceptions import UnexpectedModelBehavior

        settings = dict(self.sampling)
        try:
            result = await agent.run(job.payload["prompt"], model_settings=settings)
        except Exception as e:
            raise_wrapped_endpoint_error(e)
            if isinstance(e, UnexpectedModelBehavior):
                raise JobFailed("invalid_output", first_line(e)) from None
            raise
        return result.output.model_dump(mode="json"), {"status": "ok"}

    def kept(self, quality: str | None) -> bool:
        return quality is not None and quality in self.cfg.keep
