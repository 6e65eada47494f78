"""Token usage, cost and the budget cap.

Every HTTP answer's ``usage`` is added to the :class:`CallUsage` of the document being processed (re-asks and
answers that failed validation included: they were paid for). A stage's :class:`Ledger` sums them per source and
refuses to start a call whose estimated cost would cross the budget, so a capped run stops *before* overspending and
keeps everything done so far.

Example:
    >>> from st_workflow.config.generation import Price
    >>> led = Ledger(Price(input_per_mtok=1.0, output_per_mtok=2.0), budget_usd=0.0025)
    >>> u = CallUsage(prompt_tokens=1000, completion_tokens=500, requests=1)
    >>> led.record(u, "cmr", size=4000); round(led.spent_usd, 6)
    0.002
    >>> led.reserve(size=4000, inflight=0)[0]   # a call of the same size would bring it to 0.004 > 0.0025
    'stop'
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Any

from st_workflow.config.generation import Price


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
    """Spending of one stage run, per source, with the budget cap (one event loop: no locking needed).

    Before a call starts, :meth:`reserve` estimates its cost from the prompt size at the highest cost per prompt
    character seen so far (a conservative rate), and admits it only if spent + reserved for calls in flight + this
    estimate stays within the caps. With a cap set, the very first call runs alone, as there is nothing to estimate
    from yet.
    """

    def __init__(
        self, price: Price | None, budget_usd: float | None = None, budget_tokens: int | None = None
    ):
        self.price = price
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
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
        self.reserved_usd = 0.0
        self.reserved_tokens = 0.0
        self._usd_per_char = 0.0
        self._tokens_per_char = 0.0
        self._max_usd = 0.0
        self._max_tokens = 0

    @property
    def capped(self) -> bool:
        return self.budget_usd is not None or self.budget_tokens is not None

    def record(self, usage: CallUsage, source: str, size: int = 0) -> None:
        """Add one document's spending (``size``: its prompt characters, to refine the estimates)."""
        cost = usage.cost(self.price)
        self.calls += 1
        self.requests += usage.requests
        self.spent_usd += cost
        self.spent_tokens += usage.total_tokens
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.retries.update(usage.retries)
        self._max_usd = max(self._max_usd, cost)
        self._max_tokens = max(self._max_tokens, usage.total_tokens)
        if size > 0:
            self._usd_per_char = max(self._usd_per_char, cost / size)
            self._tokens_per_char = max(self._tokens_per_char, usage.total_tokens / size)
        s = self.by_source[source]
        s["calls"] += 1
        s["prompt_tokens"] += usage.prompt_tokens
        s["completion_tokens"] += usage.completion_tokens
        self._by_source_usd[source] += cost

    def estimate(self, size: int) -> tuple[float, float]:
        """Expected (USD, tokens) of a call with a ``size``-character prompt (conservative)."""
        if size > 0 and self._tokens_per_char > 0:
            return size * self._usd_per_char, size * self._tokens_per_char
        return self._max_usd, float(self._max_tokens)

    def reserve(self, size: int, inflight: int) -> tuple[str, float, float]:
        """Decide whether a call may start: ``("go", usd, tokens)`` reserves its estimate (give it back with
        :meth:`release` when the call ends), ``("wait", 0, 0)`` until a first call gives an estimate, or
        ``("stop", 0, 0)``; once stopped, always stopped for the run."""
        if self.budget_hit:
            return "stop", 0.0, 0.0
        if not self.capped:
            return "go", 0.0, 0.0
        if self.calls == 0:
            if (self.budget_usd is not None and self.budget_usd <= 0) or (
                self.budget_tokens is not None and self.budget_tokens <= 0
            ):
                self.budget_hit = True
                return "stop", 0.0, 0.0
            return ("go", 0.0, 0.0) if inflight == 0 else ("wait", 0.0, 0.0)
        usd, tok = self.estimate(size)
        if self.budget_usd is not None and self.spent_usd + self.reserved_usd + usd > self.budget_usd + 1e-12:
            self.budget_hit = True
        if (
            self.budget_tokens is not None
            and self.spent_tokens + self.reserved_tokens + tok > self.budget_tokens
        ):
            self.budget_hit = True
        if self.budget_hit:
            return "stop", 0.0, 0.0
        self.reserved_usd += usd
        self.reserved_tokens += tok
        return "go", usd, tok

    def release(self, usd: float, tokens: float) -> None:
        """Give back a reservation once its call has been recorded."""
        self.reserved_usd = max(0.0, self.reserved_usd - usd)
        self.reserved_tokens = max(0.0, self.reserved_tokens - tokens)

    def summary(self) -> dict[str, Any]:
        """JSON-able spending of this run."""
        return {
            "calls": self.calls,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.spent_tokens,
            "cost_usd": round(self.spent_usd, 6),
            "retries": dict(self.retries),
            "budget_usd": self.budget_usd,
            "budget_tokens": self.budget_tokens,
            "budget_hit": self.budget_hit,
            "by_source": {
                s: {**dict(c), "cost_usd": round(self._by_source_usd[s], 6)}
                for s, c in sorted(self.by_source.items())
            },
        }
