"""The LLM agent against the scripted endpoint: the temperature, every call recorded (timed out and stopped ones
too), a refused reply's description kept, a repair that changes tack, and auto's choice of format."""

from __future__ import annotations

import threading
import time

import pytest

from autoresearch.agents import LLMAgent, ProposalStopped
from autoresearch.errors import AgentUnavailable, InvalidProposal
from autoresearch.prompts import AgentContext
from autoresearch.recipe import load_recipe

from conftest import SYNTH_RECIPE, make_workspace, reply
from fake_llm import FakeLLM

TUNABLE = SYNTH_RECIPE + "tunable:\n  LEARNING_RATE: [0.1, 0.9]\n  WIDTH: {choices: [2, 4, 8]}\n"
NO_BLOCK = "I think the learning rate is too high.\nDESCRIPTION: lower the learning rate\nNOTES: plan: width next\n"


def context(tmp_path) -> AgentContext:
    root = make_workspace(tmp_path / "ws", recipe_yaml=TUNABLE)
    recipe = load_recipe(root / "recipes/synth")
    return AgentContext(number=1, program="Lower the loss.", recipe=recipe, budget_seconds=5,
                        files={"train.py": (recipe.path / "train.py").read_text()})


def agent(fake: FakeLLM, **options) -> LLMAgent:
    return LLMAgent(**{"model": "fake-model", "base_url": fake.base_url, "request_timeout": 5, **options})


