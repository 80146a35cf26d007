"""The proposal's prompt through the real loop: what a prefix cache keeps, and notes carried to the ledger,
the next prompt and show (the prompt alone: unit/test_prompts.py)."""

from __future__ import annotations

from conftest import reply
from faultkit import BETTER, TAG


def test_through_the_loop_a_prefix_cache_keeps_all_but_the_history_after_a_discard(workspace, run_loop):
    from fake_llm import FakeLLM, count_tokens, rendered

    worse = reply("raise the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.9")
    wider = reply("narrower", "WIDTH = 4", "WIDTH = 2")
    fake = FakeLLM(prefix_cache=True)
    try:
        loop, rows, _ = run_loop.small(endpoint=fake, script=[worse, wider], max_experiments=3)
    finally:
        fake.close()
    assert [row["outcome"] for row in rows] == ["keep", "discard", "discard"]
    second = fake.requests[1]["messages"]
    stable = rendered(second)[:rendered(second).index("# Experiments so far")]
    assert fake.cached[1] >= count_tokens(stable) - 1  # the first token that differs may start inside a word
    assert loop.ledger.llm_calls(TAG, 2)[0]["cached_tokens"] == fake.cached[1]


def test_notes_go_to_the_ledger_the_next_prompt_and_show(workspace, fake_llm, run_loop):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    noted = BETTER.replace("Because it should help.\n", "Because it should help.\nNOTES: next, try a wider model.\n")
    wider = reply("wider", "WIDTH = 4", "WIDTH = 8")
    loop, rows, _ = run_loop.small([noted, wider], max_experiments=3)
    assert rows[1]["notes"] == "next, try a wider model."
    assert "Experiment 1:\nnext, try a wider model." in fake_llm.requests[1]["messages"][1]["content"]
    shown = CliRunner().invoke(app, ["show", "1", "--tag", TAG]).stdout
    assert "the agent's notes" in shown and "next, try a wider model." in shown
