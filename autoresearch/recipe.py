"""Recipes: a folder with recipe.yaml (the contract), train.py (edited) and prepare.py (fixed).

See docs/recipe-contract.md for the keys. Built-in recipes live in the repository's `recipes/`
folder and ship inside the wheel as `autoresearch/_recipes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from autoresearch.errors import UserError
from autoresearch.gains import DIRECTIONS

RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class Recipe:
    """The parsed recipe.yaml of one recipe folder."""

    path: Path
    name: str
    command: str
    metric: str
    direction: str
    budget_seconds: float
    editable: tuple[str, ...]
    fixed: tuple[str, ...]
    description: str = ""
    grace_seconds: float | None = None
    test_metric: str | None = None
    extra: dict = field(default_factory=dict)

    def grace(self, budget_seconds: float) -> float:
        """Time past the budget before the training is killed: the recipe's, else max(30, budget/4)."""
        if self.grace_seconds is not None:
            return float(self.grace_seconds)
        return max(30.0, budget_seconds / 4)


def load_recipe(path: Path) -> Recipe:
    """Read and validate recipe.yaml in the folder `path`."""
    path = Path(path)
    spec_path = path / RECIPE_FILE
    if not spec_path.is_file():
        raise UserError(f"{path} is not a recipe: it has no {RECIPE_FILE}")
    try:
        spec = yaml.safe_load(spec_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{spec_path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{spec_path} must be a mapping of keys to values")
    missing = [key for key in ("command", "metric", "direction", "budget_seconds", "editable") if key not in spec]
    if missing:
        raise UserError(f"{spec_path} lacks {', '.join(missing)}")
    direction = str(spec["direction"]).lower()
    if direction not in DIRECTIONS:
        raise UserError(f"{spec_path}: direction must be lower or higher, not {spec['direction']!r}")
    try:
        budget = float(spec["budget_seconds"])
        grace = None if spec.get("grace_seconds") is None else float(spec["grace_seconds"])
    except (TypeError, ValueError):
        raise UserError(f"{spec_path}: budget_seconds and grace_seconds must be numbers") from None
    if not math.isfinite(budget) or budget <= 0:
        raise UserError(f"{spec_path}: budget_seconds must be positive")
    editable = _file_list(spec, "editable", spec_path)
    fixed = _file_list(spec, "fixed", spec_path)
    if RECIPE_FILE not in fixed:
        fixed = fixed + (RECIPE_FILE,)
    overlap = set(editable) & set(fixed)
    if overlap:
        raise UserError(f"{spec_path}: {', '.join(sorted(overlap))} cannot be both editable and fixed")
    for name in editable + fixed:
        if not (path / name).is_file():
            raise UserError(f"{spec_path} names {name}, which is not in {path}")
    known = {"name", "description", "command", "metric", "direction", "budget_seconds", "grace_seconds",
             "editable", "fixed", "test_metric"}
    return Recipe(
        path=path,
        name=str(spec.get("name") or path.name),
        command=str(spec["command"]),
        metric=str(spec["metric"]),
        direction=direction,
        budget_seconds=budget,
        grace_seconds=grace,
        editable=editable,
        fixed=fixed,
        description=str(spec.get("description") or ""),
        test_metric=spec.get("test_metric"),
        extra={k: v for k, v in spec.items() if k not in known},
    )


def _file_list(spec: dict, key: str, spec_path: Path) -> tuple[str, ...]:
    value = spec.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{spec_path}: {key} must be a list of file names")
    for name in value:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"{spec_path}: {key} entries must be paths inside the recipe, not {name}")
    return tuple(value)


def builtin_recipes_dir() -> Path:
    """Where the built-in recipes are: inside the installed wheel, or the source checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "_recipes", package_dir.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise UserError("the built-in recipes are missing from this installation")


def builtin_program_md() -> Path:
    """The default program.md that `init` copies into a new workspace."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "_recipes" / "program.md", package_dir.parent / "program.md"):
        if candidate.is_file():
            return candidate
    raise UserError("the default program.md is missing from this installation")


def builtin_recipes() -> list[Recipe]:
    """Every built-in recipe, sorted by name."""
    root = builtin_recipes_dir()
    return [load_recipe(p) for p in sorted(root.iterdir()) if (p / RECIPE_FILE).is_file()]


def find_builtin_recipe(name: str) -> Path:
    """The folder of the built-in recipe called name."""
    root = builtin_recipes_dir()
    folder = root / name
    if not (folder / RECIPE_FILE).is_file():
        names = ", ".join(p.name for p in sorted(root.iterdir()) if (p / RECIPE_FILE).is_file())
        raise UserError(f"no built-in recipe called {name!r}; there are: {names}")
    return folder
