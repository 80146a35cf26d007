"""The guard: what must hold before a candidate is trained, and after.

Before: only the recipe's editable files changed, its fixed files are unchanged, every Python
file compiles. After the training: the fixed files still hash the same (a training script that
writes to prepare.py is caught and the file restored by the loop).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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


def hash_fixed_files(recipe_dir: Path, names: tuple[str, ...]) -> dict[str, str | None]:
    """sha256 of each fixed file as it is on disk; None for a file that is missing."""
    hashes: dict[str, str | None] = {}
    for name in names:
        path = Path(recipe_dir) / name
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return hashes


def changed_fixed_files(before: dict[str, str | None], after: dict[str, str | None]) -> list[str]:
    return sorted(name for name in before if before[name] != after.get(name))


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
