"""What LLM tokens cost: a per-model price table, with defaults, overridable in the workspace config.

Prices are US dollars per million tokens: input, output, and cached input (input tokens the
provider read from its prompt cache, which the big providers bill at a fraction of the input
price). Local endpoints (vLLM, Ollama, llama.cpp) have no entry and cost nothing. The workspace may
add or override models in `autoresearch.yaml` (`cached` defaults to the input price: no discount
assumed where none is known):

    prices:
      my-finetune: {input: 0.5, output: 1.5, cached: 0.05}

`call_cost` is the one place a call is priced, and `Usage` (with `usage_by`) the one tally of tokens and
dollars: the live view, the spending caps, `log`, `show` and `runs` all sum calls through them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml

from autoresearch.errors import UserError

CONFIG_FILE = "autoresearch.yaml"


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens of one model."""

    input: float
    output: float
    cached: float  # input tokens read from the provider's prompt cache


# Public list prices (USD per 1M tokens: input, output, cached input) of common hosted models, from the
# providers' price pages (2025). Cached input: OpenAI bills it at 10% of input for the gpt-5 family, 25% for
# gpt-4.1, o3 and o4-mini, 50% for gpt-4o (caching is automatic past 1,024 identical leading tokens); Google
# 25% for Gemini 2.5 (implicit caching); DeepSeek about 25% (its disk cache, automatic); Anthropic 10%, but
# only for prompts marked for caching, which this tool does not mark, so its models get no discount here.
# A model not listed costs 0.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.4, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "o3": Price(2.0, 8.0, 0.5),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "claude-sonnet-4": Price(3.0, 15.0, 3.0),
    "claude-opus-4": Price(15.0, 75.0, 15.0),
    "claude-haiku-4": Price(1.0, 5.0, 1.0),
    "gemini-2.5-pro": Price(1.25, 10.0, 0.31),
    "gemini-2.5-flash": Price(0.3, 2.5, 0.075),
    "deepseek-chat": Price(0.27, 1.1, 0.07),
    "deepseek-reasoner": Price(0.55, 2.19, 0.14),
}


def call_cost(price: Price, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
    """Dollars for one call (or a sum of calls of one model): cached input at its own price."""
    cached = min(max(cached_tokens or 0, 0), prompt_tokens)
    return ((prompt_tokens - cached) * price.input + cached * price.cached + completion_tokens * price.output) / 1e6


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]

    def price(self, model: str | None) -> Price | None:
        """Dollars per 1M tokens; a dated or prefixed name falls back to its base name."""
        if not model:
            return None
        name = model.split("/")[-1].lower()
        if name in self.prices:
            return self.prices[name]
        for known in sorted(self.prices, key=len, reverse=True):
            if name.startswith(known + "-"):
                return self.prices[known]
        return None

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        price = self.price(model)
        return 0.0 if price is None else call_cost(price, prompt_tokens, completion_tokens, cached_tokens)

    def is_known(self, model: str | None) -> bool:
        return self.price(model) is not None

    def priced(self, model: str | None, prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0) -> float | None:
        """Dollars for one call, or None when the model has no price (a local endpoint: its cost is unknown)."""
        price = self.price(model)
        return None if price is None else call_cost(price, prompt_tokens, completion_tokens, cached_tokens)


@dataclass
class Usage:
    """Tokens and dollars of some LLM calls; the cost is unknown (None) once a call with tokens had no price."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, read from the server's prompt cache
    cost_usd: float | None = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt_tokens: int, completion_tokens: int, cost: float | None, cached_tokens: int = 0) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cached_tokens += cached_tokens or 0
        if cost is None:
            if prompt_tokens or completion_tokens:
                self.cost_usd = None
        elif self.cost_usd is not None:
            self.cost_usd += cost

    def as_dict(self) -> dict:
        return asdict(self)


def usage_by(rows: Iterable[dict], prices: PriceTable | None, key: str | None = None,
             unpriced_free: bool = False) -> dict:
    """Usage rows of the ledger (prompt, completion and cached tokens of one model) summed per `key` column
    (one total under None without a key). A model without a price makes the cost unknown, or costs nothing
    with `unpriced_free` (what a spending cap counts: a dollar cap is refused for a model without a price)."""
    totals: dict = {}
    looked_up: dict[str | None, Price | None] = {}  # each model's price looked up once (the lookup normalizes)
    for row in rows:
        model = row["model"]
        if model not in looked_up:
            looked_up[model] = prices.price(model) if prices is not None else None
        price = looked_up[model]
        cached = row.get("cached_tokens") or 0
        cost = call_cost(price, row["prompt_tokens"], row["completion_tokens"], cached) if price is not None else (
            0.0 if unpriced_free else None)
        totals.setdefault(row[key] if key else None, Usage()).add(row["prompt_tokens"], row["completion_tokens"],
                                                                  cost, cached)
    return totals


def total_usage(rows: Iterable[dict], prices: PriceTable | None) -> Usage:
    return usage_by(rows, prices).get(None, Usage())


class LivePrices:
    """The workspace's price table, read afresh each time (an edited price applies at once).

    A run reads it before every LLM call; a file caught half-saved or broken must not end an
    overnight run, so the last good table serves and the problem is reported once (`on_problem`).
    A table that was never good is the person's to fix: that error is raised.
    """

    def __init__(self, workspace_root: Path, on_problem: Callable[[str], None]):
        self.workspace_root = workspace_root
        self.on_problem = on_problem
        self._good: PriceTable | None = None
        self._reported: str | None = None

    def table(self) -> PriceTable:
        try:
            self._good = load_price_table(self.workspace_root)
            self._reported = None
        except UserError as exc:
            if self._good is None:
                raise
            if str(exc) != self._reported:
                self._reported = str(exc)
                self.on_problem(f"{exc}; the last good price table serves until it is fixed")
        return self._good


def load_price_table(workspace_root: Path | None = None) -> PriceTable:
    """The defaults, with the workspace's `prices` from autoresearch.yaml on top."""
    prices = dict(DEFAULT_PRICES)
    if workspace_root is not None:
        path = Path(workspace_root) / CONFIG_FILE
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"{path} cannot be read: {exc}") from None
            if not isinstance(config, dict) or not isinstance(config.get("prices") or {}, dict):
                raise UserError(f"{path}: expected `prices:` mapping model names to {{input: .., output: ..}}")
            for model, entry in (config.get("prices") or {}).items():
                try:
                    prices[str(model).lower()] = Price(float(entry["input"]), float(entry["output"]),
                                                       float(entry.get("cached", entry["input"])))
                except (TypeError, KeyError, ValueError, AttributeError):
                    raise UserError(f"{path}: prices.{model} needs numeric input and output, and cached if given "
                                    "(USD per 1M tokens)") from None
    return PriceTable(prices)
