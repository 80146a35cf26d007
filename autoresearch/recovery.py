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

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.errors import LedgerTampered
from autoresearch.execution.jobs import RUN_MARKER
from autoresearch.execution.processes import stop_processes_marked
from autoresearch.ledger import Ledger
from autoresearch.repo import EXPERIMENT_REF_PREFIX, TOOL_IDENTITY, Repo

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
    """Around one training run without the sandbox: copy the ledger, then check every table and put the copy back.

    The digest covers every row of every table, so a change to any of them (a run's settings, its
    LLM calls, another run's rows) is noticed, not only the run's own experiments. The copy lies
    where the training could reach it too, so the copy's own digest is checked before it is used.
    """

    def __init__(self, ledger: Ledger, run_dir: Path, tag: str):
        self.ledger = ledger
        self.tag = tag
        self.backup_path = Path(run_dir) / LEDGER_BACKUP_FILE
        self._digest: str | None = None

    def before(self) -> str | None:
        """Copy the ledger; returns why it could not be copied (a full disk), and then guards nothing."""
        self._digest = None
        try:
            self.ledger.backup_to(self.backup_path)
        except (OSError, sqlite3.Error) as exc:
            return f"could not copy the ledger to {self.backup_path} ({exc}); this training runs without the copy"
        self._digest = self.ledger.content_digest(self.backup_path)
        return None

    def after(self) -> bool:
        """True when the ledger had been touched and was put back; LedgerTampered when that cannot be done."""
        if self._digest is None or self.ledger.content_digest() == self._digest:
            return False
        if self.ledger.content_digest(self.backup_path) != self._digest:
            raise LedgerTampered(f"the training changed the ledger {self.ledger.path} and its copy "
                                 f"{self.backup_path}: the record cannot be put back")
        self.ledger.restore_from(self.backup_path)
        return True


class GitGuard:
    """Around one training run without the sandbox: the repository's config, hooks and attributes, and the run's refs.

    A training that can write .git/config, .git/hooks or .git/info/attributes could make the tool's
    next git command run its program (a filter, a hook, an fsmonitor); one that deletes the run's
    refs could let discarded experiments be garbage-collected; one that plants a `refs/replace/` ref or
    `info/grafts` could redirect git's object lookup (the fixed prepare.py the evaluation is written
    from). Each watched file is put back byte for byte before the tool runs git again, each ref
    re-pointed at its commit (while git still has it), each new replace ref deleted. The tool's git
    also runs with hooks and fsmonitor off and replace refs and grafts ignored (repo.safe_git_environment).
    """

    def __init__(self, worktree: Repo, tag: str):
        self.worktree, self.tag = worktree, tag
        git_dir, common_dir = worktree.git_dirs()
        self.watched = {"the git config": [common_dir / "config", git_dir / "config.worktree"],
                        "the git attributes": [common_dir / "info" / "attributes"],
                        "the git grafts": [common_dir / "info" / "grafts"]}
        self.hook_dirs = sorted({common_dir / "hooks", git_dir / "hooks"})
        self._files: dict[Path, bytes | None] = {}
        self._hooks: dict[Path, bytes] = {}
        self._refs: dict[str, str] = {}
        self._replace_refs: dict[str, str] = {}

    def before(self) -> None:
        self._files = {path: _read_bytes(path) for paths in self.watched.values() for path in paths}
        self._hooks = {path: path.read_bytes() for path in self._hook_files()}
        self._refs = self.worktree.run_refs(self.tag)
        self._replace_refs = self.worktree.replace_refs()

    def after(self) -> list[str]:
        """What the training touched (each put back), by name: `the git config`, `the git hooks`, `the run's refs`."""
        touched = []
        for name, paths in self.watched.items():
            changed = [path for path in paths if _read_bytes(path) != self._files[path]]
            for path in changed:
                _write_back(path, self._files[path])
            if changed:
                touched.append(name)
        now = set(self._hook_files())
        if now != set(self._hooks) or any(path.read_bytes() != self._hooks[path] for path in now & set(self._hooks)):
            for path in now - set(self._hooks):
                path.unlink()
            for path, data in self._hooks.items():
                _write_back(path, data)
            touched.append("the git hooks")
        refs = self.worktree.run_refs(self.tag)
        if refs != self._refs:
            for ref, sha in self._refs.items():
                if refs.get(ref) != sha and self.worktree.has_object(sha):
                    self.worktree.set_ref(ref, sha)
            touched.append("the run's refs")
        if put_back_replace_refs(self.worktree, self._replace_refs):
            touched.append("the git replace refs")
        return touched

    def _hook_files(self) -> list[Path]:
        return sorted(path for folder in self.hook_dirs if folder.is_dir() for path in folder.rglob("*") if path.is_file())


def put_back_replace_refs(worktree: Repo, before: dict[str, str]) -> bool:
    """Delete the refs/replace/ refs that were not there before (and re-point the changed ones); True if any was.

    The tool's git ignores them anyway (repo.NO_REDIRECTED_OBJECTS); they are removed so that the
    person's own git, in the workspace later, is not handed the training's objects either.
    """
    now = worktree.replace_refs()
    if now == before:
        return False
    for ref in now:
        if ref not in before:
            worktree.delete_ref(ref)
    for ref, sha in before.items():
        if now.get(ref) != sha:
            worktree.git.update_ref("--no-deref", ref, sha)
    return True


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_back(path: Path, data: bytes | None) -> None:
    """Put a file back as it was: its bytes, or gone when it did not exist."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".autoresearch-restore")
    staging.write_bytes(data)
    os.replace(staging, path)
