"""The workspace: the folder holding program.md, one or more recipes and runs/ (ignored), in a git repository.

`init_workspace` makes one; `Workspace` finds one from a folder and knows where its ledger, its
runs and its recipes are; `check_tag` says which names a run may have.

A workspace is usually the top of its own git repository, but it may be a sub-folder of a larger
one (a monorepo): it is the nearest folder holding program.md, from the current folder up to the
top of the git repository (that top when none does). From inside a run's worktree
(runs/<tag>/worktree, a linked git worktree) the workspace is the one that holds the worktree.
Recipe paths are kept relative to the top of the git repository, so that the same path names the
recipe in the person's checkout and in every run's worktree.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from autoresearch.errors import UserError
from autoresearch.recipe import RECIPE_FILE, builtin_program_md, find_builtin_recipe

if TYPE_CHECKING:
    from autoresearch.repo import Repo

# Repo (gitpython) is imported where it is used: importing it takes a fifth of the time of the
# review commands (log, runs), which never touch git.

RUNS_DIR = "runs"
LEDGER_FILE = "ledger.db"
PROGRAM_FILE = "program.md"
RECIPES_DIR = "recipes"
GITIGNORE_FILE = ".gitignore"
TAG_MAX_BYTES = 100
# Characters git refuses in a branch name (git check-ref-format), and `/`: a tag is one folder under runs/.
TAG_FORBIDDEN = " ~^:?*[\\/"


class Workspace:
    """A workspace rooted at the folder holding program.md and runs/."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    @cached_property
    def git_root(self) -> Path:
        """The top of the git working tree holding the workspace (the workspace itself, or a folder above it)."""
        return find_git_root(self.root) or self.root

    @cached_property
    def repo(self) -> Repo:
        from autoresearch.repo import Repo

        return Repo(self.git_root)

    @classmethod
    def find(cls, start: Path | None = None) -> "Workspace":
        start = Path(start or Path.cwd())
        root = find_workspace_root(start)
        if root is None:
            raise UserError(f"{start} is not inside a workspace (a git repository); make one with "
                            "`autoresearch init DIR --recipe tiny`")
        if not (root / PROGRAM_FILE).is_file() and not (root / RUNS_DIR / LEDGER_FILE).is_file():
            # A git repository that is no workspace: no command may write runs/ into it.
            raise UserError(f"{root / PROGRAM_FILE} is missing: write the research direction there, or make a "
                            f"workspace with `autoresearch init DIR --recipe tiny` (no folder from {start.resolve()} "
                            f"up to the top of its git repository holds {PROGRAM_FILE} or {RUNS_DIR}/{LEDGER_FILE})")
        return cls(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def ledger_path(self) -> Path:
        return self.runs_dir / LEDGER_FILE

    @property
    def program_path(self) -> Path:
        return self.root / PROGRAM_FILE

    def run_dir(self, tag: str) -> Path:
        return self.runs_dir / tag

    def read_program(self) -> str:
        """program.md as it is now (the person may edit it while a run goes on)."""
        try:
            text = self.program_path.read_text()
        except FileNotFoundError:
            raise UserError(f"{self.program_path} is missing: write the research direction there") from None
        if not text.strip():
            raise UserError(f"{self.program_path} is empty: write the research direction there")
        return text

    def recipe_folders(self) -> list[Path]:
        """Recipe folders in the workspace: recipes/* and top-level folders with a recipe.yaml."""
        found = sorted(p.parent for p in (self.root / RECIPES_DIR).glob(f"*/{RECIPE_FILE}"))
        found += sorted(p.parent for p in self.root.glob(f"*/{RECIPE_FILE}"))
        return found

    def resolve_recipe(self, recipe: str | None) -> str:
        """The recipe folder, relative to the top of the git repository, as a posix path.

        `recipe` is a folder (from the current folder or the workspace), or the bare name of one
        under recipes/ (`tiny` for recipes/tiny).
        """
        if recipe is None:
            folders = self.recipe_folders()
            if not folders:
                raise UserError(f"no recipe in {self.root}; add one with `autoresearch init . --recipe tiny`")
            if len(folders) > 1:
                names = ", ".join(str(f.relative_to(self.root)) for f in folders)
                raise UserError(f"several recipes here ({names}): choose one with --recipe")
            folder = folders[0]
        else:
            candidates = [Path(recipe)] if Path(recipe).is_absolute() else [
                Path.cwd() / recipe, self.root / recipe, self.root / RECIPES_DIR / recipe]
            found = [c.resolve() for c in candidates if (c / RECIPE_FILE).is_file()]
            if not found:
                known = ", ".join(str(f.relative_to(self.root)) for f in self.recipe_folders())
                raise UserError(f"{recipe} is not a recipe folder (it has no {RECIPE_FILE})"
                                + (f"; the recipes here: {known}" if known else ""))
            folder = found[0]
        if not folder.is_relative_to(self.root):
            raise UserError(f"the recipe {folder} is outside the workspace {self.root}")
        return folder.relative_to(self.git_root).as_posix()

    def new_tag(self, taken: set[str]) -> str:
        """A tag from today's date, made unique against runs, branches and folders."""
        from autoresearch.repo import RUN_BRANCH_PREFIX

        base = datetime.date.today().strftime("%b%d").lower()
        tag, suffix = base, 1
        while tag in taken or self.repo.branch_exists(RUN_BRANCH_PREFIX + tag) or self.run_dir(tag).exists():
            suffix += 1
            tag = f"{base}-{suffix}"
        return tag


def check_tag(tag: str) -> str:
    """The tag, if a run may be called so; else a UserError saying why.

    A tag names the branch autoresearch/<tag> and the folder runs/<tag>, so it follows git's rules
    for one part of a branch name (`git check-ref-format`) and has no `/`; it may not begin with
    `-` (it would read as an option), be longer than TAG_MAX_BYTES, or take the name of the
    ledger's own files under runs/.
    """
    reason = None
    forbidden = sorted({c for c in tag if c in TAG_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if not tag:
        reason = "it is empty"
    elif forbidden:
        reason = "it may not contain " + " or ".join(repr(c) for c in forbidden)
    elif tag[0] in ".-":
        reason = f"it may not begin with {tag[0]!r}"
    elif tag.endswith((".", ".lock")):
        reason = "it may not end with '.' or '.lock'"
    elif ".." in tag or "@{" in tag:
        reason = "it may not contain '..' or '@{'"
    elif len(tag.encode()) > TAG_MAX_BYTES:
        reason = f"it is longer than {TAG_MAX_BYTES} bytes"
    elif tag.lower().startswith(LEDGER_FILE):
        reason = f"{RUNS_DIR}/{LEDGER_FILE}* are the ledger's own files"
    if reason:
        raise UserError(f"{tag!r} cannot be a run's tag: {reason} (it names a git branch and a folder; "
                        "letters, digits, '-', '_' and '.' are safe)")
    return tag


def find_git_root(start: Path) -> Path | None:
    """The top of the git working tree holding start: the nearest folder with a `.git` (folder or file)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def find_workspace_root(start: Path) -> Path | None:
    """The workspace holding start (see the module docstring), or None outside any git repository."""
    start = Path(start).resolve()
    top = find_git_root(start)
    if top is None:
        return None
    main = main_working_tree(top)
    if main is not None and top.is_relative_to(main) and RUNS_DIR in top.relative_to(main).parts:
        start, top = top.parent, main  # a run's worktree: look from the folder that holds it
    for folder in (start, *start.parents):
        if (folder / PROGRAM_FILE).is_file():
            return folder
        if folder == top:
            break
    return top


def main_working_tree(top: Path) -> Path | None:
    """For a linked worktree (`git worktree add`), the repository's main working tree; else None.

    Read from the files git writes (the worktree's `.git` file names its git dir, whose
    `commondir` names the repository's), without starting git: the review commands use this.
    """
    try:
        pointer = (top / ".git").read_text()
    except OSError:  # a folder (a main working tree), or unreadable
        return None
    if not pointer.startswith("gitdir:"):
        return None
    git_dir = top / pointer[len("gitdir:"):].strip()
    try:
        common_dir = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    except OSError:  # no commondir: a submodule, not a linked worktree
        return None
    return common_dir.parent if common_dir.name == ".git" else None


@dataclass(frozen=True)
class MadeWorkspace:
    """What `init` made: the recipe folder, and whether program.md was the person's own (kept as it was,
    committed or not) rather than the built-in one written and committed."""

    recipe: Path
    program_kept: bool


def init_workspace(directory: Path, recipe_name: str) -> MadeWorkspace:
    """Make directory a workspace with the built-in recipe and program.md, and commit them.

    directory may be a new folder, a folder of its own, the top of a git repository or a
    sub-folder of one (the workspace is then that sub-folder). Refuses to overwrite: an existing
    recipe folder stops it; an existing program.md is kept. A failure at any step removes what it
    had made. Returns the new recipe folder and whether program.md was kept.
    """
    source = find_builtin_recipe(recipe_name)
    directory = Path(directory).expanduser().resolve()
    target = directory / RECIPES_DIR / recipe_name
    for folder in (directory, target.parent):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} exists and is not a folder")
    if target.exists() or target.is_symlink():
        raise UserError(f"{target} already exists; not overwriting it")
    undo = _Undo()
    program_kept = (directory / PROGRAM_FILE).exists()
    try:
        _make_workspace(directory, source, target, recipe_name, undo)
    except BaseException as exc:
        left = undo.run()
        reason = _failure(exc)
        if reason is None:
            raise
        raise UserError(f"could not make the workspace {directory}: {reason}; " + (
            f"could not take back {', '.join(left)}" if left else "nothing of it was left behind")) from None
    return MadeWorkspace(target, program_kept)


def _make_workspace(directory: Path, source: Path, target: Path, recipe_name: str, undo: "_Undo") -> None:
    from autoresearch.repo import Repo

    undo.remove(directory)
    directory.mkdir(parents=True, exist_ok=True)
    git_root = find_git_root(directory)
    if git_root is None:
        undo.remove(directory / ".git")
        repo = Repo.init(directory)
    else:
        repo = Repo(git_root)
    undo.remove(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    written = [target]
    program = directory / PROGRAM_FILE
    if not program.exists():
        undo.remove(program)
        shutil.copyfile(builtin_program_md(), program)
        written.append(program)
    gitignore = directory / GITIGNORE_FILE
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    if f"{RUNS_DIR}/" not in lines and f"/{RUNS_DIR}/" not in lines:
        undo.restore(gitignore)
        gitignore.write_text("\n".join(lines + [f"{RUNS_DIR}/", "__pycache__/"]) + "\n")
        written.append(gitignore)
    paths = [str(p.relative_to(repo.root.resolve())) for p in written]
    if git_root is not None:  # a repository init made goes whole, its index with it
        undo.unstage(repo, paths)
    repo.commit_all(f"autoresearch init: recipe {recipe_name}", paths=paths)


class _Undo:
    """What a failed `init` takes back, newest first: only what it made or changed itself."""

    def __init__(self):
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def remove(self, path: Path) -> None:
        """path, about to be made, and those of its parents that do not exist yet either."""
        missing = [folder for folder in (path, *path.parents) if not folder.exists() and not folder.is_symlink()]
        if missing:
            self._steps.append((str(missing[-1]), lambda: _remove(missing[-1])))

    def restore(self, path: Path) -> None:
        """path as it is now: its text put back, or the file removed if there is none yet."""
        before = path.read_bytes() if path.exists() else None
        self._steps.append((str(path), lambda: path.write_bytes(before) if before is not None else _remove(path)))

    def unstage(self, repo: Repo, paths: list[str]) -> None:
        """The index entries of paths put back as HEAD has them (the person's index is left as it was)."""
        self._steps.append(("the git index", lambda: repo.unstage(paths)))

    def run(self) -> list[str]:
        """Take every step back; returns what could not be."""
        failed = []
        for what, step in reversed(self._steps):
            try:
                step()
            except Exception:  # one that cannot be taken back must not hide the failure, nor stop the others
                failed.append(what)
        return failed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _failure(exc: BaseException) -> str | None:
    """One line for a failure a person can act on (the disk, permissions, git refusing); None for a bug."""
    from autoresearch.repo import git_failure

    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return git_failure(exc)
