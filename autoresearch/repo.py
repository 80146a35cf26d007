"""Git, in one class: verb-first methods returning plain values.

The tool only ever rewinds commits it made itself, on its own run branch, in its own worktree.
Commits carry the tool's own identity so they work where git has no user configured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import git

from autoresearch.errors import UserError

TOOL_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
# What the tool's own git commands always run with, above any repository's config: without the
# sandbox a training can write .git/config or .git/hooks, and the tool's next commit, reset or diff
# would run what it put there (docs/trust.md). Given through GIT_CONFIG_COUNT (git 2.31 and later).
SAFE_GIT_CONFIG = (
    ("core.hooksPath", "/dev/null"),  # no hook runs: pre-commit, post-checkout, reference-transaction...
    ("core.fsmonitor", "false"),  # no fsmonitor program on status
    ("commit.gpgSign", "false"),  # no gpg.program on commit
    ("tag.gpgSign", "false"),
    ("gc.auto", "0"),  # the tool never prunes: every experiment's commit stays
    ("diff.external", ""),
    ("core.pager", "cat"),
    ("core.useReplaceRefs", "false"),  # as GIT_NO_REPLACE_OBJECTS: no replace ref redirects an object
)


# Git's object lookup, never redirected: a `refs/replace/<sha>` makes git hand out another object
# for <sha> (a fixed prepare.py that prints the metric the training wants), and `info/grafts` gives
# a commit other parents. Without the sandbox a training can write both; the tool's git ignores them.
NO_REDIRECTED_OBJECTS = {"GIT_NO_REPLACE_OBJECTS": "1", "GIT_GRAFT_FILE": os.devnull}
REPLACE_REF_PREFIX = "refs/replace/"


def safe_git_environment() -> dict[str, str]:
    """Environment variables that put SAFE_GIT_CONFIG on top of every config file git reads, and switch
    off replace refs and grafts (NO_REDIRECTED_OBJECTS)."""
    env = {"GIT_CONFIG_COUNT": str(len(SAFE_GIT_CONFIG)), "GIT_TERMINAL_PROMPT": "0", **NO_REDIRECTED_OBJECTS}
    for index, (key, value) in enumerate(SAFE_GIT_CONFIG):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


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
        self.git.update_environment(**TOOL_IDENTITY, **safe_git_environment())

    @classmethod
    def init(cls, path: Path) -> "Repo":
        git.Repo.init(path, initial_branch="main")
        return cls(path)

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

    def unstage(self, paths: list[str]) -> None:
        """Put the index entries of paths back as HEAD has them (none for a path HEAD lacks)."""
        if self.has_commits():
            self.git.reset("-q", "HEAD", "--", *paths)
        else:
            self.git.rm("-r", "-q", "--cached", "--ignore-unmatch", "--", *paths)

    def commit_files(self, parent: str, files: dict[str, str], message: str) -> str:
        """A new commit on top of `parent` with `files` (path -> content) changed; no branch, index or file moves.

        Built from git's objects alone (a temporary index, hash-object, write-tree, commit-tree), so
        several experiments can have commits while the run branch and its worktree stay at the best.
        """
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as scratch:
            with self.git.custom_environment(GIT_INDEX_FILE=str(Path(scratch) / "index")):
                self.git.read_tree(parent)
                for path, content in sorted(files.items()):
                    existing = self.git.ls_tree(parent, "--", path).split()
                    mode = existing[0] if existing else "100644"
                    blob = self.git.hash_object("-w", "--stdin", istream=_text_stream(content))
                    self.git.update_index("--add", "--cacheinfo", f"{mode},{blob},{path}")
                tree = self.git.write_tree()
            return self.git.commit_tree(tree, "-p", parent, "-m", message)

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

    def add_detached_worktree(self, path: Path, commit: str) -> "Repo":
        """A throwaway worktree at path with commit checked out and no branch (what `verify` trains in)."""
        self.git.worktree("add", "--detach", "--force", str(path), commit)
        return Repo(path)

    def remove_worktree(self, path: Path) -> None:
        """Remove a worktree the tool made, and forget it even when its folder is already gone."""
        try:
            self.git.worktree("remove", "--force", "--force", str(path))
        except git.GitCommandError:
            if Path(path).exists():
                shutil.rmtree(path)
            self.git.worktree("prune")

    def list_worktrees(self) -> list[tuple[Path, str | None]]:
        """Every worktree git knows of, its folder gone or not: (path, the branch checked out there or None)."""
        found: list[tuple[Path, str | None]] = []
        for block in self.git.worktree("list", "--porcelain").split("\n\n"):
            fields = dict(line.partition(" ")[::2] for line in block.splitlines())
            if "worktree" in fields:
                branch = fields.get("branch", "").removeprefix("refs/heads/") or None
                found.append((Path(fields["worktree"]), branch))
        return found

    def prune_worktrees(self) -> None:
        """Forget the worktrees whose folders are gone."""
        self.git.worktree("prune")

    def delete_run_branch(self, tag: str) -> bool:
        """Delete the branch autoresearch/<tag> (the tool's own, never another); False if there was none."""
        branch = RUN_BRANCH_PREFIX + tag
        if not self.branch_exists(branch):
            return False
        self.git.branch("-D", "--", branch)
        return True

    def list_experiment_refs(self, tag: str) -> list[str]:
        """The refs refs/autoresearch/<tag>/<n> that keep a run's experiments reachable."""
        prefix = f"{EXPERIMENT_REF_PREFIX}{tag}/"
        names = self.git.for_each_ref("--format=%(refname)", prefix).splitlines()
        return [name for name in names if name.startswith(prefix)]

    def delete_experiment_refs(self, tag: str) -> int:
        """Delete every ref under refs/autoresearch/<tag>/, in one transaction; returns how many."""
        refs = self.list_experiment_refs(tag)
        if refs:
            with tempfile.TemporaryFile() as commands:
                commands.write("".join(f"delete {ref}\n" for ref in refs).encode())
                commands.seek(0)
                self.git.update_ref("--stdin", istream=commands)
        return len(refs)

    def attach_worktree(self, path: Path, branch: str, start: str | None = None) -> "Repo":
        """The run's worktree at path, re-created if the folder went missing or was left half made.

        A tool killed while `git worktree add` ran leaves a folder without its `.git` file, or no
        branch at all; the folder is the tool's own (under runs/), so it is made again, and the
        branch from `start` when it does not exist.
        """
        path = Path(path)
        if not (path / ".git").exists():
            if path.exists():
                shutil.rmtree(path)
            self.git.worktree("prune")
            if self.branch_exists(branch):
                self.git.worktree("add", str(path), branch)
            else:
                self.git.worktree("add", "-b", branch, str(path), start or "HEAD")
        return Repo(path)

    def git_dirs(self) -> tuple[Path, Path]:
        """(this worktree's own git folder, the repository's common one): where its config and hooks live."""
        return (Path(self.git.rev_parse("--absolute-git-dir")),
                Path(self.git.rev_parse("--path-format=absolute", "--git-common-dir")))

    def run_refs(self, tag: str) -> dict[str, str]:
        """The run's branch and experiment refs, with the commit each points at."""
        found = {}
        for prefix in (f"refs/heads/{RUN_BRANCH_PREFIX}{tag}", f"{EXPERIMENT_REF_PREFIX}{tag}/"):
            for line in self.git.for_each_ref("--format=%(refname) %(objectname)", prefix).splitlines():
                name, _, sha = line.partition(" ")
                if name == prefix or (prefix.endswith("/") and name.startswith(prefix)):
                    found[name] = sha
        return found

    def replace_refs(self) -> dict[str, str]:
        """Every ref under refs/replace/ (and what it points at): none of them is the tool's own."""
        found = {}
        for line in self.git.for_each_ref("--format=%(refname) %(objectname)", REPLACE_REF_PREFIX).splitlines():
            name, _, sha = line.partition(" ")
            if name.startswith(REPLACE_REF_PREFIX):
                found[name] = sha
        return found

    def delete_ref(self, ref: str) -> None:
        self.git.update_ref("-d", "--no-deref", ref)

    def has_object(self, sha: str) -> bool:
        try:
            self.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def clear_stale_locks(self, refs: list[str], wait_seconds: float = 2.0) -> list[str]:
        """Remove the lock files a killed git left in this worktree (index, HEAD) and on refs.

        Only for a worktree and refs of the tool's own, once the run's lock shows no other tool is
        at work: a lock that does not go away within wait_seconds was left by a git that died.
        """
        git_dir, common_dir = self.git_dirs()
        candidates = [git_dir / "index.lock", git_dir / "HEAD.lock"]
        candidates += [common_dir / f"{ref}.lock" for ref in refs]
        deadline = time.monotonic() + wait_seconds
        while any(p.exists() for p in candidates) and time.monotonic() < deadline:
            time.sleep(0.1)
        removed = []
        for lock in candidates:
            try:
                lock.unlink()
                removed.append(str(lock))
            except FileNotFoundError:
                pass
        return removed

    def parent_of(self, commit: str) -> str | None:
        try:
            return self.git.rev_parse("--verify", "--quiet", f"{commit}^")
        except git.GitCommandError:
            return None

    def author_email(self, commit: str) -> str:
        return self.git.log("-1", "--format=%ae", commit)

    def is_clean(self) -> bool:
        """No tracked file differs from HEAD (untracked files, such as outputs, do not count)."""
        return not self.git.status("--porcelain", "--untracked-files=no").strip()

    def reset_hard(self, commit: str) -> None:
        self.git.reset("--hard", commit)

    def set_ref(self, ref: str, commit: str) -> None:
        self.git.update_ref(ref, commit)

    def resolve(self, ref: str) -> str | None:
        try:
            return self.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
        except git.GitCommandError:
            return None

    def diff(self, parent: str, commit: str, *paths: str) -> str:
        return self.git.diff("--no-ext-diff", "--no-textconv", parent, commit, "--", *paths)

    def show_file(self, commit: str, path: str) -> str:
        return self.git.show(f"{commit}:{path}")



def _text_stream(content: str):
    """A file object of content's UTF-8 bytes, for git's standard input."""
    stream = tempfile.TemporaryFile()
    stream.write(content.encode())
    stream.seek(0)
    return stream


def git_failure(exc: BaseException) -> str | None:
    """The line in which git said why a command failed, or None when exc is no git failure."""
    if not isinstance(exc, git.GitCommandError):
        return None
    lines = [line.strip().removeprefix("stderr: '").rstrip("'") for line in str(exc.stderr or "").splitlines()]
    said = [line for line in lines if line.startswith(("fatal:", "error:"))] or [line for line in lines if line]
    return f"git {exc.command[1]}: {said[0] if said else f'exit code {exc.status}'}"
