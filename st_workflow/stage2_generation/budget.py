"""One LLM budget per run, shared by every stage, task retry, fan-out shard and process of the run.

**A run** is a ``run_name`` within one ``cache_dir``: the filter, the pair generator and the benchmark-query
writer of that run, each Prefect task retry, each per-source shard and every process started with the same
``run_name`` and ``cache_dir`` (two deployments, a deployment beside ``st-workflow generate``) draw on one budget,
``generation.execution.budget_usd`` / ``budget_tokens``. Its state lives beside the LLM cache in
``<cache_dir>/llm/budgets/<run_name>.json`` (spent USD and tokens, open reservations), rewritten atomically
(write-then-rename) under an exclusive ``flock`` on ``<run_name>.lock``, so two processes cannot both spend the last
dollars.

**Reserve, then settle.** Every HTTP request (first asks, validation re-asks and transport retries alike) first
reserves its worst case: a prompt of one token per byte of the request's messages and tools (tokenizers make at
least one byte per token) plus the request's ``max_tokens`` (else ``generation.endpoint.max_tokens``) of completion,
at the model's price. It is sent only when ``spent + reserved + worst case`` fits every cap. When the answer comes,
the reservation is replaced by its real ``usage``; a request the server refused with an HTTP error is released
(nothing was generated); one whose outcome is unknown (timeout, dropped connection, cancelled, killed process, an
answer without ``usage``) is charged its whole reservation, as the provider may have billed it. A request that does
not fit waits while other reservations are open (they may settle below their worst case) and is refused for good,
with :class:`BudgetExhausted`, once ``spent + worst case`` alone exceeds a cap: spending only grows. (A waiting
request keeps its Prefect concurrency slot; waits only happen near the end of the budget.) A job refused midway,
e.g. on a re-ask, ends as ``budget`` like one refused at its first request; the answers it got stay spent.

**A run run again** (a retry, a resumed or re-triggered run) finds its spending where it left it: spent stays spent,
cached answers cost nothing and are never charged, and only a higher cap (or a new ``run_name``) lets it spend more.
Reservations of processes that died on this host are charged when the next request of the run looks at the state.

With a cap set, an unpriced model (its calls would count as $0) or a missing ``max_tokens`` is refused before any
request with :class:`BudgetConfigError`, which names the model and the option to set.

Example:
    >>> import tempfile, pathlib
    >>> from st_workflow.config.generation import Price
    >>> b = RunBudget(pathlib.Path(tempfile.mkdtemp()), "demo", Price(input_per_mtok=1, output_per_mtok=1),
    ...               budget_usd=0.001, max_tokens=100)
    >>> d, rid = b.try_reserve(0.0006, 600); d
    'go'
    >>> b.try_reserve(0.0006, 600)[0]   # fits only if the open reservation settles lower
    'busy'
    >>> b.settle(rid, 0.0002, 200); b.try_reserve(0.0009, 900)[0]   # 0.0002 spent + 0.0009 > 0.001
    'exhausted'
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import openai

from st_workflow import atomic
from st_workflow.config.generation import Price, budget_problem
from st_workflow.config.loader import ConfigError
from st_workflow.stage2_generation.resilience import TransportError

BUDGETS_DIR = "budgets"
"""Under ``<cache_dir>/llm``: one ``<run_name>.json`` (state) and ``<run_name>.lock`` per run with a cap."""
_PROMPT_SLACK_TOKENS = 64
"""Added to every prompt bound: chat-template tokens around the messages."""
_EPS = 1e-12


class BudgetConfigError(ConfigError):
    """A cap is set that could not be enforced (no price for the model, no ``max_tokens``): nothing is sent."""


class BudgetExhausted(TransportError):
    """The run's budget has no room for this request's worst case: it was not sent (the job ends as ``budget``).

    A :class:`~.resilience.TransportError` so that the client libraries' wrappers are unwrapped like one."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)
        self.cause = "budget"
        self.attempts = 0


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    return started is None or now is None or now == started


