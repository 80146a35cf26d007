"""The lineage leaves out what a later success made stale (run/briefing.py)."""

from __future__ import annotations

from autoresearch.keep import DecisionRecord, KeepRule
from autoresearch.run.briefing import Briefing


def test_a_failed_baseline_before_a_kept_one_and_an_interrupted_row_keep_no_log_or_reason(new_run):
    journal, state = new_run.journal, new_run.state
    first = journal.open_experiment(description="baseline", commit_sha=state.best.commit)
    journal.update(first, log_tail="step 900 | loss 2.3\nTraceback: killed at budget + grace")
    journal.close(first, "timeout", "killed at 75s (budget 60s + grace 15s)", None)
    stopped = journal.open_experiment(description="a wider model", parent_sha=state.best.commit, parent_number=first)
    journal.interrupt(stopped, "tool error: OSError: /home/someone/runs/t/worktree is gone", propose_seconds=840.0)
    again = journal.open_experiment(description="baseline", commit_sha=state.best.commit)
    journal.close(again, "keep", None, 1.0, commit=state.best.commit,
                  decision=DecisionRecord.of_baseline([1.0], [0], None))
    crash = journal.open_experiment(description="a bad idea", parent_sha=state.best.commit, parent_number=again)
    journal.update(crash, log_tail="ValueError: bad")
    journal.close(crash, "crash", "exit code 1: ValueError", None)
    briefing = Briefing(new_run.workspace, new_run.ledger, state, "p", KeepRule(), 12000, lambda text: None)
    lineage = briefing.lineage(new_run.ledger.experiments(state.tag))
    assert [(e.number, e.outcome, e.reason, e.log_tail) for e in lineage] == [
        (0, "timeout", None, ""), (1, "interrupted", None, ""), (2, "keep", None, ""),
        (3, "crash", "exit code 1: ValueError", "ValueError: bad")]
    assert new_run.ledger.experiment(state.tag, stopped)["propose_seconds"] == 840.0
