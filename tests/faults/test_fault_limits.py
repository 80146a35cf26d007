"""Lineage that teaches, a prompt that stays within its budget, and the spending caps a person sets."""

from __future__ import annotations

import pytest
from conftest import reply
from faultkit import BETTER, TAG, assert_consistent, inject

from autoresearch.errors import UserError
from autoresearch.prompts import AgentContext, LineageEntry, build_messages, estimate_tokens
from autoresearch.recipe import load_recipe

OOM = inject("bigger batch", "print('allocating the batch', flush=True)\nbig = bytearray(1 << 50)")


def prompt_of(request: dict) -> str:
    return request["messages"][1]["content"]


# --- lineage that teaches

def test_typed_failure_and_its_log_tail_reach_the_next_prompt(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([OOM, BETTER], max_experiments=3)
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("crash", "oom")
    prompt = prompt_of(fake_llm.requests[1])
    assert "| 1 | crash: `oom` |" in prompt
    failures = prompt.split("# Recent failures, with the end of their logs", 1)[1]
    assert "Experiment 1 (crash: `oom`): bigger batch" in failures  # the reason quoted (issue 21)
    assert "allocating the batch" in failures and "MemoryError" in failures


def test_invalid_reasons_reach_the_next_prompt(workspace, fake_llm, run_loop):
    cheat = reply("better eval", "    return (learning_rate - 0.3) ** 2 + 1.0 / width", "    return 0.0",
                  filename="prepare.py")
    run_loop.small([cheat, BETTER, BETTER], max_experiments=4)
    last_prompt = prompt_of(fake_llm.requests[-1])
    assert "| 1 | invalid: `touched prepare.py` |" in last_prompt
    assert "| 3 | invalid: `duplicate of experiment 2` |" not in last_prompt  # experiment 3 is being proposed
    assert "| 2 | keep |" in last_prompt


def lineage(count: int) -> tuple[LineageEntry, ...]:
    """A long night: every outcome, long descriptions and long failure logs."""
    outcomes = [("keep", None), ("discard", None), ("crash", "oom"), ("crash", "nan"), ("timeout", "still running"),
                ("invalid", "duplicate of experiment 3"), ("invalid", "edit did not apply: no block")]
    entries = []
    for number in range(count):
        outcome, reason = outcomes[number % len(outcomes)]
        entries.append(LineageEntry(number=number, outcome=outcome, reason=reason, metric=1.0 - number / 1e4,
                                    gain=0.001 * (number % 11) if outcome == "keep" else -0.01,
                                    description=f"experiment {number}: " + "a rather long description " * 20,
                                    log_tail="\n".join(f"step {i}: " + "x" * 400 for i in range(40))))
    return tuple(entries)


@pytest.mark.parametrize("count", [5, 60, 2000])
def test_prompt_stays_within_its_token_budget_however_long_the_run(workspace, count):
    recipe = load_recipe(workspace / "recipes/synth")
    files = {"train.py": (workspace / "recipes/synth/train.py").read_text(), "prepare.py": ""}
    context = AgentContext(number=count, program="Lower the loss.", recipe=recipe, budget_seconds=5, files=files,
                           lineage=lineage(count), token_budget=6000)
    messages = build_messages(context)
    total = estimate_tokens(messages[0]["content"] + messages[1]["content"])
    assert total <= 6000
    prompt = messages[1]["content"]
    assert f"| {count - 1} | " in prompt  # the latest experiment is always listed
    assert "# Current train.py" in prompt and "LEARNING_RATE = 0.5" in prompt
    if count > 20:
        summary = prompt.split("# Experiments so far", 1)[1].split("| # |", 1)[0]
        assert "summarised" in summary and "keep" in summary and "oom" in summary and "duplicate" in summary
        assert "Largest kept gains among them: #" in summary


def test_recent_experiments_are_listed_whole_when_the_budget_allows(workspace):
    recipe = load_recipe(workspace / "recipes/synth")
    context = AgentContext(number=30, program="p", recipe=recipe, budget_seconds=5, files={"train.py": ""},
                           lineage=lineage(30), token_budget=100_000)
    prompt = build_messages(context)[1]["content"]
    assert all(f"| {n} | " in prompt for n in range(10, 30))
    assert "Experiments 0 to 9, summarised" in prompt
    failures = prompt.split("# Recent failures, with the end of their logs", 1)[1]
    assert failures.count("\nExperiment ") == 3  # three, with their logs
    assert failures.count("x" * 300) == 3 * 15


# --- spending caps

USAGE = {"prompt_tokens": 1000, "completion_tokens": 100}


def costly(text: str) -> dict:
    return {"content": text, "usage": USAGE}


def test_max_tokens_stops_before_an_experiment_that_would_pass_it(workspace, fake_llm, run_loop):
    loop = run_loop.make(small=True, script=[costly(BETTER)] + [costly(reply("wider", "WIDTH = 4", "WIDTH = 8"))]
                     + [costly(reply("wider still", "WIDTH = 8", "WIDTH = 16"))])
    summary = run_loop(loop=loop, small=True, tag=TAG, max_experiments=10, max_tokens=2500).summary
    rows = loop.ledger.experiments(TAG)
    assert len(rows) == 3  # baseline, then 1100 + 1100 tokens; a third would pass 2500
    assert summary.stop_reason == ("reached --max-tokens 2500: 2200 tokens used, the next experiment would "
                                   "take about 1100 more")
    assert loop.ledger.run(TAG)["status"] == "finished"
    assert_consistent(workspace, rows)


def test_max_cost_uses_the_price_table_and_stops_cleanly(workspace, fake_llm, run_loop):
    (workspace / "autoresearch.yaml").write_text("prices:\n  fake-model: {input: 1000, output: 1000}\n")
    loop = run_loop.make(small=True, script=[costly(BETTER), costly(reply("wider", "WIDTH = 4", "WIDTH = 8"))])
    summary = run_loop(loop=loop, small=True, tag=TAG, max_experiments=10, max_cost=2.0).summary
    rows = loop.ledger.experiments(TAG)
    assert len(rows) == 2  # one experiment costs $1.10; a second would pass $2
    assert summary.stop_reason == "reached --max-cost $2: $1.1000 spent, the next experiment would cost about $1.1000 more"
    assert_consistent(workspace, rows)


def test_max_cost_on_a_model_without_a_price_is_refused_before_anything_starts(workspace, fake_llm, run_loop):
    with pytest.raises(UserError, match="--max-cost needs a price for model 'fake-model'"):
        run_loop.small([BETTER], max_cost=1.0)
    assert not (workspace / "runs/t").exists()


def test_caps_are_off_by_default(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([costly(BETTER), costly(reply("wider", "WIDTH = 4", "WIDTH = 8"))],
                       max_experiments=3)
    assert len(rows) == 3
