"""What LLM tokens cost: a per-model price table, with defaults, overridable in the workspace config.

Prices are US dollars per million tokens, input and output. Local endpoints (vLLM, Ollama,
llama.cpp) have no entry and cost nothing. The workspace may add or override models in
`autoresearch.yaml`:

    prices:
      my-finetune: {input: 0.5, output: 1.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from autoresearch.errors import UserError

CONFIG_FILE = "autoresearch.yaml"

# Public list prices (USD per 1M tokens) of common hosted models; a model not listed costs 0.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "o3": (2.0, 8.0),
    "o4-mini": (1.1, 4.4),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-haiku-4": (1.0, 5.0),
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.3, 2.5),
    "deepseek-chat": (0.27, 1.1),
    "deepseek-reasoner": (0.55, 2.19),
}


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, tuple[float, float]]

    def price(self, model: str | None) -> tuple[float, float] | None:
        """(input, output) dollars per 1M tokens; a dated or prefixed name falls back to its base name."""
        if not model:
            return None
        name = model.split("/")[-1].lower()
        if name in self.prices:
            return self.prices[name]
        for known in sorted(self.prices, key=len, reverse=True):
            if name.startswith(known + "-"):
                return self.prices[known]
        return None

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.price(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def is_known(self, model: str | None) -> bool:
        return self.price(model) is not None


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
                    prices[str(model).lower()] = (float(entry["input"]), float(entry["output"]))
                except (TypeError, KeyError, ValueError):
                    raise UserError(f"{path}: prices.{model} needs numeric input and output (USD per 1M tokens)") from None
    return PriceTable(prices)
