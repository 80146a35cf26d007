"""Removing a run whole: its worktrees, its branch, its experiment refs, its ledger rows and runs/<tag>/.

`find_remains` says what is left of a run, also when only part of it is (the ledger row gone while
the branch, the worktree or the folder stayed, or `runs/` removed by hand while git still knows
the worktree); `remove_run` takes all of it away. Nothing outside the run is touched: only the
branch autoresearch/<tag>, refs under refs/autoresearch/<tag>/, worktrees inside runs/<tag>/ and
that folder. A run whose lock is held (it is going on) is refused, and so is a branch checked out
somewhere else (the person's checkout).

A tag `check_tag` refuses is accepted only when the ledger has a run of exactly that name (made
before tags were checked); its folder is then removed only when the tag is one plain folder name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.errors import UserError
from autoresearch.execution.jobs import RUN_MARKER
from autoresearch.execution.processes import stop_processes_marked
from autoresearch.ledger import Ledger
from autoresearch.recovery import run_marker
from autoresearch.repo import RUN_BRANCH_PREFIX
from autoresearch.runlock import RunLock
from autoresearch.workspace import Workspace, check_tag


@dataclass
class RunRemains:
    """What is left of a run, or what `remove_run` took away."""

    tag: str
    ledger_rows: int = 0  # the run's rows in every ledger table
    experiments: int = 0
    branch: str | None = None
    experiment_refs: int = 0
    worktrees: list[Path] = field(default_factory=list)
    folder: Path | None = None

    def parts(self) -> list[str]:
        """One phrase for each kind of thing left."""
        found = [
            (self.ledger_rows, f"{self.experiments} experiment(s) and {self.ledger_rows} row(s) in the ledger"),
            (self.branch, f"branch {self.branch}"),
            (self.experiment_refs, f"{self.experiment_refs} experiment ref(s)"),
            (self.worktrees, f"{len(self.worktrees)} worktree(s)"),
            (self.folder, f"the folder {self.folder}"),
        ]
        return [phrase for present, phrase in found if present]

    def describe(self) -> str:
        return ", ".join(self.parts())


def find_remains(workspace: Workspace, ledger: Ledger | None, tag: str) -> RunRemains:
    """What is left of the run tagged tag (ledger None: the workspace has none); a UserError when nothing is."""
    folder = _run_folder(workspace, ledger, tag)
    repo = workspace.repo
    branch = RUN_BRANCH_PREFIX + tag
    remains = RunRemains(tag=tag, branch=branch if repo.branch_exists(branch) else None,
                         experiment_refs=len(repo.list_experiment_refs(tag)),
                         folder=folder if folder is not None and (folder.exists() or folder.is_symlink()) else None)
    if ledger is not None:
        remains.ledger_rows = ledger.count_run_rows(tag)
        remains.experiments = len(ledger.experiments(tag, ("tag", "number")))
    for path, checked_out in repo.list_worktrees():
        if folder is not None and path.resolve().is_relative_to(folder.resolve()):
            remains.worktrees.append(path)
        elif checked_out == branch:
            raise UserError(f"branch {branch} is checked out in {path}; switch that checkout to another branch "
                            "first (the run's branch is removed with the run)")
    if not remains.parts():
        raise UserError(f"no run tagged {tag!r} here: no ledger row, no branch {branch}, no folder "
                        f"{workspace.run_dir(tag)}; `autoresearch runs` lists the runs")
    return remains


def remove_run(workspace: Workspace, ledger: Ledger | None, tag: str) -> RunRemains:
    """Remove everything of the run (see the module docstring); returns what was there."""
    remains = find_remains(workspace, ledger, tag)
    folder = remains.folder
    lock = RunLock(folder, tag).acquire() if folder is not None and folder.is_dir() else None
    try:
        if folder is not None:
            stop_processes_marked(RUN_MARKER, run_marker(folder))  # a training that outlived a killed tool
        # The ledger first: whatever a failure below leaves is what `rm` finds and removes next time.
        if ledger is not None:
            ledger.delete_run(tag)
        repo = workspace.repo
        for path in remains.worktrees:
            repo.remove_worktree(path)
        repo.prune_worktrees()
        repo.delete_run_branch(tag)
        repo.delete_experiment_refs(tag)
        if folder is not None:
            if folder.is_symlink():
                folder.unlink()
            else:
                shutil.rmtree(folder)
    finally:
        if lock is not None:
            lock.release()
    return remains


def _run_folder(workspace: Workspace, ledger: Ledger | None, tag: str) -> Path | None:
    """runs/<tag>, after checking the tag; None for an old run's tag that is no plain folder name."""
    try:
        check_tag(tag)
    except UserError:
        if ledger is None or ledger.run(tag) is None:
            raise
        plain = tag not in ("", ".", "..") and "/" not in tag and "\0" not in tag
        return workspace.run_dir(tag) if plain else None
    return workspace.run_dir(tag)
