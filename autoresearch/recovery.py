"""Putting a run straight after the tool stopped at any moment, and keeping the ledger out of reach.

A run can be cut anywhere: `kill -9` while proposing, committing, training, deciding or writing
the ledger, a second Ctrl-C, a power cut. The ledger is written ahead and git moves only after it,
so what a resume finds is always one of a few states, and `reconcile` puts each of them straight:
- processes of the run still alive (a training re-parented away from the dead tool): stopped;
- lock files a killed git left behind: removed, once no other tool holds the run;
- a worktree folder half made, or missing: made again from the run's branch;
- experiments still `running`: `interrupted`, and a commit one of them made but did not record
  yet is recorded and kept reachable under refs/autoresearch/<tag>/<n>, so nothing is lost.
The branch itself is then reset to the best kept commit by the loop.

`LedgerGuard` protects the ledger while a training script runs: the script runs with the ledger
a few folders up, so it could delete or overwrite it. The ledger is copied before the training and
read back through a fresh connection after it; a ledger that changed is put back from the copy.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.ledger import Ledger
from autoresearch.repo import EXPERIMENT_REF_PREFIX, TOOL_IDENTITY, Repo
from autoresearch.runner import RUN_MARKER, stop_processes_marked

LEDGER_BACKUP_FILE = "ledger-backup.db"


@dataclass
class Reconciled:
    """What a resume found and put straight, for one line to the person."""

    stray_processes: int = 0
    stale_locks: list[str] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    salvaged_commits: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str | None:
        parts = []
        if self.interrupted:
            parts.append("experiment" + ("s " if len(self.interrupted) > 1 else " ")
                         + ", ".join(map(str, self.interrupted)) + " recorded as interrupted")
        if self.salvaged_commits:
            parts.append(f"{len(self.salvaged_commits)} unrecorded commit(s) kept reachable")
        if self.stray_processes:
            parts.append(f"{self.stray_processes} leftover training process(es) stopped")
        if self.stale_locks:
            parts.append(f"{len(self.stale_locks)} stale git lock(s) removed")
        return "; ".join(parts) if parts else None


def run_marker(run_dir: Path) -> str:
    """The value of AUTORESEARCH_RUN that every training process of a run carries."""
    return str(Path(run_dir).resolve())


def reconcile(ledger: Ledger, workspace_repo: Repo, run: dict, run_dir: Path) -> tuple[Repo, Reconciled]:
    """Bring a run that was cut anywhere back to a state the loop can go on from.

    Call with the run's lock held. Returns the run's worktree and what was done.
    """
    found = Reconciled()
    tag = run["tag"]
    found.stray_processes = stop_processes_marked(RUN_MARKER, run_marker(run_dir))
    worktree = workspace_repo.attach_worktree(Path(run["worktree"]), run["branch"], run["base_commit"])
    found.stale_locks = worktree.clear_stale_locks([f"refs/heads/{run['branch']}"] + [
        f"{EXPERIMENT_REF_PREFIX}{tag}/{row['number']}" for row in ledger.experiments(tag)
        if row["outcome"] == "running"])
    found.interrupted = ledger.mark_unfinished_interrupted(tag)
    for number in found.interrupted:
        commit = _lost_commit(worktree, tag, ledger.experiment(tag, number))
        if commit is not None:
            worktree.set_ref(f"{EXPERIMENT_REF_PREFIX}{tag}/{number}", commit)
            ledger.update_experiment(tag, number, commit_sha=commit)
            found.salvaged_commits[number] = commit
    return worktree, found


def _lost_commit(worktree: Repo, tag: str, row: dict) -> str | None:
    """The commit an interrupted experiment made before its row could say so, if there is one."""
    if row is None or row["commit_sha"] or not row["parent_sha"]:
        return None
    recorded = worktree.resolve(f"{EXPERIMENT_REF_PREFIX}{tag}/{row['number']}")
    if recorded:
        return recorded
    head = worktree.head_commit()
    if (head != row["parent_sha"] and worktree.parent_of(head) == row["parent_sha"]
            and worktree.author_email(head) == TOOL_IDENTITY["GIT_AUTHOR_EMAIL"]):
        return head
    return None


class LedgerGuard:
    """Around one training run: copy the ledger, then check the file and put the copy back if needed."""

    def __init__(self, ledger: Ledger, run_dir: Path, tag: str):
        self.ledger = ledger
        self.tag = tag
        self.backup_path = Path(run_dir) / LEDGER_BACKUP_FILE
        self._rows: list[dict] | None = None

    def before(self) -> str | None:
        """Copy the ledger; returns why it could not be copied (a full disk), and then guards nothing."""
        self._rows = None
        try:
            self.ledger.backup_to(self.backup_path)
        except (OSError, sqlite3.Error) as exc:
            return f"could not copy the ledger to {self.backup_path} ({exc}); this training runs without the copy"
        self._rows = self.ledger.experiments(self.tag)
        return None

    def after(self) -> bool:
        """True when the ledger had been touched and was put back."""
        if self._rows is None or self.ledger.read_back(self.tag) == self._rows:
            return False
        self.ledger.restore_from(self.backup_path)
        return True
