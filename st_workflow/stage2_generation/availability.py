"""Whether the LLM stages run: a light module, so that deciding costs no import of the LLM client stack."""

from __future__ import annotations

from st_workflow.config import PipelineConfig

__all__ = ["llm_configured", "llm_skip_reason"]


def llm_configured(cfg: PipelineConfig) -> bool:
    """True when an LLM endpoint is configured (``generation.endpoint.base_url``)."""
    return cfg.generation.endpoint.configured


def llm_skip_reason(cfg: PipelineConfig) -> str | None:
    """One log line saying why the LLM stages are skipped, or ``None`` when they run.

    Example:
        >>> from st_workflow.config import load_config
        >>> llm_skip_reason(load_config(None, ["generation.endpoint.base_url=null"])).startswith("LLM stages skipped")
        True
    """
    if not llm_configured(cfg):
        return (
            "LLM stages skipped: no endpoint configured (set generation.endpoint.base_url, e.g. "
            "--set generation.endpoint.base_url=https://api.openai.com/v1, and export the API key variable "
            f"{cfg.generation.endpoint.api_key.env or '(see generation.endpoint.api_key)'})"
        )
    return None
