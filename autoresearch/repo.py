"""Git, in one class: verb-first methods returning plain values.

The tool only ever rewinds commits it made itself, on its own run branch, in its own worktree.
Commits carry the tool's own identity so they work where git has no user configured.
"""

from __future__ import annotations

from pathlib import Path

import git

from autoresearch.errors import UserError

TOOL_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
RUN_BRANCH_PREFIX = "autoresearch/"
EXPERIMENT_REF_PREFIX = "refs/autoresearch/"


class Repo:
    """A git working tree (the person's checkout or a run's worktree)."""

    def __init__(self, path: Path):
        try:
            self._repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise UserError(f"{path} is not a git repository (make one with `autoresearch init`)") from None
        self.git = self._repo.git
        self.git.update_environment(**TOOL_IDENTITY)

    @classmethod
    def init(cls, path: Path) -> "Repo":
        git.Repo.init(path, initial_branch="main")
        return cls(path)

    @staticmethod
    def find_root(path: Path) -> Path | None:
        """The top of the git working tree holding path, or None."""
        try:
            return Path(git.Repo(path, search_parent_directories=True).working_tree_dir)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return None

    @property
    def root(self) -> Path:
        return Path(self._repo.working_tree_dir)

    def has_commits(self) -> bool:
        try:
            self._repo.head.commit
        except ValueError:
            return False
        return True

    def head_commit(self) -> str:
        return self.git.rev_parse("HEAD")

    def commit_all(self, message: str, paths: list[str] | None = None) -> str:
        """Stage paths (or everything) and commit; returns the new commit's sha."""
        if paths:
            self.git.add("--", *paths)
            self.git.commit("--no-verify", "-m", message, "--", *paths)
        else:
            self.git.add("-A")
            self.git.commit("--no-verify", "--allow-empty", "-m", message)
        return self.head_commit()

    def uncommitted_paths(self, under: str = ".") -> list[str]:
        """Tracked files changed but not committed, and untracked files, below `under`."""
        output = self.git.status("--porcelain", "--untracked-files=all", "--", under)
        return [line[3:] for line in output.splitlines() if line.strip()]

    def is_tracked(self, path: str) -> bool:
        return bool(self.git.ls_files("--", path).strip())

    def branch_exists(self, branch: str) -> bool:
        return bool(self.git.branch("--list", branch).strip())

    def add_worktree(self, path: Path, branch: str, start: str) -> "Repo":
        """A new worktree at path on a new branch from start; returns it as a Repo."""
        self.git.worktree("add", "-b", branch, str(path), start)
        return Repo(path)

    def attach_worktree(self, path: Path, branch: str) -> "Repo":
        """The run's worktree at path, re-created from its branch if the folder went missing."""
        if not (Path(path) / ".git").exists():
            self.git.worktree("prune")
            self.git.worktree("add", str(path), branch)
        return Repo(path)

    def reset_hard(self, commit: str) -> None:
        self.git.reset("--hard", commit)

    def set_ref(self, ref: str, commit: str) -> None:
        self.git.update_ref(ref, commit)

    def resolve(self, ref: str) -> str | None:
        try:
            return self.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
        except git.GitCommandError:
            return None

    def diff(self, parent: str, commit: str) -> str:
        return self.git.diff(parent, commit)

    def show_file(self, commit: str, path: str) -> str:
        return self.git.show(f"{commit}:{path}")

    def restore_paths(self, commit: str, paths: list[str]) -> None:
        """Put paths back as they are in commit (used when a run tampers with fixed files)."""
        self.git.checkout(commit, "--", *paths)
