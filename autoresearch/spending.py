"""What a run has spent on the LLM, and whether the next experiment would pass a person's cap.

`--max-cost` (dollars, priced per model from the price table) and `--max-tokens` (prompt and
completion together) are checked before each experiment starts. The next experiment is expected to
cost as much as the dearest of the last few (prompts grow as the lineage grows), so the run stops
before starting one that would pass the cap, not in the middle of it. Both caps are off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.pricing import PriceTable, usage_by

RECENT_EXPERIMENTS = 5


@dataclass(frozen=True)
class Spending:
    """Tokens and dollars so far, and what the next experiment is expected to add."""

    tokens: int
    cost: float
    next_tokens: int
    next_cost: float


@dataclass(frozen=True)
class SpendingCap:
    max_cost: float | None = None
    max_tokens: int | None = None

    @property
    def is_set(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def check_prices(self, prices: PriceTable, model: str | None) -> None:
        """A dollar cap needs the model's price; without it the cap could never trigger."""
        if self.max_cost is not None and model and not prices.is_known(model):
            raise UserError(f"--max-cost needs a price for model {model!r}: add it under `prices:` in "
                            "autoresearch.yaml (dollars per million input and output tokens)")

    def stop_reason(self, spending: Spending, drafting: int = 0) -> str | None:
        """Why the next experiment must not start, or None; `drafting` proposals under way whose calls
        are not in the ledger yet count at what the next one is expected to cost."""
        pending = f" and {drafting} being drafted" if drafting else ""
        if self.max_tokens is not None and spending.tokens + (drafting + 1) * spending.next_tokens > self.max_tokens:
            return (f"reached --max-tokens {self.max_tokens}: {spending.tokens} tokens used{pending}, the next "
                    f"experiment would take about {spending.next_tokens} more")
        if self.max_cost is not None and spending.cost + (drafting + 1) * spending.next_cost > self.max_cost:
            return (f"reached --max-cost ${self.max_cost:g}: ${spending.cost:.4f} spent{pending}, the next experiment "
                    f"would cost about ${spending.next_cost:.4f} more")
        return None


def run_spending(ledger: Ledger, tag: str, prices: PriceTable) -> Spending:
    """Totals over every LLM call of the run, each priced for its own model."""
    per_experiment = {number: (usage.tokens, usage.cost_usd)
                      for number, usage in usage_by(ledger.token_usage(tag), prices, "experiment",
                                                    unpriced_free=True).items()}
    recent = [per_experiment[number] for number in sorted(per_experiment)[-RECENT_EXPERIMENTS:]]
    return Spending(tokens=sum(t for t, _ in per_experiment.values()),
                    cost=sum(c for _, c in per_experiment.values()),
                    next_tokens=max((t for t, _ in recent), default=0),
                    next_cost=max((c for _, c in recent), default=0.0))
