"""One definition of "may another experiment start": the experiment count, the hours, the spending caps.

Every limit counts over the run's resumes: `--max-experiments` the experiments that ended (the
baseline included, interrupted ones not), `--hours` the time the run has been going summed over its
invocations (`ActiveClock`), `--max-cost` and `--max-tokens` what every LLM call of the run cost
(spending.py), with the next experiment expected to cost as much as the dearest recent one.
"""

from __future__ import annotations

import time

from autoresearch.ledger import Ledger
from autoresearch.pricing import LivePrices
from autoresearch.run.state import RunState
from autoresearch.settings import RunOptions
from autoresearch.spending import SpendingCap, run_spending


class ActiveClock:
    """The time a run has been going: what earlier invocations recorded, plus this one so far."""

    def __init__(self, ledger: Ledger, tag: str):
        self.ledger, self.tag = ledger, tag
        self.before = ledger.run(tag).get("active_seconds") or 0.0
        self.started = self._recorded_at = time.monotonic()
        self.slots = 1  # trainings it can have at once: the run's duty cycle is measured against them

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started

    def record(self) -> None:
        """Add this invocation's time since the last record to the run's row."""
        now = time.monotonic()
        self.ledger.add_active_seconds(self.tag, now - self._recorded_at, self.slots)
        self._recorded_at = now


def experiments_done(ledger: Ledger, tag: str) -> int:
    """The run's experiments that count towards --max-experiments: ended, and not interrupted."""
    return sum(count for outcome, count in ledger.outcome_counts().get(tag, {}).items()
               if outcome not in ("interrupted", "running"))


def check_caps(options: RunOptions, prices: LivePrices, model: str | None) -> None:
    """Before a run starts: a dollar cap needs the model's price (without it the cap could never trigger)."""
    cap = SpendingCap(options.max_cost, options.max_tokens)
    if cap.is_set:
        cap.check_prices(prices.table(), model)


class Limits:
    """Whether another experiment may start now, and if not, why (in the words the run's last line uses)."""

    def __init__(self, ledger: Ledger, state: RunState, options: RunOptions, clock: ActiveClock, prices: LivePrices):
        self.ledger, self.state, self.options, self.clock, self.prices = ledger, state, options, clock, prices
        self.cap = SpendingCap(options.max_cost, options.max_tokens)

    def reached(self, in_flight: int = 0, drafting: int = 0, asks_agent: bool = True) -> str | None:
        """Why no new experiment may start: a limit of the run, counted with the `in_flight` experiments already
        started (`drafting` of them still waiting for the agent, whose calls are not recorded yet), or None.
        One that `asks_agent` nothing (a combination) spends no tokens, so the spending caps do not stop it."""
        options = self.options
        if options.max_experiments is not None:
            if experiments_done(self.ledger, self.state.tag) + in_flight >= options.max_experiments:
                return f"reached --max-experiments {options.max_experiments}"
        if options.hours is not None and self.clock.seconds() >= options.hours * 3600:
            return f"reached --hours {options.hours:g}"
        if not asks_agent or not self.cap.is_set or not self.state.best.measured:
            return None
        return self.cap.stop_reason(run_spending(self.ledger, self.state.tag, self.prices.table()), drafting)

    def spending_unmeasured(self) -> bool:
        """A spending cap is set, but no proposal's cost is known yet to count the drafts under way at."""
        if not self.cap.is_set:
            return False
        spending = run_spending(self.ledger, self.state.tag, self.prices.table())
        return spending.next_tokens == 0 and spending.next_cost == 0
