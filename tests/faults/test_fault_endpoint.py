"""The endpoint is checked before anything trains, and a refusal no retry can mend stops the run at once.

A wrong URL, key or model used to be found only after the baseline had trained; one cheap request
now finds it first, at the start and at each resume. A prompt longer than the model's context, a
refused key and an unknown model stop the run with one line that says what to change, whatever
the server's wording (the bodies below are the real ones of OpenAI, vLLM, llama.cpp,
llama-cpp-python, LM Studio and Ollama). Everything runs against the fake HTTP endpoint.
"""

from __future__ import annotations

import io
import re

import pytest
from faultkit import BETTER, TAG, inject
from typer.testing import CliRunner

from autoresearch.agents import CHECK_COMPLETION_TOKENS, CHECK_MESSAGES
from autoresearch.cli import app
from autoresearch.console import PlainReporter
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT, Ledger
from autoresearch.errors import StopRun
from autoresearch.prompts import PROMPT_TOKEN_BUDGET, estimate_tokens

REFUSED_KEY = {"status": 401, "body": {"error": {"message": "Incorrect API key provided: sk-wrong",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}}}
NO_SUCH_MODEL = {"status": 404, "body": {"error": {"message": "The model `fake-model` does not exist or you do not "
                                                   "have access to it.", "code": "model_not_found"}}}
