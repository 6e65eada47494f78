"""Model resolution (offline hub ids, tiny random BERTs) and loading."""

from st_workflow.models.resolve import load_model, resolve_model

__all__ = ["load_model", "resolve_model"]
