"""A run made the way a session makes one (its ledger row and its worktree), for the run's pieces to be tried alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from autoresearch.console import Reporter
from autoresearch.ledger import Ledger
from autoresearch.pricing import LivePrices
from autoresearch.recipe import load_recipe
from autoresearch.repo import RUN_BRANCH_PREFIX
from autoresearch.run.journal import Journal
from autoresearch.run.state import Best, RunState
from autoresearch.workspace import Workspace

TAG = "unit"


class Heard(Reporter):
    """A reporter that keeps what it is told (a Reporter that ignores nothing)."""

    def __init__(self):
        self.notes: list[str] = []
        self.finished: list[dict] = []
        self.tokens: list[tuple] = []

    def note(self, text):
        self.notes.append(text)

    def experiment_finished(self, row, best, baseline):
        self.finished.append(row)

    def tokens_used(self, prompt_tokens, completion_tokens, cost, cached_tokens=0, number=None):
        self.tokens.append((prompt_tokens, completion_tokens, cost, cached_tokens, number))


@dataclass
class NewRun:
    workspace: Workspace
    ledger: Ledger
    state: RunState
    journal: Journal
    reporter: Heard
    prices: LivePrices

    @property
    def run_dir(self) -> Path:
        return self.workspace.run_dir(TAG)


@pytest.fixture
def new_run(workspace) -> NewRun:
    """A new run of the synthetic recipe: its row in a real ledger and its worktree in the real repository."""
    found = Workspace.find()
    ledger = Ledger(found.ledger_path)
    base = found.repo.head_commit()
    recipe_path = found.resolve_recipe(None)
    recipe = load_recipe(found.git_root / recipe_path)
    path = found.run_dir(TAG) / "worktree"
    ledger.create_run(TAG, recipe=recipe_path, branch=RUN_BRANCH_PREFIX + TAG, worktree=str(path), base_commit=base,
                      agent="mutate", model=None, metric=recipe.metric, direction=recipe.direction,
                      budget_seconds=5.0, config={})
    worktree = found.repo.add_worktree(path, RUN_BRANCH_PREFIX + TAG, base)
    state = RunState(tag=TAG, recipe_path=recipe_path, worktree=worktree, recipe=recipe, budget_seconds=5.0,
                     best=Best(base))
    reporter = Heard()
    prices = LivePrices(found.root, reporter.note)
    journal = Journal(ledger, state, found.run_dir(TAG), reporter, prices, "mutate", None, seed=0)
    return NewRun(found, ledger, state, journal, reporter, prices)
