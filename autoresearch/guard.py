"""The guard: what must hold before a candidate is trained.

Only the recipe's editable files changed, its fixed files are unchanged, every Python file
compiles; and one digest of the editable files tells duplicates apart. What a training does to
files while it runs does not matter any more: it runs in a throwaway copy of its commit, and the
harness evaluates with the fixed files as committed at the run's start (trainer.py, evaluation.py).
"""

from __future__ import annotations

import hashlib

from autoresearch.recipe import Recipe


def files_hash(files: dict[str, str]) -> str:
    """One digest for a snapshot of files (name and content)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()


def editable_digest(recipe: Recipe, files: dict[str, str]) -> str:
    """What makes two experiments the same: the content of the recipe's editable files.

    The one digest the loop records and checks for duplicates and the mutate agent avoids; fixed
    files are never part of it (they cannot differ between experiments of a run).
    """
    return files_hash({name: files[name] for name in recipe.editable})


def check_candidate(recipe: Recipe, changed: dict[str, str]) -> str | None:
    """Why the changed files may not be trained, or None when they may."""
    not_editable = sorted(name for name in changed if name not in recipe.editable)
    if not_editable:
        return f"touched {', '.join(not_editable)}"
    for name, content in sorted(changed.items()):
        if name.endswith(".py"):
            try:
                compile(content, name, "exec")
            except SyntaxError as exc:
                return f"does not compile: {name} line {exc.lineno}: {exc.msg}"
            except ValueError as exc:
                return f"does not compile: {name}: {exc}"
    return None
