"""Faults of the agent's side: the endpoint fails, or answers with something that cannot be trained.

A failing endpoint is retried with backoff (hundredths of a second here) and, after a set number of
failed calls in a row, the run stops cleanly with one line; a reply that cannot be trained is
`invalid` with a reason the agent is shown next time. Nothing here spends a training run on a
proposal that is not a real, new change.
"""

from __future__ import annotations

import io
import json
import socket
import time

import pytest
from conftest import reply
from faultkit import BETTER, RUN_FLAGS, TAG, ToolProcess, assert_consistent, tool_env
from typer.testing import CliRunner

from autoresearch.agents import MAX_REPLY_CHARS
from autoresearch.cli import app
from autoresearch.console import PlainReporter
from autoresearch.ledger import Ledger
from autoresearch.errors import StopRun

WORSE = reply("raise the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.9")
CALL_MARGIN = 0.5  # seconds a failed call may take past --llm-timeout (a thread to start, a loaded machine)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def stopped_run(workspace, run_loop, script: list, agent_options: dict | None = None, **options):
    """Start a run that is expected to stop; returns (the StopRun message, the rows, the run row)."""
    with pytest.raises(StopRun) as stopped:
        run_loop.small(script, tag=TAG, max_experiments=5, agent_options=agent_options, **options)
    ledger = Ledger(workspace / "runs/ledger.db")
    return str(stopped.value), ledger.experiments(TAG), ledger.run(TAG)


def prompt_of(request: dict) -> str:
    return request["messages"][1]["content"]


# --- the endpoint fails

def test_endpoint_down_stops_the_run_cleanly_after_n_failed_calls_before_anything_trains(workspace, fake_llm, run_loop):
    # an endpoint that answers, but only with failures (nothing listening at all is said at once: test_newcomer)
    fake_llm.set_check_script([{"status": 503, "body": "upstream connect error"}])
    message, rows, run = stopped_run(workspace, run_loop, [BETTER], max_agent_failures=3)
    assert message == (f"run t stopped: the LLM endpoint failed 3 times in a row (last: {fake_llm.base_url} answered "
                       "503 upstream connect error)")
    assert run["status"] == "stopped"
    assert rows == [] and not (workspace / "runs/t/0.log").exists()  # the baseline never trained
    calls = Ledger(workspace / "runs/ledger.db").llm_calls(TAG, 0)
    assert [c["attempt"] for c in calls] == [0, 0, 0] and all(fake_llm.base_url in c["error"] for c in calls)


def test_refused_key_stops_at_once_without_retrying(workspace, fake_llm, run_loop):
    message, rows, run = stopped_run(workspace, run_loop, [
        {"status": 401, "body": {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}}])
    assert message == (f"run t stopped: the LLM endpoint {fake_llm.base_url} refused the API key (401 Incorrect "
                       "API key provided); set OPENAI_API_KEY to a key it accepts")
    assert len(fake_llm.requests) == 1
    assert run["status"] == "stopped" and rows[1]["outcome"] == "interrupted"
    assert_consistent(workspace, rows)


@pytest.mark.parametrize("failure", [
    {"status": 429, "body": {"error": {"message": "Rate limit reached", "type": "requests"}}},
    {"status": 500, "body": {"error": {"message": "The server had an error"}}},
    {"status": 503, "body": "upstream connect error"},
    {"status": 200, "body": "<html>not a completion</html>"},
], ids=["429", "500", "503", "200-without-completion"])
def test_endpoint_failures_are_retried_and_the_run_goes_on(workspace, fake_llm, failure, run_loop):
    loop, rows, _ = run_loop.small([failure, failure, BETTER], max_experiments=2, max_agent_failures=3)
    assert [r["outcome"] for r in rows] == ["keep", "keep"]
    calls = loop.ledger.llm_calls(TAG, 1)
    assert [bool(c["error"]) for c in calls] == [True, True, False]
    assert sum("trying again in" in note for note in loop.reporter.notes) == 2
    assert_consistent(workspace, rows)


def test_endpoint_that_keeps_failing_with_500_stops_the_run(workspace, fake_llm, run_loop):
    message, rows, run = stopped_run(workspace, run_loop, [{"status": 500}],
                                     max_agent_failures=4)
    assert f"failed 4 times in a row (last: {fake_llm.base_url} answered 500 scripted failure)" in message
    assert len(fake_llm.requests) == 4
    assert_consistent(workspace, rows)


