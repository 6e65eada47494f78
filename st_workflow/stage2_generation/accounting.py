"""Token usage and cost of the LLM work, per document and per stage.

Every HTTP answer's ``usage`` is added to the :class:`CallUsage` of the document being processed (re-asks and
answers that failed validation included: they were paid for). A stage's :class:`Ledger` sums them per source for
its report. The budget cap is not here: it is the run's :class:`~.budget.RunBudget`, shared by every stage, retry,
shard and process of the run, which each request reserves from before it is sent; the ledger only carries it and
remembers that it was hit.

Example:
    >>> from st_workflow.config.generation import Price
    >>> led = Ledger(Price(input_per_mtok=1.0, output_per_mtok=2.0))
    >>> u = CallUsage(prompt_tokens=1000, completion_tokens=500, requests=1)
    >>> led.record(u, "cmr"); round(led.spent_usd, 6)
    0.002
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from st_workflow.config.generation import Price

if TYPE_CHECKING:
    from st_workflow.stage2_generation.budget import RunBudget


@dataclasses.dataclass
class CallUsage:
    """What one document's LLM work cost: tokens, paid answers, HTTP attempts and retries by cause."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    """Answers received (each one is billed)."""
    attempts: int = 0
    """HTTP attempts, failed ones included."""
    retries: Counter[str] = dataclasses.field(default_factory=Counter)
    """Transport retries by cause (rate_limit, server_error, timeout, connection)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_usage(self, usage: Any) -> None:
        """Add an OpenAI ``usage`` object (or dict); a missing usage still counts the request."""
        self.requests += 1
        if usage is None:
            return
        get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
        self.prompt_tokens += int(get("prompt_tokens") or 0)
        self.completion_tokens += int(get("completion_tokens") or 0)

    def cost(self, price: Price | None) -> float:
        """USD for these tokens at ``price`` (0 when the model has no price)."""
        if price is None:
            return 0.0
        return (
            self.prompt_tokens * price.input_per_mtok + self.completion_tokens * price.output_per_mtok
        ) / 1e6

    def to_dict(self, price: Price | None) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
            "cost_usd": round(self.cost(price), 8),
        }


class Ledger:
    """What one stage run spent, per source, and the run budget it draws on (one event loop: no locking needed).

    Args:
        price: The model's price (``None``: unpriced, its calls count as $0 here; a USD cap then refuses to start).
        budget: The run's shared budget (``None``: no cap); the engine hands it to the client, which meters
            every request against it.
    """

    def __init__(self, price: Price | None, budget: RunBudget | None = None) -> None:
        self.price = price
        self.budget = budget
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.requests = 0
        self.retries: Counter[str] = Counter()
        self.by_source: dict[str, Counter[str]] = defaultdict(Counter)
        self._by_source_usd: dict[str, float] = defaultdict(float)
        self.budget_hit = False
        """Set when the run budget refused a request: no further job of this stage is attempted."""

    @property
    def capped(self) -> bool:
        return self.budget is not None

    def record(self, usage: CallUsage, source: str, size: int = 0) -> None:
        """Add one document's spending (``size``, its prompt characters, is accepted for callers' convenience)."""
        cost = usage.cost(self.price)
        self.calls += 1
        self.requests += usage.requests
        self.spent_usd += cost
        self.spent_tokens += usage.total_tokens
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.retries.update(usage.retries)
        s = self.by_source[source]
        s["calls"] += 1
        s["prompt_tokens"] += usage.prompt_tokens
        s["completion_tokens"] += usage.completion_tokens
        self._by_source_usd[source] += cost

    def summary(self) -> dict[str, Any]:
        """JSON-able spending of this stage run, plus the run budget's state (``run_budget``) when capped."""
        b = self.budget
        return {
            "calls": self.calls,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.spent_tokens,
            "cost_usd": round(self.spent_usd, 6),
            "retries": dict(self.retries),
            "budget_usd": b.budget_usd if b else None,
            "budget_tokens": b.budget_tokens if b else None,
            "budget_hit": self.budget_hit,
            "run_budget": b.snapshot() if b else None,
            "by_source": {
                s: {**dict(c), "cost_usd": round(self._by_source_usd[s], 6)}
                for s, c in sorted(self.by_source.items())
            },
        }
