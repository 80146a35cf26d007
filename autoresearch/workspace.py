"""The workspace: a git repository holding program.md, one or more recipes and runs/ (ignored).

`init_workspace` makes one; `Workspace` finds one from a folder and knows where its ledger, its
runs and its recipes are. From inside a run's worktree (runs/<tag>/worktree, a linked git
worktree) the workspace is the one that holds the worktree.
"""

from __future__ import annotations

import datetime
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

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


class Workspace:
    """A workspace rooted at the top of its git working tree."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    @cached_property
    def repo(self) -> Repo:
        from autoresearch.repo import Repo

        return Repo(self.root)

    @classmethod
    def find(cls, start: Path | None = None) -> "Workspace":
        start = Path(start or Path.cwd())
        root = find_workspace_root(start)
        if root is None:
            raise UserError(f"{start} is not inside a workspace (a git repository); make one with "
                            "`autoresearch init DIR --recipe tiny`")
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
        """The recipe folder, relative to the workspace root, as a posix path."""
        if recipe is None:
            folders = self.recipe_folders()
            if not folders:
                raise UserError(f"no recipe in {self.root}; add one with `autoresearch init . --recipe tiny`")
            if len(folders) > 1:
                names = ", ".join(str(f.relative_to(self.root)) for f in folders)
                raise UserError(f"several recipes here ({names}): choose one with --recipe")
            folder = folders[0]
        else:
            folder = Path(recipe)
            if not folder.is_absolute():
                folder = (Path.cwd() / folder) if (Path.cwd() / folder).exists() else self.root / folder
            folder = folder.resolve()
            if not (folder / RECIPE_FILE).is_file():
                raise UserError(f"{recipe} is not a recipe folder (it has no {RECIPE_FILE})")
        try:
            return folder.relative_to(self.root).as_posix()
        except ValueError:
            raise UserError(f"the recipe {folder} is outside the workspace {self.root}") from None

    def new_tag(self, taken: set[str]) -> str:
        """A tag from today's date, made unique against runs, branches and folders."""
        from autoresearch.repo import RUN_BRANCH_PREFIX

        base = datetime.date.today().strftime("%b%d").lower()
        tag, suffix = base, 1
        while tag in taken or self.repo.branch_exists(RUN_BRANCH_PREFIX + tag) or self.run_dir(tag).exists():
            suffix += 1
            tag = f"{base}-{suffix}"
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
    top = find_git_root(start)
    if top is None:
        return None
    main = main_working_tree(top)
    if main is not None and top.is_relative_to(main) and RUNS_DIR in top.relative_to(main).parts:
        return main  # a run's worktree: the workspace that holds it
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


def init_workspace(directory: Path, recipe_name: str) -> Path:
    """Make directory a workspace with the built-in recipe and program.md, and commit them.

    Refuses to overwrite: an existing recipe folder stops it; an existing program.md is kept.
    Returns the path of the new recipe folder.
    """
    directory = Path(directory)
    source = find_builtin_recipe(recipe_name)
    target = directory / RECIPES_DIR / recipe_name
    if target.exists():
        raise UserError(f"{target} already exists; not overwriting it")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    from autoresearch.repo import Repo

    root = Repo.find_root(directory)
    repo = Repo(directory) if root is not None else Repo.init(directory)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    written = [str(target.relative_to(repo.root))]
    program = directory / PROGRAM_FILE
    if not program.exists():
        shutil.copyfile(builtin_program_md(), program)
        written.append(str(program.relative_to(repo.root)))
    gitignore = directory / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    if f"{RUNS_DIR}/" not in lines and f"/{RUNS_DIR}/" not in lines:
        gitignore.write_text("\n".join(lines + [f"{RUNS_DIR}/", "__pycache__/"]) + "\n")
        written.append(str(gitignore.relative_to(repo.root)))
    repo.commit_all(f"autoresearch init: recipe {recipe_name}", paths=written)
    return target
