"""The proposer (proposer.py): the one retry and backoff policy around an agent, against a real local endpoint."""

from __future__ import annotations

import time

import pytest
from conftest import reply

from autoresearch.agents import LLMAgent
from autoresearch.errors import StopRun
from autoresearch.proposer import Proposer

GOOD = reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")


def proposer(fake_llm, notes: list, max_failures: int = 3) -> Proposer:
    agent = LLMAgent(model="fake-model", base_url=fake_llm.base_url, request_timeout=10)
    return Proposer(agent, max_failures, backoff_seconds=0.05, note=notes.append)


def context_of(new_run):
    from autoresearch.run.briefing import Briefing
    from autoresearch.keep import KeepRule

    state = new_run.state
    briefing = Briefing(new_run.workspace, new_run.ledger, state, "Lower it.", KeepRule(), 12000, lambda _: None)
    return briefing.context(0, state.read_files(state.recipe.editable + state.recipe.fixed))


def test_a_failed_call_is_asked_again_after_a_wait_that_doubles(fake_llm, new_run):
    fake_llm.set_script([{"status": 503, "body": "busy"}, {"status": 503, "body": "busy"}, GOOD])
    notes: list[str] = []
    started = time.monotonic()
    candidate = proposer(fake_llm, notes).propose("experiment 1", context_of(new_run), lambda call: None)
    assert candidate.description == "lower the learning rate"
    assert [note.split(": LLM call failed")[0] for note in notes] == ["experiment 1", "experiment 1"]
    assert "trying again in 0.05s" in notes[0] and "trying again in 0.1s" in notes[1]
    assert time.monotonic() - started >= 0.15


def test_it_gives_up_after_the_failures_in_a_row_the_person_allows(fake_llm, new_run):
    fake_llm.set_script([{"status": 503, "body": "busy"}])
    with pytest.raises(StopRun, match="the LLM endpoint failed 2 times in a row"):
        proposer(fake_llm, [], max_failures=2).propose("experiment 1", context_of(new_run), lambda call: None)


def test_a_refusal_no_retry_mends_stops_at_once_with_its_remedy(fake_llm, new_run):
    fake_llm.set_script([{"status": 404, "body": '{"error": {"message": "model not found"}}'}, GOOD])
    notes: list[str] = []
    with pytest.raises(StopRun) as stopped:
        proposer(fake_llm, notes).propose("experiment 1", context_of(new_run), lambda call: None)
    assert not notes and stopped.value.remedy is not None
