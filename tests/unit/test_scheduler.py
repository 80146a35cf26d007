"""The scheduler (run/scheduler.py), wired by hand from the run's pieces: it needs no session, only what it is handed."""

from __future__ import annotations

from conftest import UNIT_TAG as TAG

from autoresearch.agents import MutateAgent
from autoresearch.keep import KeepRule
from autoresearch.proposer import Proposer
from autoresearch.recovery import run_marker
from autoresearch.run.briefing import Briefing
from autoresearch.run.limits import ActiveClock, Limits
from autoresearch.run.scheduler import Scheduler
from autoresearch.execution.local import LocalExecutor
from autoresearch.settings import RunOptions
from autoresearch.trainer import RunContext, Trainer
from autoresearch.execution.jobs import Slot


def test_a_baseline_then_experiments_until_the_limit_each_decided_and_recorded(new_run):
    state, ledger, reporter = new_run.state, new_run.ledger, new_run.reporter
    options = RunOptions(max_experiments=4, noise_runs=0, seed=3)
    context = RunContext(tag=TAG, recipe=state.recipe, recipe_path=state.recipe_path,
                         repo_root=new_run.workspace.git_root, base_commit=state.best.commit, run_dir=new_run.run_dir,
                         budget_seconds=state.budget_seconds, marker=run_marker(new_run.run_dir),
                         worktree=state.worktree)
    trainer = Trainer(context, ledger, LocalExecutor(), reporter)
    clock = ActiveClock(ledger, TAG)
    briefing = Briefing(new_run.workspace, ledger, state, "Lower it.", KeepRule(), 12000, reporter.note)
    proposer = Proposer(MutateAgent(seed=3), 3, 0.0, reporter.note)
    scheduler = Scheduler(state, new_run.journal, briefing, Limits(ledger, state, options, clock, new_run.prices),
                          proposer, options.keep_rule, trainer, reporter, [Slot(0)], draft_ahead=False, seed=3,
                          noise_runs=0, confirm_runs=3)
    assert scheduler.run() == "reached --max-experiments 4"
    rows = ledger.experiments(TAG)
    assert len(rows) == 4 and rows[0]["outcome"] == "keep" and rows[0]["description"].startswith("baseline")
    assert all(row["outcome"] in ("keep", "discard", "invalid") for row in rows[1:])
    assert [row["number"] for row in reporter.finished] == [0, 1, 2, 3]
    assert state.best.commit == state.worktree.head_commit()
    kept = [row for row in rows if row["outcome"] == "keep"]
    assert state.best.number == kept[-1]["number"] and ledger.run(TAG)["best_number"] == kept[-1]["number"]