def test_a_low_temperature_is_sent_with_every_call(tmp_path, fake_llm):
    fake_llm.set_script([reply("lower", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.4")])
    chosen = agent(fake_llm, edit_format="search-replace")
    chosen.check(lambda call: None)
    chosen.propose(context(tmp_path), lambda call: None)
    assert fake_llm.checks[0]["temperature"] == 0.2 and fake_llm.requests[0]["temperature"] == 0.2


def test_a_timed_out_call_is_recorded_with_its_prompt_tokens(tmp_path, fake_llm):
    fake_llm.set_script([{"content": "DESCRIPTION: slow", "delay": 5}])
    calls = []
    with pytest.raises(AgentUnavailable, match="no answer"):
        agent(fake_llm, request_timeout=0.5, edit_format="search-replace").propose(context(tmp_path), calls.append)
    assert len(calls) == 1 and calls[0].error and calls[0].prompt_tokens > 100


def test_a_call_under_way_when_the_run_stops_is_given_up_and_recorded(tmp_path, fake_llm):
    fake_llm.set_script([{"content": "DESCRIPTION: slow", "delay": 30}])
    stop, calls = threading.Event(), []
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ProposalStopped):
        agent(fake_llm, request_timeout=60, edit_format="search-replace").propose(context(tmp_path), calls.append,
                                                                                  stop=stop)
    assert time.monotonic() - started < 5
    assert len(calls) == 1 and "run stopped" in calls[0].error and calls[0].prompt_tokens > 100
    assert calls[0].latency_seconds >= 0.4


def test_a_refused_reply_keeps_its_description_and_notes(tmp_path, fake_llm):
    fake_llm.set_script([NO_BLOCK])
    with pytest.raises(InvalidProposal) as refused:
        agent(fake_llm, edit_format="search-replace", max_attempts=1).propose(context(tmp_path), lambda call: None)
    assert refused.value.description == "lower the learning rate" and refused.value.notes == "plan: width next"


def test_a_repair_failing_the_same_way_twice_changes_to_a_simpler_format(tmp_path, fake_llm):
    fake_llm.set_script([NO_BLOCK, NO_BLOCK, "DESCRIPTION: lower the learning rate\nLEARNING_RATE = 0.4\n"])
    candidate = agent(fake_llm, edit_format="search-replace").propose(context(tmp_path), lambda call: None)
    assert "LEARNING_RATE = 0.4\n" in candidate.changed["train.py"]
    second, third = (request["messages"][-1]["content"] for request in fake_llm.requests[1:])
    assert "SEARCH parts copied exactly" in second  # the first repair: the same form again
    assert "could not be applied, both for the same reason" in third and "LEARNING_RATE = 0.5 (may be 0.1 to 0.9" in third
    assert "nearest real lines" not in third
    assert [m["role"] for m in fake_llm.requests[2]["messages"]] == ["system", "user"]  # the failed replies left out


def test_a_knobs_change_tried_twice_starts_again_with_other_constants_not_tried_to_copy(tmp_path, fake_llm):
    from dataclasses import replace

    from autoresearch.edits import set_constants
    from autoresearch.guard import editable_digest
    from autoresearch.prompts import LineageEntry

    ctx = context(tmp_path)
    tried = {"train.py": set_constants(ctx.files["train.py"], {"LEARNING_RATE": "0.8"}, "train.py")[0]}
    tried_entry = LineageEntry(1, "discard", None, 0.6, -0.1, "raise it",
                               diff="--- a/train.py\n+++ b/train.py\n-LEARNING_RATE = 0.5\n+LEARNING_RATE = 0.8\n")
    ctx = replace(ctx, seen_hashes=frozenset({editable_digest(ctx.recipe, tried)}), lineage=(tried_entry,))
    again = "DESCRIPTION: once more\nLEARNING_RATE = 0.8\n"
    fake_llm.set_script([again, again, "DESCRIPTION: narrower\nWIDTH = 2\n"])
    candidate = agent(fake_llm, edit_format="knobs").propose(ctx, lambda call: None)
    assert "WIDTH = 2\n" in candidate.changed["train.py"]
    assert "tried already" in fake_llm.requests[1]["messages"][-1]["content"]
    third = fake_llm.requests[2]["messages"]
    assert [m["role"] for m in third] == ["system", "user"] and "once more" not in third[1]["content"]
    offered = third[1]["content"].split("copy one of them")[1].split("\n\n")[0]
    assert "- WIDTH = 2" in offered and "LEARNING_RATE" not in offered  # not the constant it keeps changing
    assert [request["temperature"] for request in fake_llm.requests] == [0.2, 0.2, 0.7]  # and less sharply


def test_a_knobs_reply_that_changes_nothing_is_refused_and_repaired(tmp_path, fake_llm):
    fake_llm.set_script(["DESCRIPTION: keep it\nLEARNING_RATE = 0.5\n",
                         "DESCRIPTION: lower it\nLEARNING_RATE = 0.3\n"])
    candidate = agent(fake_llm, edit_format="knobs").propose(context(tmp_path), lambda call: None)
    assert "LEARNING_RATE = 0.3\n" in candidate.changed["train.py"]
    assert "changes nothing" in fake_llm.requests[1]["messages"][-1]["content"]


def test_the_knobs_prompt_is_short_and_shows_the_ranges_not_the_file(tmp_path, fake_llm):
    fake_llm.set_script(["DESCRIPTION: lower it\nLEARNING_RATE = 0.3\n"])
    agent(fake_llm, edit_format="knobs").propose(context(tmp_path), lambda call: None)
    system, user = (message["content"] for message in fake_llm.requests[0]["messages"])
    assert "LEARNING_RATE = 0.5 (may be 0.1 to 0.9; not tried yet: 0.25, 0.125)" in user and "save_model(" not in user
    assert len(system) + len(user) < 2_500
    assert user.rstrip().endswith("nothing else is read.")  # the reminder of the form comes last


def test_auto_reads_the_parameter_count_llama_cpp_reports():
    fake = FakeLLM(model_meta={"n_params": 1_543_714_304, "n_ctx_train": 32768})
    try:
        chosen = agent(fake)
        chosen.check(lambda call: None)
        assert chosen.edit_format == "knobs" and "/v1/models" in chosen.format_reason
    finally:
        fake.close()


def test_a_refused_request_is_recorded_without_tokens_the_server_never_read(tmp_path, fake_llm):
    fake_llm.set_script([{"status": 500, "body": {"error": {"message": "busy"}}}])
    calls = []
    with pytest.raises(AgentUnavailable, match="busy"):
        agent(fake_llm, edit_format="search-replace").propose(context(tmp_path), calls.append)
    assert len(calls) == 1 and calls[0].prompt_tokens is None


def test_a_knobs_reply_gets_a_short_completion_limit(tmp_path, fake_llm):
    fake_llm.set_script(["DESCRIPTION: lower it\nLEARNING_RATE = 0.3\n"])
    agent(fake_llm, edit_format="knobs").propose(context(tmp_path), lambda call: None)
    assert fake_llm.requests[0]["max_tokens"] == 512


def test_the_short_prompt_shows_which_values_the_last_tries_set(tmp_path, fake_llm):
    from dataclasses import replace

    from autoresearch.prompts import LineageEntry

    tried = LineageEntry(1, "discard", None, 0.3, -0.01, "faster",
                         diff="--- a/train.py\n+++ b/train.py\n-LEARNING_RATE = 0.5\n+LEARNING_RATE = 0.8\n")
    fake_llm.set_script(["DESCRIPTION: lower it\nLEARNING_RATE = 0.3\n"])
    agent(fake_llm, edit_format="knobs").propose(replace(context(tmp_path), lineage=(tried,)), lambda call: None)
    assert "+LEARNING_RATE = 0.8" in fake_llm.requests[0]["messages"][1]["content"]
