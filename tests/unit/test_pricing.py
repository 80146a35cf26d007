"""Token prices: defaults, prefixes, local models at zero, workspace overrides."""

import pytest

from autoresearch.errors import UserError
from autoresearch.pricing import load_price_table


def test_known_model_costs_by_its_list_price():
    table = load_price_table()
    assert table.cost("gpt-5-mini", 1_000_000, 1_000_000) == pytest.approx(2.25)
    assert table.cost("openai/gpt-5-mini-2025-08-07", 1_000_000, 0) == pytest.approx(0.25)


def test_local_model_costs_nothing():
    table = load_price_table()
    assert table.cost("qwen2.5-coder:32b", 10**6, 10**6) == 0.0
    assert not table.is_known("qwen2.5-coder:32b")


def test_workspace_config_overrides(tmp_path):
    (tmp_path / "autoresearch.yaml").write_text("prices:\n  my-model: {input: 1, output: 3}\n  gpt-5-mini: {input: 0, output: 0}\n")
    table = load_price_table(tmp_path)
    assert table.cost("my-model", 10**6, 10**6) == pytest.approx(4.0)
    assert table.cost("gpt-5-mini", 10**6, 10**6) == 0.0


def test_broken_config_is_a_user_error(tmp_path):
    (tmp_path / "autoresearch.yaml").write_text("prices:\n  m: {input: cheap}\n")
    with pytest.raises(UserError, match="prices.m"):
        load_price_table(tmp_path)


def test_cached_input_is_priced_at_the_providers_cached_price():
    table = load_price_table()
    # gpt-5-mini: $0.25 input, $0.025 cached input (a tenth), $2 output per million
    assert table.cost("gpt-5-mini", 1_000_000, 0, cached_tokens=800_000) == pytest.approx(0.2 * 0.25 + 0.8 * 0.025)
    assert table.cost("gpt-4o", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.25)  # half
    assert table.cost("claude-sonnet-4", 10**6, 0, cached_tokens=10**6) == pytest.approx(3.0)  # not marked: no discount


def test_workspace_config_sets_a_cached_price_else_cached_costs_as_input(tmp_path):
    (tmp_path / "autoresearch.yaml").write_text("prices:\n  a: {input: 1, output: 3, cached: 0.1}\n  b: {input: 1, output: 3}\n")
    table = load_price_table(tmp_path)
    assert table.cost("a", 10**6, 0, cached_tokens=10**6) == pytest.approx(0.1)
    assert table.cost("b", 10**6, 0, cached_tokens=10**6) == pytest.approx(1.0)
