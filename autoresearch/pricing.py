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
            for model, entry in (config.get("prices") or {}).items():
                try:
                    prices[str(model).lower()] = (float(entry["input"]), float(entry["output"]))
                except (TypeError, KeyError, ValueError):
                    raise UserError(f"{path}: prices.{model} needs numeric input and output (USD per 1M tokens)") from None
    return PriceTable(prices)
