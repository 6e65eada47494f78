"""Building the LLM clients from config: one ``AsyncOpenAI`` (no SDK retries) under Instructor and Pydantic AI.

The API key comes from ``generation.endpoint.api_key`` (an environment variable or a Prefect Secret block) as a
``SecretStr``; it is handed to the OpenAI client and nowhere else. Local servers (vLLM, Ollama) usually need no key:
then a placeholder is sent, which such servers ignore.
"""

from __future__ import annotations

from typing import Any

import openai
from pydantic import SecretStr

from st_workflow.config.generation import GenerationConfig, LLMEndpointConfig
from st_workflow.stage2_generation.resilience import RetryPolicy, SlotFactory, install, no_slot

#: Sent when no key is configured (OpenAI itself then answers 401, which stops the stage with a clear message).
NO_KEY_PLACEHOLDER = "sk-no-key-configured"


def resolve_api_key(endpoint: LLMEndpointConfig) -> SecretStr | None:
    """The endpoint's API key, or ``None`` when it is configured nowhere."""
    return endpoint.api_key.resolve()


def retry_policy(gen: GenerationConfig) -> RetryPolicy:
    ex = gen.execution
    return RetryPolicy(max_attempts=ex.max_attempts, base_s=ex.backoff_base_s, max_s=ex.backoff_max_s)


def make_openai_client(
    gen: GenerationConfig, api_key: SecretStr | None, slot: SlotFactory = no_slot, budget: Any = None
) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` for the configured endpoint whose chat completions go through our retry layer and, with
    a run ``budget`` (:class:`~.budget.RunBudget`), reserve from it per HTTP attempt (under the retries)."""
    ep = gen.endpoint
    if not ep.base_url:
        raise ValueError("generation.endpoint.base_url is not set")
    key = api_key.get_secret_value() if api_key is not None else NO_KEY_PLACEHOLDER
    client = openai.AsyncOpenAI(
        base_url=ep.base_url,
        api_key=key,
        max_retries=0,
        timeout=ep.timeout_s,
    )
    if budget is not None:
        client.chat.completions.create = budget.meter(client.chat.completions.create)  # type: ignore[method-assign]
    return install(client, retry_policy(gen), slot)


def sampling_kwargs(ep: LLMEndpointConfig) -> dict[str, Any]:
    """Sampling parameters sent with every request (and hashed into cache keys)."""
    out: dict[str, Any] = {"temperature": ep.temperature}
    if ep.max_tokens is not None:
        out["max_tokens"] = ep.max_tokens
    if ep.seed is not None:
        out["seed"] = ep.seed
    return out


def instructor_client(client: openai.AsyncOpenAI, mode: str) -> Any:
    """Instructor over the client, in tool-calling or JSON mode."""
    import instructor

    return instructor.from_openai(
        client, mode=instructor.Mode.TOOLS if mode == "tools" else instructor.Mode.JSON
    )


def relevancy_agent(client: openai.AsyncOpenAI, model: str, instructions: str, output_retries: int) -> Any:
    """The Pydantic-AI judge: ``Agent(OpenAIChatModel(...), output_type=ContentQuality)`` with tool output."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from st_workflow.stage2_generation.models import ContentQuality

    chat_model = OpenAIChatModel(model, provider=OpenAIProvider(openai_client=client))
    return Agent(
        chat_model,
        output_type=ContentQuality,
        instructions=instructions,
        retries={"output": output_retries, "tools": output_retries},
    )
