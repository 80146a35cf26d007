"""The agent against servers as they behave: replies that would never end, streams given up on or cut,
windows too small for a repair, templates that drop the system message, prefix caches.

What a real llama.cpp server did to the tool (issue 16) is scripted here: without a completion
limit it writes until its context is full; it goes on writing an answer the client gave up on
unless the connection closes; a repair conversation outgrows the window the first prompt fitted.
"""

from __future__ import annotations

import time

import pytest
from conftest import reply
from fake_llm import CHUNK_TOKENS, FakeLLM, count_tokens, rendered
from faultkit import BETTER, TAG, assert_consistent, inject

from autoresearch.agents import LLMAgent
from autoresearch.console import Reporter
from autoresearch.ledger import Ledger
from autoresearch.prompts import DEFAULT_REPLY_TOKENS, SYSTEM_PROMPT, estimate_tokens, prompt_tokens

CALL_MARGIN = 0.5  # seconds a call may take past its limit (a thread to start, a loaded machine)
MAX_TOKENS_REFUSED = {"status": 400, "body": {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
               "instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}}
WRONG_BLOCK = reply("lower the learning rate", "LEARNING_RATE = 0.55", "LEARNING_RATE = 0.3")


@pytest.fixture
def server():
    """A fake server made with the options a test gives it: server(context_tokens=..., prefix_cache=True)."""
    made = []

    def make(**options) -> FakeLLM:
        made.append(FakeLLM(**options))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


# --- a completion limit on every proposal

def test_every_proposal_sends_the_default_completion_limit(workspace, fake_llm, run_loop):
    run_loop.small([BETTER], max_experiments=2)
    [request] = fake_llm.requests
    assert request["max_tokens"] == DEFAULT_REPLY_TOKENS and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


def test_the_limit_goes_under_the_name_the_check_learned(workspace, fake_llm, run_loop):
    fake_llm.set_check_script([MAX_TOKENS_REFUSED, "ok"])
    run_loop.small([BETTER], tag=TAG, max_experiments=2, agent_options={"reply_tokens": 777})
    [request] = fake_llm.requests
    assert request["max_completion_tokens"] == 777 and "max_tokens" not in request


def test_a_reply_that_would_never_end_stops_at_the_limit(workspace, server, run_loop):
    # A local server with a 100k window and no limit would write ~90k tokens; with the limit it stops at 300.
    fake = server(context_tokens=100_000)
    endless = {"content": BETTER, "endless": True, "token_seconds": 0.002}
    loop = run_loop.make(small=True, endpoint=fake, script=[endless], reply_tokens=300)
    started = time.monotonic()
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    rows = loop.ledger.experiments(TAG)
    assert rows[1]["outcome"] == "keep"  # the blocks came before the rambling, so they apply
    [call] = [c for c in loop.ledger.llm_calls(TAG, 1)]
    assert (call["finish_reason"], call["completion_tokens"]) == ("length", 300)
    assert time.monotonic() - started < 5  # 300 tokens at 2 ms, not 90k
    assert_consistent(workspace, rows)


def test_without_the_limit_the_call_is_given_up_and_its_stream_closed(workspace, server, run_loop):
    fake = server(context_tokens=100_000)
    endless = {"content": BETTER, "endless": True, "token_seconds": 0.02, "ignore_limit": True}
    loop = run_loop.make(small=True, endpoint=fake, script=[endless, BETTER], request_timeout=1)
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    calls = loop.ledger.llm_calls(TAG, 1)
    assert calls[0]["error"].startswith(f"no answer from {fake.base_url} within 1s (stream closed after ")
    assert calls[0]["latency_seconds"] < 1 + CALL_MARGIN
    assert calls[0]["reply"].startswith("DESCRIPTION: lower the learning rate")  # what came, kept for `show`
    assert loop.ledger.experiments(TAG)[1]["outcome"] == "keep"  # the next call proposed it


# --- streams given up on, cut, watched

def test_giving_up_closes_the_stream_so_the_server_stops_writing(workspace, server):
    fake = server()
    slow = {"content": BETTER, "endless": True, "token_seconds": 0.05, "ignore_limit": True}
    agent = LLMAgent(model="fake-model", base_url=fake.base_url, request_timeout=1)
    fake.set_script([slow])
    started = time.monotonic()
    with pytest.raises(Exception, match="within 1s"):
        agent._complete([{"role": "user", "content": "propose"}], 1, lambda call: None, {"max_tokens": 100})
    assert time.monotonic() - started < 1 + CALL_MARGIN
    # the server saw the client go at once (one more chunk at most), not when the answer was done
    assert _wait_for(lambda: fake.abandoned and fake.generating == 0, 2)
    assert fake.abandoned[0] - started < 1 + CALL_MARGIN + 0.05


def test_a_stream_cut_before_its_end_is_a_failed_call_and_the_run_goes_on(workspace, fake_llm, run_loop):
    loop, rows, _ = run_loop.small([{"content": BETTER, "cut_after": 40}, BETTER], max_experiments=2)
    calls = loop.ledger.llm_calls(TAG, 1)
    assert calls[0]["error"].startswith(f"the answer from {fake_llm.base_url} ended before the model finished (")
    assert "no finish reason" in calls[0]["error"] and len(calls[0]["reply"]) <= 40
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    assert_consistent(workspace, rows)


def test_the_person_sees_that_the_model_is_writing(workspace, fake_llm, run_loop):
    class Writing(Reporter):
        def __init__(self):
            self.heard: list[int] = []
            self.numbers: set[int | None] = set()

        def llm_writing(self, characters, number=None):
            self.heard.append(characters)
            self.numbers.add(number)

    reporter = Writing()
    run_loop.small([BETTER], tag=TAG, max_experiments=2, reporter=reporter)
    chunks = -(-count_tokens(BETTER) // CHUNK_TOKENS)
    assert len(reporter.heard) == chunks and reporter.heard == sorted(reporter.heard)
    assert reporter.heard[-1] == len(BETTER)
    assert reporter.numbers == {1}  # of experiment 1's reply


def test_the_live_panel_shows_the_model_writing():
    from io import StringIO

    from rich.console import Console

    from autoresearch.console import LiveReporter

    reporter = LiveReporter(Console(file=StringIO(), force_terminal=True, width=120))
    try:
        reporter.experiment_started(3)
        reporter.phase("proposing")
        reporter.llm_writing(1234)
        console = Console(file=StringIO(), width=120)
        console.print(reporter._render())
        assert "the model is writing its reply: 1,234 characters so far" in console.file.getvalue()
        # drafting ahead: experiment 4 is drafted while 3 trains; its row stays a training row
        reporter.phase("training", "wider", budget=60.0, slot=0, number=3)
        reporter.experiment_started(4)
        reporter.phase("proposing", number=4)
        reporter.drafting([4])
        reporter.llm_writing(99, 4)
        console = Console(file=StringIO(), width=120)
        console.print(reporter._render())
        panel = console.file.getvalue()
        assert "experiment 3 · training · wider" in panel
        assert "drafting: experiment 4 (99 characters written)" in panel
    finally:
        reporter.close()


# --- the window: what the server reports, and repairs that fit

def crashes_with_long_logs(count: int) -> list[str]:
    lines = "\n".join("print('warning: something long happened ' * 8)" for _ in range(20))
    return [inject(f"crash {index}", f"{lines}\nraise RuntimeError('crash {index}')") for index in range(count)]


@pytest.mark.parametrize("style", ["vllm", "llama.cpp"])
def test_the_prompt_budget_follows_the_context_the_server_reports(workspace, fake_llm, server, style, run_loop):
    run_loop.small(crashes_with_long_logs(3), max_experiments=4)  # a lineage with long failure logs
    fake = server(context_tokens=3_500, context_style=style)
    loop = run_loop.make(small=True, endpoint=fake, script=[BETTER], reply_tokens=1_000)
    run_loop(loop=loop, resume=True, small=True, tag=TAG, max_experiments=5)
    assert loop.agent.context_tokens == 3_500
    [request] = fake.requests  # no refusal: it fitted the first time
    assert count_tokens(rendered(request["messages"])) + request["max_tokens"] <= 3_500
    assert loop.ledger.experiments(TAG)[-1]["outcome"] == "keep"


@pytest.mark.parametrize("tokenizer", ["llama.cpp", "llama-cpp-python"])
def test_the_servers_tokenizer_measures_the_characters_a_token(workspace, server, tokenizer, run_loop):
    fake = server(tokenizer=tokenizer)
    loop = run_loop.make(small=True, endpoint=fake, script=[BETTER])
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    prompt = "\n\n".join(m["content"] for m in fake.requests[0]["messages"])
    assert loop.agent.chars_per_token == pytest.approx(len(prompt) / count_tokens(prompt), rel=0.02)


def test_a_repair_that_would_overflow_the_window_is_fitted_into_it(workspace, server, run_loop):
    # A wrong block with a long reasoning: sent back whole with the repair message, the conversation
    # would pass the window (vLLM refuses prompt + completion limit past it); shortened, it fits.
    fake = server(context_tokens=4_500, context_style="vllm")
    rambling = WRONG_BLOCK.replace("Because it should help.", "Because it should help. " * 400)
    loop = run_loop.make(small=True, endpoint=fake, script=[rambling, BETTER], reply_tokens=2_500)
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    rows = loop.ledger.experiments(TAG)
    assert rows[1]["outcome"] == "keep", rows[1]["reason"]
    first, second = fake.requests
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert "characters left out" in second["messages"][2]["content"]
    whole = count_tokens(rendered(first["messages"])) + count_tokens(rambling) + 2_500
    assert count_tokens(rendered(second["messages"])) + 2_500 <= 4_500 < whole  # whole, it would not have fitted
    assert_consistent(workspace, rows)


def test_a_conversation_that_cannot_fit_ends_invalid_keeping_the_calls_that_worked(workspace, fake_llm, run_loop):
    overflow = {"status": 400, "body": {"error": {
        "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 6201, "n_ctx": 6144,
        "message": "request (6201 tokens) exceeds the available context size (6144 tokens), try increasing it"}}}
    loop, rows, _ = run_loop.small([WRONG_BLOCK, overflow, BETTER], max_experiments=3)
    assert rows[1]["outcome"] == "invalid"
    assert rows[1]["reason"].startswith("edit did not apply: block 1 (train.py): the SEARCH part is not in the file")
    assert rows[1]["reason"].endswith("; the repair conversation does not fit the model's context (6,144 tokens)")
    assert rows[1]["description"] == "lower the learning rate"
    calls = loop.ledger.llm_calls(TAG, 1)
    assert [(c["attempt"], c["error"] is None) for c in calls] == [(1, True), (2, False)]
    assert rows[2]["outcome"] == "keep" and loop.ledger.run(TAG)["status"] == "finished"
    assert_consistent(workspace, rows)


def test_a_budget_too_small_for_any_repair_turn_ends_invalid(workspace, fake_llm, run_loop):
    # A first prompt at its least, then no room for even a short failed reply: no endpoint failure, no overflow.
    loop, rows, _ = run_loop.small([WRONG_BLOCK, BETTER], max_experiments=2, prompt_tokens=50)
    assert rows[1]["outcome"] == "invalid"
    assert rows[1]["reason"].endswith("no repair turn fits the prompt budget of 50 tokens")
    assert len(fake_llm.requests) == 1


def test_a_stream_without_usage_counts_the_estimate_so_the_caps_still_hold(workspace, server, run_loop):
    fake = server(stream_usage=False)  # llama-cpp-python's server sends no usage chunk
    loop = run_loop.make(small=True, endpoint=fake, script=[BETTER, reply("wider", "WIDTH = 4", "WIDTH = 8")])
    summary = run_loop(loop=loop, small=True, tag=TAG, max_experiments=10, max_tokens=1_500).summary
    [call] = loop.ledger.llm_calls(TAG, 1)
    assert call["prompt_tokens"] == prompt_tokens(fake.requests[0]["messages"])
    assert call["completion_tokens"] == estimate_tokens(BETTER)
    assert summary.stop_reason.startswith("reached --max-tokens 1500")


def test_without_usage_a_reply_counts_no_more_than_the_limit_it_was_sent(workspace, server, run_loop):
    fake = server(stream_usage=False)
    rambling = "DESCRIPTION: x\n" + " abcdefghij" * 200  # long words: fewer tokens than the estimate says
    loop = run_loop.make([{"content": rambling, "endless": True}], small=True, endpoint=fake, reply_tokens=50)
    run_loop(loop=loop, small=True, tag=TAG, max_experiments=2)
    calls = loop.ledger.llm_calls(TAG, 1)
    assert calls[0]["finish_reason"] == "length" and calls[0]["completion_tokens"] == 50


# --- a chat template that drops the system message

def test_a_template_that_drops_the_system_message_still_gets_the_reply_form(workspace, server, run_loop):
    fake = server(drop_system=True)

    def model(request: dict):
        seen = "\n".join(m["content"] for m in request["messages"])
        assert all(m["role"] != "system" for m in request["messages"])
        told = all(part in seen for part in ("DESCRIPTION:", "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"))
        return BETTER if told else "I would lower the learning rate to 0.3."

    loop, rows, _ = run_loop.small(endpoint=fake, script=[model], max_experiments=2)
    assert rows[1]["outcome"] == "keep"
    assert SYSTEM_PROMPT not in fake.requests[0]["messages"][1]["content"]  # briefly, not the whole system message


# --- the prefix cache: cached tokens in the ledger, in show, priced as cached

def test_cached_tokens_are_recorded_shown_and_priced_as_cached(workspace, server, run_loop):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    (workspace / "autoresearch.yaml").write_text("prices:\n  fake-model: {input: 10, output: 20, cached: 1}\n")
    fake = server(prefix_cache=True)
    worse = reply("raise the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.9")
    wider = reply("wider", "WIDTH = 4", "WIDTH = 5")
    loop, rows, _ = run_loop.small(endpoint=fake, script=[worse, wider], max_experiments=3)
    calls = Ledger(workspace / "runs/ledger.db").llm_calls(TAG, 2)
    [call] = calls
    assert call["cached_tokens"] == fake.cached[1] and call["cached_tokens"] > 0
    shown = CliRunner().invoke(app, ["show", "2", "--tag", TAG, "--prompt", "--json"])
    import json
    detail = json.loads(shown.stdout)
    expected = ((call["prompt_tokens"] - call["cached_tokens"]) * 10 + call["cached_tokens"] * 1
                + call["completion_tokens"] * 20) / 1e6
    assert detail["cached_tokens"] == call["cached_tokens"]
    assert detail["cost_usd"] == pytest.approx(expected) and detail["llm_calls"][0]["cost_usd"] == pytest.approx(expected)
    text = CliRunner().invoke(app, ["show", "2", "--tag", TAG, "--prompt"]).stdout
    assert f"({call['cached_tokens']} of them cached)" in text and f"({call['cached_tokens']:,} cached)" in text


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_the_cli_sends_the_completion_limit_it_was_given_and_keeps_it_on_resume(workspace, fake_llm, monkeypatch):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    fake_llm.set_script([BETTER, reply("wider", "WIDTH = 4", "WIDTH = 8")])
    flags = ["--model", "fake-model", "--noise-runs", "0", "--agent-backoff", "0.01"]
    result = CliRunner().invoke(app, ["run", "--tag", TAG, "--max-experiments", "2", "--reply-tokens", "500", *flags])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["run", "--resume", TAG, "--max-experiments", "3"])
    assert result.exit_code == 0, result.output
    assert [request["max_tokens"] for request in fake_llm.requests] == [500, 500]


def test_show_prompt_numbers_calls_across_a_restart_and_shows_only_the_new_turns(workspace, fake_llm, run_loop):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    run_loop.small([{"status": 500}, WRONG_BLOCK, BETTER], max_experiments=2)
    out = CliRunner().invoke(app, ["show", "1", "--tag", TAG, "--prompt"]).stdout
    headings = [line for line in out.splitlines() if line.startswith("── LLM call")]
    assert [h.split(" · ")[0] for h in headings] == [
        "── LLM call 1 (attempt 1)", "── LLM call 2 (attempt 1, asked again from the start)",
        "── LLM call 3 (attempt 2)"]
    assert headings[0].endswith(" · failed ───") or " · failed " in headings[0]
    assert " · stop " in headings[1] and headings[1].split(" · ")[-2].endswith("s")  # latency, then finish reason
    assert "(the 2 messages of LLM call 1, then:)" in out  # the restart asks the same first prompt
    assert "(the 3 messages of LLM call 2, then:)" in out  # the repair turn goes on call 2's reply
    assert out.count(SYSTEM_PROMPT.splitlines()[0]) == 1
