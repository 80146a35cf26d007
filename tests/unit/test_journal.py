"""The journal (run/journal.py): the one writer of experiment rows, LLM calls, the noise floor, the best and the branch."""

from __future__ import annotations

from conftest import UNIT_TAG as TAG, git

from autoresearch.agents import LLMCall
from autoresearch.keep import DecisionRecord
from autoresearch.repo import EXPERIMENT_REF_PREFIX
from autoresearch.run.journal import RESULTS_FILE



def test_an_experiment_has_its_row_before_anything_else_and_the_next_number(new_run):
    journal, ledger = new_run.journal, new_run.ledger
    first = journal.open_experiment(description="baseline")
    second = journal.open_experiment(parent_sha=new_run.state.best.commit)
    assert (first, second) == (0, 1) and new_run.state.next_number == 2
    assert [row["outcome"] for row in ledger.experiments(TAG)] == ["running", "running"]


def test_a_keep_moves_the_best_the_pointer_and_the_branch_and_a_discard_puts_the_branch_back(new_run, workspace):
    journal, state, ledger = new_run.journal, new_run.state, new_run.ledger
    base = state.best.commit
    baseline = journal.open_experiment(description="baseline", commit_sha=base)
    journal.close(baseline, "keep", None, 1.0, commit=base, decision=DecisionRecord.of_baseline([1.0], [0], None))
    number = journal.open_experiment(parent_sha=base)
    train = (state.recipe_dir / "train.py").read_text().replace("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")
    commit = journal.commit(number, base, {"train.py": train}, "lower the learning rate")
    assert git(workspace, "rev-parse", f"{EXPERIMENT_REF_PREFIX}{TAG}/{number}") == commit
    assert git(workspace, "rev-parse", f"autoresearch/{TAG}") == base  # committed, not kept yet
    journal.close(number, "keep", "gain", 0.9, commit=commit, files={"train.py": train})
    assert (state.best.commit, state.best.number, state.best.metric, state.baseline_metric) == (commit, number, 0.9, 1.0)
    assert ledger.run(TAG)["best_number"] == number
    assert git(workspace, "rev-parse", f"autoresearch/{TAG}") == commit
    worse = journal.open_experiment(parent_sha=commit)
    other = journal.commit(worse, commit, {"train.py": train.replace("WIDTH = 4", "WIDTH = 2")}, "narrower")
    state.worktree.reset_hard(other)  # as if something had moved it: the outcome puts it back at the best
    journal.close(worse, "discard", None, 1.2, commit=other)
    assert git(workspace, "rev-parse", f"autoresearch/{TAG}") == commit
    assert ledger.experiment(TAG, worse)["best_before"] == 0.9
    lines = (new_run.run_dir / RESULTS_FILE).read_text().splitlines()
    assert [line.split("\t")[3] for line in lines[1:]] == ["keep", "keep", "discard"]
    assert state.seen_hashes  # the kept change's files: proposing them again is a duplicate


def test_interrupting_closes_only_an_open_row(new_run):
    journal, ledger = new_run.journal, new_run.ledger
    number = journal.open_experiment()
    journal.interrupt(number, "stopped by the person (Ctrl-C)")
    journal.interrupt(number, "a second reason is not written over the first")
    row = ledger.experiment(TAG, number)
    assert (row["outcome"], row["reason"]) == ("interrupted", "stopped by the person (Ctrl-C)")


def test_the_noise_floor_is_pooled_and_recorded(new_run):
    journal, state, ledger = new_run.journal, new_run.state, new_run.ledger
    journal.refine_noise([1.0, 1.02, 0.98], restart=True)
    first = state.noise.std
    journal.refine_noise([0.9, 0.9])
    assert state.noise.runs == 5 and state.noise.std < first
    assert ledger.run(TAG)["noise_std"] == state.noise.std


def test_every_llm_call_is_recorded_and_the_answered_ones_are_counted(new_run):
    journal, ledger = new_run.journal, new_run.ledger
    number = journal.open_experiment()
    journal.record_call(number, LLMCall(1, "gpt-5-mini", [{"role": "user", "content": "hi"}], "ok", None, 1000, 10,
                                        0.5, cached_tokens=100))
    journal.record_call(number, LLMCall(2, "gpt-5-mini", [], None, "refused", None, None, 0.1))
    assert len(ledger.llm_calls(TAG, number)) == 2
    assert len(new_run.reporter.tokens) == 1 and new_run.reporter.tokens[0][2] > 0  # priced