def test_endpoint_slower_than_the_timeout_is_retried(workspace, fake_llm, run_loop):
    loop = run_loop.make([{"delay": 3, "content": WORSE}, BETTER], small=True, request_timeout=0.5)
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    rows = loop.ledger.experiments(TAG)
    assert rows[1]["outcome"] == "keep" and rows[1]["description"] == "lower the learning rate"
    calls = loop.ledger.llm_calls(TAG, 1)
    assert calls[0]["error"] == f"no answer from {fake_llm.base_url} within 0.5s"
    assert calls[0]["latency_seconds"] < 0.5 + CALL_MARGIN
    assert len(fake_llm.requests) == 2  # one request per call: the client does not retry behind the loop's back
    assert_consistent(workspace, rows)


def test_endpoint_that_answers_a_byte_at_a_time_fails_within_the_timeout(workspace, fake_llm, run_loop):
    # Each byte comes long before the client's read timeout, the whole answer long after --llm-timeout.
    loop = run_loop.make([{"trickle": 0.05, "content": WORSE}, BETTER], small=True, request_timeout=1)
    started = time.monotonic()
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    calls = loop.ledger.llm_calls(TAG, 1)
    assert calls[0]["error"] == f"no answer from {fake_llm.base_url} within 1s"
    assert calls[0]["latency_seconds"] < 1 + CALL_MARGIN
    assert loop.ledger.experiments(TAG)[1]["description"] == "lower the learning rate"
    assert time.monotonic() - started < 10  # the trickled answer alone would take about 30 s


def test_ctrl_c_while_waiting_for_a_slow_endpoint_stops_at_once(workspace, fake_llm):
    fake_llm.set_script([{"delay": 30, "content": BETTER}])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, "--llm-timeout", "60", env=tool_env(fake_llm))
    assert tool.wait_for("experiment 1: proposing"), tool.stderr()
    time.sleep(0.3)
    started = time.monotonic()
    tool.interrupt()
    assert tool.wait(10) == 130
    assert time.monotonic() - started < 5  # the wait for the answer is interrupted, not sat out
    rows = Ledger(workspace / "runs/ledger.db").experiments(TAG)
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("interrupted", "stopped by the person (Ctrl-C)")


def test_backoff_doubles_and_is_capped(workspace, fake_llm, run_loop):
    from autoresearch.proposer import MAX_BACKOFF_SECONDS
    loop, _, _ = run_loop.small([{"status": 500}, {"status": 500}, {"status": 500}, BETTER], max_experiments=2,
                       agent_backoff_seconds=0.05)
    waits = [note.rsplit("trying again in ", 1)[1] for note in loop.reporter.notes if "trying again in" in note]
    assert waits == ["0.05s", "0.1s", "0.2s"]
    assert MAX_BACKOFF_SECONDS == 300


def test_cli_says_in_one_line_why_the_run_stopped_and_how_to_go_on(workspace, monkeypatch, fake_llm):
    fake_llm.set_check_script([{"status": 503, "body": "upstream connect error"}])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    result = CliRunner().invoke(app, ["run", "--tag", TAG, "--max-agent-failures", "2", "--agent-backoff", "0.01",
                                      "--noise-runs", "0"], catch_exceptions=False)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: run t stopped: the LLM endpoint failed 2 times in a row")
    assert last.endswith("go on with: autoresearch run --resume t")


# --- the reply cannot be trained

@pytest.mark.parametrize("answer,reason", [
    ("", "edit did not apply: the reply was empty"),
    ({"content": "", "finish_reason": "length"}, "edit did not apply: the reply was empty (cut off at the model's"),
    (BETTER[:BETTER.index("=======")], "edit did not apply: a block is cut off"),
    ({"content": BETTER[:BETTER.index("=======")], "finish_reason": "length"},
     "edit did not apply: the reply was cut off at the model's length limit; a block is cut off"),
    ("DESCRIPTION: lower the learning rate\nI would lower it to 0.3.", "edit did not apply: the reply has no SEARCH"),
    (reply("new file", "import torch", "import torch.nn", filename="model.py"),
     "edit did not apply: block 1 names 'model.py'; the files are: prepare.py,"),
    (reply("better eval", "    return (learning_rate - 0.3) ** 2 + 1.0 / width", "    return 0.0",
           filename="prepare.py"), "touched prepare.py"),
    # a proxy that does not pass the completion limit on
    ({"content": BETTER + "\n" + "x" * (MAX_REPLY_CHARS + 1), "ignore_limit": True}, "edit did not apply: the reply is"),
], ids=["empty", "empty-cut-off", "truncated", "truncated-length", "no-blocks", "unknown-file", "fixed-file",
        "enormous"])