MAX_TOKENS_REFUSED = {"status": 400, "body": {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
               "instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def stop(run_loop, script: list | None = None, resume: bool = False, **options) -> str:
    """Run (or resume) the loop expecting it to stop; returns its one line."""
    with pytest.raises(StopRun) as stopped:
        run_loop.small(script, resume=resume, tag=TAG, max_experiments=3, **options)
    return str(stopped.value)


# --- the check before anything trains

def test_check_is_one_small_completion_recorded_before_the_baseline(workspace, fake_llm, run_loop):
    loop, rows, _ = run_loop.small([BETTER], max_experiments=2)
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    [check] = fake_llm.checks
    assert check["model"] == "fake-model" and check["max_tokens"] == CHECK_COMPLETION_TOKENS
    assert "max_completion_tokens" not in check and loop.agent.completion_limit_parameter == "max_tokens"
    [call] = [c for c in loop.ledger.llm_calls(TAG, 0) if c["attempt"] == ENDPOINT_CHECK_ATTEMPT]
    assert call["messages"] == list(CHECK_MESSAGES) and call["reply"] == "ok" and call["error"] is None
    assert fake_llm.requests[0]["messages"][0]["role"] == "system"  # proposals come after it, unchanged


def test_wrong_key_is_found_before_the_baseline_trains(workspace, fake_llm, run_loop):
    loop = run_loop.make([BETTER], small=True)
    fake_llm.set_check_script([REFUSED_KEY])
    message = stop(run_loop, loop=loop)
    assert message == (f"run t stopped: the LLM endpoint {fake_llm.base_url} refused the API key (401 Incorrect "
                       "API key provided: sk-wrong); set OPENAI_API_KEY to a key it accepts")
    assert len(fake_llm.checks) == 1 and fake_llm.requests == []  # not retried, and nothing proposed
    assert loop.ledger.experiments(TAG) == [] and not (workspace / "runs/t/0.log").exists()
    assert loop.ledger.run(TAG)["status"] == "stopped"
    [call] = loop.ledger.llm_calls(TAG, 0)
    assert call["attempt"] == ENDPOINT_CHECK_ATTEMPT and "refused the API key" in call["error"]


def test_unknown_model_is_one_line_naming_the_url_the_model_and_the_flag(workspace, fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    fake_llm.set_check_script([NO_SUCH_MODEL])
    result = invoke("run", "--tag", TAG, "--model", "fake-model", "--noise-runs", "0")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: run t stopped: the LLM endpoint {fake_llm.base_url} has no model fake-model (404 The model "
        "`fake-model` does not exist or you do not have access to it.); choose a model it serves, or correct the URL "
        "(the part before /chat/completions, often ending in /v1); after fixing it, go on with: autoresearch run "
        "--resume t --model MODEL")
    assert not (workspace / "runs/t/0.log").exists()


def test_a_failed_check_is_retried_like_any_call_and_the_run_goes_on(workspace, fake_llm, run_loop):
    fake_llm.set_check_script([{"status": 503, "body": "upstream connect error"}, "ok"])
    loop, rows, _ = run_loop.small([BETTER], max_experiments=2)
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    # (on a busy machine a line saying so comes first)
    assert (f"endpoint check: LLM call failed: {fake_llm.base_url} answered 503 upstream connect error; trying again "
            "in 0.01s") in loop.reporter.notes
    assert [bool(c["error"]) for c in loop.ledger.llm_calls(TAG, 0)] == [True, False]


def test_a_model_that_wants_max_completion_tokens_is_asked_again_with_it(workspace, fake_llm, run_loop):
    fake_llm.set_check_script([MAX_TOKENS_REFUSED, "ok"])
    loop, rows, _ = run_loop.small([BETTER], max_experiments=2)
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    first, second = fake_llm.checks
    assert first["max_tokens"] == CHECK_COMPLETION_TOKENS and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == CHECK_COMPLETION_TOKENS and "max_tokens" not in second
    assert loop.agent.completion_limit_parameter == "max_completion_tokens"
    assert len(loop.ledger.llm_calls(TAG, 0)) == 2


def test_resume_checks_again_before_training_and_says_which_endpoint_and_model(workspace, fake_llm, run_loop):
    run_loop.small([BETTER], max_experiments=2)
    fake_llm.set_check_script([REFUSED_KEY])
    message = stop(run_loop, [BETTER], resume=True)
    assert "refused the API key" in message
    assert len(Ledger(workspace / "runs/ledger.db").experiments(TAG)) == 2  # nothing more was tried

    fake_llm.set_check_script(["ok"])
    stream = io.StringIO()
    run_loop.small(resume=True, tag=TAG, max_experiments=3, reporter=PlainReporter(stream),
                   agent_options={"model": "other-model"})
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert (f"run t: recipe synth, val_loss (lower is better), budget 5s, agent llm (model other-model at "
            f"{fake_llm.base_url})") in lines
    checks = [c for c in Ledger(workspace / "runs/ledger.db").llm_calls(TAG, 2) if c["attempt"] == 0]
    assert [bool(c["error"]) for c in checks] == [True, False]  # both resumes' checks, under the next experiment
    shown = invoke("show", "2", "--tag", TAG, "--prompt")
    assert shown.exit_code == 0 and f"endpoint check · other-model · " in shown.output
    assert invoke("log", "--tag", TAG).exit_code == 0


def test_nothing_is_checked_when_nothing_will_run(workspace, fake_llm, run_loop):
    run_loop.small([BETTER], max_experiments=1)
    fake_llm.set_check_script([REFUSED_KEY])
    run_loop.small([BETTER], resume=True, tag=TAG, max_experiments=1)  # reached already
    assert len(fake_llm.checks) == 0


def test_the_mutate_agent_has_nothing_to_check(workspace):
    result = invoke("run", "--agent", "mutate", "--tag", "m", "--max-experiments", "1", "--noise-runs", "0")
    assert result.exit_code == 0, result.output
    assert Ledger(workspace / "runs/ledger.db").llm_calls("m") == []


# --- refusals no retry can mend

@pytest.mark.parametrize("failure", [REFUSED_KEY, NO_SUCH_MODEL, {"status": 403, "body": {"error": {
    "message": "Project does not have access to model fake-model", "code": "model_not_found"}}}],
    ids=["401", "404", "403"])
def test_a_refused_key_or_model_during_a_proposal_stops_at_once(workspace, fake_llm, failure, run_loop):
    message = stop(run_loop, [failure], max_agent_failures=5)
    assert message.startswith(f"run t stopped: the LLM endpoint {fake_llm.base_url} ")
    assert len(fake_llm.requests) == 1


# What servers answer when the prompt is longer than the model's context, with what they say of it:
# (the body, the context's size, the server's count of the prompt).
OVERFLOWS = {
    "openai": ({"error": {"message": "This model's maximum context length is 2048 tokens. However, your messages "
                                     "resulted in 4549 tokens. Please reduce the length of the messages.",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
               2048, 4549),
    "openai-new": ({"error": {"message": "Your input exceeds the context window of this model. Please adjust your "
                                         "input and try again.", "type": "invalid_request_error",
                              "code": "context_length_exceeded"}}, None, None),
    "vllm": ({"object": "error", "message": "This model's maximum context length is 2048 tokens. However, you "
                                            "requested 0 output tokens and your prompt contains at least 4549 input "
                                            "tokens, for a total of at least 4549 tokens. Please reduce the length "
                                            "of the input prompt or the number of requested output tokens.",
              "type": "BadRequestError", "param": None, "code": 400}, 2048, 4549),
    "vllm-old": ({"object": "error", "message": "The decoder prompt (length 4549) is longer than the maximum model "
                                                "length of 2048. Make sure that `max_model_len` is no smaller than "
                                                "the number of text tokens.", "type": "BadRequestError", "code": 400},
                 2048, 4549),
    "llama.cpp": ({"error": {"code": 400, "message": "request (4549 tokens) exceeds the available context size "
                                                     "(2048 tokens), try increasing it",
                             "type": "exceed_context_size_error", "n_prompt_tokens": 4549, "n_ctx": 2048}},
                  2048, 4549),
    "llama.cpp-old": ({"error": {"code": 400, "message": "the request exceeds the available context size, try "
                                                         "increasing it", "type": "invalid_request_error"}},
                      None, None),
    "llama-cpp-python": ({"error": {"message": "This model's maximum context length is 2048 tokens. However, you "
                                               "requested 4549 tokens (4549 in the messages, None in the "
                                               "completion). Please reduce the length of the messages or "
                                               "completion.", "type": "invalid_request_error", "param": "messages",
                                    "code": "context_length_exceeded"}}, 2048, 4549),
    "lm-studio": ({"error": "Trying to keep the first 4549 tokens when context the overflows. However, the model "
                            "is loaded with context length of only 2048 tokens, which is not enough. Try to load the "
                            "model with a larger context length, or provide a shorter input"}, 2048, None),
    "ollama": ({"error": {"message": "the input length exceeds the context length", "type": "api_error"}},
               None, None),
}


@pytest.mark.parametrize("server", list(OVERFLOWS))
def test_a_prompt_longer_than_the_context_stops_at_once_saying_both_sizes(workspace, fake_llm, server, run_loop):
    body, context_tokens, counted = OVERFLOWS[server]
    message = stop(run_loop, [{"status": 400, "body": body}], max_agent_failures=5)
    assert len(fake_llm.requests) == 1  # not retried
    estimated = re.search(r"about ([\d,]+) tokens by the tool's estimate", message).group(1)
    prompt = fake_llm.requests[0]["messages"]
    assert int(estimated.replace(",", "")) == estimate_tokens("\n\n".join(m["content"] for m in prompt))
    assert f"does not fit the context of model fake-model at {fake_llm.base_url}" in message
    assert (f"({context_tokens:,} tokens)" if context_tokens else "(the server did not give its size)") in message
    assert (f"{counted or 0:,} by the server's count" in message) == (counted is not None)
    assert "serve the model with a longer context" in message
    assert len(message.splitlines()) == 1


def test_a_context_too_small_for_any_prompt_says_so(workspace, fake_llm, run_loop):
    body = {"error": {"code": 400, "message": "request (700 tokens) exceeds the available context size (64 tokens), "
                                              "try increasing it", "type": "exceed_context_size_error",
                      "n_prompt_tokens": 700, "n_ctx": 64}}
    message = stop(run_loop, [{"status": 400, "body": body}])
    assert "even the shortest prompt (about" in message and "lower the prompt token budget" not in message


# A training that fails with a long log: the next prompts carry its tail, which a smaller budget leaves out.
def noisy_crash(index: int) -> str:
    lines = "\n".join(f"print('{index}: ' + 'warning: something long happened ' * 8)" for _ in range(20))
    return inject(f"crash {index}", f"{lines}\nraise RuntimeError('crash {index}')")


CHARS_PER_SERVER_TOKEN = 3.5  # the fake server's tokenizer, denser than the tool's estimate of four


def server_with_a_small_context(context_tokens: int):
    """A server that refuses, as llama.cpp does, any prompt longer than its context; else proposes BETTER."""
    def answer(request: dict):
        counted = int(len("\n\n".join(m["content"] for m in request["messages"])) / CHARS_PER_SERVER_TOKEN)
        if counted <= context_tokens:
            return BETTER
        return {"status": 400, "body": {"error": {
            "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": counted, "n_ctx": context_tokens,
            "message": f"request ({counted} tokens) exceeds the available context size ({context_tokens} tokens), "
                       "try increasing it"}}}
    return answer


def test_the_suggested_prompt_budget_fits_and_the_cli_takes_it(workspace, fake_llm, monkeypatch, run_loop):
    crashes = [noisy_crash(index) for index in range(3)]
    loop, rows, _ = run_loop.small(crashes, max_experiments=4)
    assert [row["outcome"] for row in rows] == ["keep", "crash", "crash", "crash"]
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    fake_llm.set_script([server_with_a_small_context(3000)])
    result = invoke("run", "--resume", TAG, "--model", "fake-model", "--max-experiments", "5", "--reply-tokens", "1000")
    assert result.exit_code == 1 and len(fake_llm.requests) == 1
    line = result.output.strip().splitlines()[-1]
    suggested = re.search(r"--prompt-tokens (\d+)$", line).group(1)
    assert f"lower the prompt token budget from {PROMPT_TOKEN_BUDGET:,} to {int(suggested):,} or less" in line
    assert "(3,000 tokens)" in line and "by the server's count" in line

    result = invoke("run", "--resume", TAG, "--model", "fake-model", "--max-experiments", "5", "--noise-runs", "0",
                    "--reply-tokens", "1000", "--prompt-tokens", suggested)
    assert result.exit_code == 0, result.output
    assert Ledger(workspace / "runs/ledger.db").experiments(TAG)[-1]["description"] == "lower the learning rate"