def _usage_numbers(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
    p, c = get("prompt_tokens"), get("completion_tokens")
    if p is None and c is None:
        return None
    return int(p or 0), int(c or 0)


class RunBudget:
    """The shared budget of one run (see the module docstring); ``None`` caps are not enforced.

    Args:
        root: ``<cache_dir>/llm/budgets``.
        run_name: The run; its state file is ``<root>/<run_name>.json``.
        price: Price of the model (required with ``budget_usd``).
        max_tokens: Completion bound of a request that carries no ``max_tokens`` of its own (required with a cap).
        poll_s: How often a request that does not fit yet looks again while other reservations are open.
    """

    def __init__(
        self,
        root: Path,
        run_name: str,
        price: Price | None,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        *,
        max_tokens: int | None,
        model: str = "?",
        poll_s: float = 0.5,
    ) -> None:
        if budget_usd is not None and price is None:
            raise BudgetConfigError(
                f"generation.execution.budget_usd is set but model {model!r} has no price: set "
                "generation.execution.price (or an entry of generation.execution.prices)"
            )
        if (budget_usd is not None or budget_tokens is not None) and max_tokens is None:
            raise BudgetConfigError(
                "a budget needs generation.endpoint.max_tokens (the worst case of a call)"
            )
        self.price = price
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.max_tokens = max_tokens
        self.run_name = run_name
        self.poll_s = poll_s
        self.path = Path(root) / f"{run_name}.json"
        self.lock_path = Path(root) / f"{run_name}.lock"
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _proc_start(os.getpid())}

    @classmethod
    def for_config(cls, cfg: Any) -> RunBudget | None:
        """The budget of ``cfg``'s run (``PipelineConfig``), or ``None`` when no cap is set.

        Raises:
            BudgetConfigError: a cap is set but cannot be enforced (the message names the model and the option).
        """
        gen = cfg.generation
        ex = gen.execution
        if ex.budget_usd is None and ex.budget_tokens is None:
            return None
        if (problem := budget_problem(gen)) is not None:
            raise BudgetConfigError(problem)
        return cls(
            cfg.cache_path / "llm" / BUDGETS_DIR,
            cfg.run_name,
            ex.price_for(gen.endpoint.model),
            ex.budget_usd,
            ex.budget_tokens,
            max_tokens=gen.endpoint.max_tokens,
            model=gen.endpoint.model,
            poll_s=ex.claim_poll_s,
        )

    # ------------------------------------------------------------------ the shared state
    def _fresh(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "spent_usd": 0.0,
            "spent_tokens": 0,
            "requests": 0,
            "charged_unknown": 0,
            "reservations": {},
        }

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The state under the run's exclusive lock; written back atomically when the block changed it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                state = {**self._fresh(), **json.loads(self.path.read_text(encoding="utf-8"))}
            except FileNotFoundError:
                state = self._fresh()
            before = json.dumps(state, sort_keys=True)
            self._reap(state)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                state["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                atomic.write_json(self.path, state)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _reap(self, state: dict[str, Any]) -> None:
        """Charge the reservations of dead processes on this host: their requests may have been billed."""
        host = self._me["host"]
        for rid, r in list(state["reservations"].items()):
            if r.get("host") == host and not _alive(int(r.get("pid", 0)), r.get("started")):
                del state["reservations"][rid]
                self._charge(state, float(r["usd"]), int(r["tokens"]), unknown=True)

    @staticmethod
    def _charge(state: dict[str, Any], usd: float, tokens: int, *, unknown: bool = False) -> None:
        state["spent_usd"] = float(state["spent_usd"]) + usd
        state["spent_tokens"] = int(state["spent_tokens"]) + tokens
        state["requests"] = int(state["requests"]) + 1
        if unknown:
            state["charged_unknown"] = int(state["charged_unknown"]) + 1

    @staticmethod
    def _reserved(state: dict[str, Any]) -> tuple[float, int]:
        rs = state["reservations"].values()
        return sum(float(r["usd"]) for r in rs), sum(int(r["tokens"]) for r in rs)

    def _over(self, usd: float, tokens: int) -> bool:
        return (self.budget_usd is not None and usd > self.budget_usd + _EPS) or (
            self.budget_tokens is not None and tokens > self.budget_tokens
        )

    # ------------------------------------------------------------------ reserve / settle
    def try_reserve(self, usd: float, tokens: int) -> tuple[str, str | None]:
        """``("go", id)`` reserves a worst case; ``("busy", None)`` fits only once open reservations settle;
        ``("exhausted", None)``: it can never fit (spending only grows)."""
        with self._locked() as st:
            spent_usd, spent_tok = float(st["spent_usd"]), int(st["spent_tokens"])
            if self._over(spent_usd + usd, spent_tok + tokens):
                return "exhausted", None
            r_usd, r_tok = self._reserved(st)
            if self._over(spent_usd + r_usd + usd, spent_tok + r_tok + tokens):
                return "busy", None
            rid = uuid.uuid4().hex
            st["reservations"][rid] = {"usd": usd, "tokens": tokens, **self._me}
            return "go", rid

    def settle(self, rid: str, usd: float, tokens: int, *, unknown: bool = False) -> None:
        """Replace reservation ``rid`` by what the request really cost."""
        with self._locked() as st:
            st["reservations"].pop(rid, None)
            self._charge(st, usd, tokens, unknown=unknown)

    def release(self, rid: str) -> None:
        """Drop reservation ``rid``: the request cost nothing (the server refused it)."""
        with self._locked() as st:
            st["reservations"].pop(rid, None)

    def snapshot(self) -> dict[str, Any]:
        """The run's caps, spending and open reservations (JSON-able)."""
        with self._locked() as st:
            r_usd, r_tok = self._reserved(st)
            return {
                "run_name": self.run_name,
                "budget_usd": self.budget_usd,
                "budget_tokens": self.budget_tokens,
                "spent_usd": round(float(st["spent_usd"]), 8),
                "spent_tokens": int(st["spent_tokens"]),
                "requests": int(st["requests"]),
                "charged_unknown": int(st["charged_unknown"]),
                "reserved_usd": round(r_usd, 8),
                "reserved_tokens": r_tok,
                "file": str(self.path),
            }

    # ------------------------------------------------------------------ requests
    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.price
        return (
            0.0
            if p is None
            else (prompt_tokens * p.input_per_mtok + completion_tokens * p.output_per_mtok) / 1e6
        )

    def worst_case(self, kwargs: dict[str, Any]) -> tuple[float, int]:
        """(USD, tokens) a chat-completions request with these arguments can cost at most."""
        sent = {k: kwargs[k] for k in ("messages", "tools", "functions", "response_format") if k in kwargs}
        prompt = len(json.dumps(sent, ensure_ascii=False, default=str).encode("utf-8")) + _PROMPT_SLACK_TOKENS
        completion = next(
            (v for k in ("max_completion_tokens", "max_tokens") if isinstance(v := kwargs.get(k), int)),
            self.max_tokens or 0,
        )
        return self.cost(prompt, completion), prompt + completion

    def meter(self, create: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap one HTTP attempt of ``chat.completions.create``: reserve, send, settle (see the module docstring).

        Raises:
            BudgetExhausted: the request was not sent.
        """

        async def metered(*args: Any, **kwargs: Any) -> Any:
            usd, tokens = self.worst_case(kwargs)
            while True:
                decision, rid = self.try_reserve(usd, tokens)
                if decision == "go":
                    break
                if decision == "exhausted":
                    caps = [f"${self.budget_usd:g}"] if self.budget_usd is not None else []
                    caps += [f"{self.budget_tokens} tokens"] if self.budget_tokens is not None else []
                    cap = " / ".join(caps)
                    raise BudgetExhausted(
                        f"budget of run {self.run_name!r} ({cap}) has no room for this call "
                        f"(worst case ${usd:.6f}, {tokens} tokens); state in {self.path}"
                    )
                await asyncio.sleep(self.poll_s)
            assert rid is not None
            try:
                response = await create(*args, **kwargs)
            except openai.APIStatusError:
                self.release(rid)  # the server answered with an error: nothing was generated
                raise
            except BaseException:
                self.settle(rid, usd, tokens, unknown=True)  # timeout, dropped, cancelled: maybe billed
                raise
            used = _usage_numbers(getattr(response, "usage", None))
            if used is None:
                self.settle(rid, usd, tokens, unknown=True)
            else:
                self.settle(rid, self.cost(*used), sum(used))
            return response

        metered.__wrapped__ = create  # type: ignore[attr-defined]
        return metered


def stage_ledger(cfg: Any) -> Any:
    """A fresh :class:`~.accounting.Ledger` for one LLM stage of ``cfg``'s run, on the run's shared budget.

    Raises:
        BudgetConfigError: a cap is set but cannot be enforced; raised before any request is sent.
    """
    from st_workflow.stage2_generation.accounting import Ledger

    gen = cfg.generation
    return Ledger(gen.execution.price_for(gen.endpoint.model), RunBudget.for_config(cfg))
