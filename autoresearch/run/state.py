"""Where a run stands (the best, the noise floor, the next number, what was tried), and how a resume rebuilds it.

The ledger is the truth; `RunState` is the part of it the scheduler consults at every step, kept in
memory. The journal (journal.py) is the only code that changes it during a run, always after the
ledger row it follows from is written; `rebuild_state` makes it again from the ledger on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.keep import recorded_runs
from autoresearch.ledger import Ledger, best_row
from autoresearch.noise import NoiseFloor
from autoresearch.recipe import Recipe
from autoresearch.repo import Repo


@dataclass(frozen=True)
class Best:
    """The run's best commit: the one the branch points at, every candidate is decided against, and drafts start
    from. Before the baseline is kept it is the run's start commit, with no number and no metric."""

    commit: str
    number: int | None = None
    metric: float | None = None
    runs: tuple[float, ...] = ()  # its metric in each of its training runs

    @property
    def measured(self) -> bool:
        return self.metric is not None

    def run_metrics(self) -> list[float]:
        """What a candidate is compared with: each of its runs, or its one metric."""
        return list(self.runs) or [self.metric]


@dataclass
class RunState:
    """Where a run stands; rebuilt from the ledger on resume."""

    tag: str
    recipe_path: str  # relative to the repository's top
    worktree: Repo
    recipe: Recipe
    budget_seconds: float
    best: Best
    baseline_metric: float | None = None
    next_number: int = 0
    seen_hashes: dict[str, int] = field(default_factory=dict)  # the editable files' digest -> its experiment
    noise: NoiseFloor = field(default_factory=lambda: NoiseFloor(std=None, runs=0))
    noise_groups: list[list[float]] = field(default_factory=list)  # each multi-seed commit's metrics

    @property
    def recipe_dir(self) -> Path:
        return self.worktree.root / self.recipe_path

    def read_files(self, names: tuple[str, ...]) -> dict[str, str]:
        """The recipe's files as the run's worktree has them (the best commit's)."""
        return {name: (self.recipe_dir / name).read_text() for name in names}


@dataclass(frozen=True)
class RunSummary:
    """How an invocation of a run ended, for the person."""

    tag: str
    experiments: int  # every experiment of the run
    counted: int  # those --max-experiments counts: ended and not interrupted
    kept_changes: int  # keeps over the baseline (the baseline is the run's first keep, no change of anyone's)
    best_metric: float | None
    baseline_metric: float | None
    direction: str
    stop_reason: str


def rebuild_state(ledger: Ledger, run: dict, worktree: Repo, recipe: Recipe, budget_seconds: float) -> RunState:
    """A resumed run's state from its ledger rows: the best by its pointer, the next number, the digests of
    what was tried (an interrupted experiment never got a result: proposing it again is no duplicate), the
    noise floor from the run's row and the multi-seed commits' decisions."""
    tag = run["tag"]
    rows = ledger.experiments(tag)
    kept = [row for row in rows if row["outcome"] == "keep"]
    row = best_row(run, kept)
    best = Best(run["base_commit"]) if row is None else Best(row["commit_sha"], row["number"], row["metric"],
                                                              recorded_runs(row))
    noise_groups = [list(runs) for row in rows
                    if row["outcome"] in ("keep", "discard") and len(runs := recorded_runs(row)) > 1]
    return RunState(tag=tag, recipe_path=run["recipe"], worktree=worktree, recipe=recipe,
                    budget_seconds=budget_seconds, best=best,
                    baseline_metric=kept[0]["metric"] if kept else None,
                    next_number=max((row["number"] for row in rows), default=-1) + 1,
                    seen_hashes={row["files_hash"]: row["number"] for row in rows
                                 if row["files_hash"] and row["outcome"] != "interrupted"},
                    noise=NoiseFloor(std=run.get("noise_std"), runs=run.get("noise_runs") or 0),
                    noise_groups=noise_groups)