def test_reply_that_cannot_be_trained_is_invalid_and_the_reason_reaches_the_agent(workspace, fake_llm, answer,
                                                                                  reason, run_loop):
    attempts = 1 if reason.startswith("touched") else 3  # a reply that applies is not asked again
    script = [answer] * attempts + [BETTER]
    loop, rows, _ = run_loop.small(script, max_experiments=3)
    assert rows[1]["outcome"] == "invalid" and rows[1]["reason"].startswith(reason), rows[1]["reason"]
    assert rows[1]["commit_sha"] is None and rows[1]["train_seconds"] is None
    assert not (workspace / "runs/t/1.log").exists()
    assert rows[2]["outcome"] == "keep"
    # the next proposal is told what went wrong, in the lineage table
    assert f"| 1 | invalid: `{rows[1]['reason'][:60]}" in prompt_of(fake_llm.requests[-1])  # quoted (issue 21)
    assert_consistent(workspace, rows)


def test_enormous_reply_is_not_sent_back_or_stored_whole(workspace, fake_llm, run_loop):
    enormous = {"content": BETTER + "\n" + "x" * 300_000, "ignore_limit": True}
    loop, rows, _ = run_loop.small([enormous, enormous, enormous, BETTER], max_experiments=2)
    assert rows[1]["outcome"] == "invalid"
    repair_request = json.dumps(fake_llm.requests[1]["messages"])
    assert len(repair_request) < 100_000 and "characters left out" in repair_request
    stored = loop.ledger.llm_calls(TAG, 1)
    assert all(len(call["reply"]) <= MAX_REPLY_CHARS + 100 for call in stored)


def test_same_change_as_an_earlier_experiment_is_a_duplicate_without_training(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([WORSE, WORSE, WORSE, WORSE, BETTER], max_experiments=4)  # 2: three tries
    assert rows[2]["outcome"] == "invalid" and rows[2]["reason"].startswith("edit did not apply: this change was "
                                                                           "tried already in this run")
    assert rows[2]["commit_sha"] is None and not (workspace / "runs/t/2.log").exists()
    assert rows[3]["outcome"] == "keep"
    assert_consistent(workspace, rows)


def test_reverting_to_the_baseline_is_a_duplicate_of_it(workspace, fake_llm, run_loop):
    back = reply("back to 0.5", "LEARNING_RATE = 0.3", "LEARNING_RATE = 0.5")
    _, rows, _ = run_loop.small([BETTER, back], max_experiments=3)
    assert rows[2]["outcome"] == "invalid" and "tried already in this run" in rows[2]["reason"]
    assert_consistent(workspace, rows)


def test_cli_llm_timeout_bounds_a_slow_endpoint(workspace, fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    fake_llm.set_script([{"delay": 30, "content": BETTER}])
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--tag", TAG, "--llm-timeout", "0.3", "--max-agent-failures", "2",
                                      "--agent-backoff", "0.01", "--noise-runs", "0"], catch_exceptions=False)
    assert result.exit_code == 1
    assert f"failed 2 times in a row (last: no answer from {fake_llm.base_url} within 0.3s)" in result.output
    assert len(fake_llm.requests) == 2  # one request per failed call
    calls = Ledger(workspace / "runs/ledger.db").llm_calls(TAG, 1)
    assert all(call["latency_seconds"] < 0.3 + CALL_MARGIN for call in calls)
    assert time.monotonic() - started < 15  # two calls cut at 0.3 s, not two waits of 30 s


# --- how a failed call reads

def test_a_failed_call_says_it_failed_and_why_instead_of_counting_no_tokens(workspace, fake_llm, run_loop):
    fake_llm.set_check_script([{"content": "ok", "usage": {"prompt_tokens": 12, "completion_tokens": 1}}])
    stream = io.StringIO()
    run_loop.small([{"status": 500}, BETTER], tag=TAG, max_experiments=2, reporter=PlainReporter(stream))
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert "LLM call, 12 + 1 tokens, -; run so far: tokens 13 (12 in, 1 out), cost -" in lines  # the check
    assert (f"experiment 1: LLM call failed: {fake_llm.base_url} answered 500 scripted failure; trying again in "
            "0.01s") in lines
    assert not any("0 + 0 tokens" in line for line in lines)


@pytest.mark.parametrize("failures, said", [
    (1, "the LLM endpoint failed once ({url} answered 500 scripted failure)"),
    (2, "the LLM endpoint failed 2 times in a row (last: {url} answered 500 scripted failure)"),
])
def test_the_count_of_failed_calls_reads_as_english(workspace, fake_llm, failures, said, run_loop):
    message, _, _ = stopped_run(workspace, run_loop, [{"status": 500}],
                                max_agent_failures=failures)
    assert message == "run t stopped: " + said.format(url=fake_llm.base_url)
