"""What a new user trips over (issue 23, items 1 to 13): each with the behaviour that fixes it."""

from __future__ import annotations

from conftest import reply

from autoresearch.agents import LLMAgent
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.workspace import Workspace

CRASH = reply("break it", "save_model(LEARNING_RATE, WIDTH)", "loss = 1 / 0")


def run_loop(fake_llm, script, max_experiments=2, **options):
    fake_llm.set_script(script)
    session = Session(Workspace.find(), LLMAgent(model="fake-model", base_url=fake_llm.base_url))
    summary = session.start(RunOptions(tag="t", max_experiments=max_experiments, **{"draft_ahead": False, **options}))
    return summary, session.ledger.experiments("t")


# --- 1. results.tsv: no metric is an empty cell, never 0.000000


def test_results_tsv_leaves_the_metric_of_a_failed_row_empty(workspace, fake_llm):
    _, rows = run_loop(fake_llm, [CRASH])
    assert rows[1]["outcome"] == "crash"
    lines = (workspace / "runs/t/results.tsv").read_text().splitlines()
    assert lines[2].split("\t")[1:4] == ["", "0.0", "crash"]
    assert lines[1].split("\t")[1] == "0.290000"
