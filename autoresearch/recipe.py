"""Recipes: a folder with recipe.yaml (the contract), train.py (edited) and prepare.py (fixed).

See docs/recipe-contract.md for the keys. Built-in recipes live in the repository's `recipes/`
folder and ship inside the wheel as `autoresearch/_recipes`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from autoresearch.errors import UserError
from autoresearch.gains import DIRECTIONS

RECIPE_FILE = "recipe.yaml"
DEFAULT_PREPARE_SECONDS = 6 * 3600.0  # a first download of a large data set may take hours; a cached one seconds


@dataclass(frozen=True)
class Tunable:
    """One constant the offline mutate agent may change, and the values it may take.

    Either a range (`low` to `high`; integers stay integers) or a list of `choices`.
    """

    name: str
    low: float | None = None
    high: float | None = None
    choices: tuple[float, ...] = ()
    integer: bool = False

    def contains(self, value: float) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Recipe:
    """The parsed recipe.yaml of one recipe folder."""

    path: Path
    name: str
    command: str
    evaluate: str  # the harness runs it on the saved model, from the fixed files of the run's start
    metric: str
    direction: str
    budget_seconds: float
    editable: tuple[str, ...]
    fixed: tuple[str, ...]
    description: str = ""
    prepare: str | None = None  # the harness runs it before the first training: data, and what to show and hide
    grace_seconds: float | None = None
    # Phases the harness measures itself and allows apart from the budget (docs/recipe-contract.md): start-up
    # until the training's first line of output, and saving the model after the budget. 0: grace covers them.
    startup_seconds: float = 0.0
    export_seconds: float = 0.0
    evaluation_seconds: float = 600.0  # the evaluation's own limit
    prepare_seconds: float = DEFAULT_PREPARE_SECONDS  # the data preparation's limit
    test_metric: str | None = None
    env: tuple[str, ...] = ()  # environment variables passed through to the training by name
    tunable: tuple[Tunable, ...] = ()  # what mutate may change; empty: every upper-case numeric constant
    disk_quota_mb: float | None = None  # the most a training may leave and fill on disk (None: leftovers.DEFAULT_QUOTA_MB)
    evaluation_memory_mb: float | None = None  # the evaluation's memory limit (None: watch.DEFAULT_MEMORY_MB)

    def grace(self, budget_seconds: float) -> float:
        """Time past the budget for what the start-up and export allowances do not cover (the last step,
        exiting; everything, for a recipe without them); then the training is killed.

        The recipe's `grace_seconds`, else max(15 s, a tenth of the budget), or 5 s where the recipe gives
        start-up and export their own allowances. The evaluation is not inside it: it is the harness's own
        step, with its own limit.
        """
        if self.grace_seconds is not None:
            return float(self.grace_seconds)
        if self.startup_seconds or self.export_seconds:
            return 5.0
        return max(15.0, budget_seconds / 10)

    def past_budget(self, budget_seconds: float) -> float:
        """The most a training may run past its budget before the machine's allowances (steal, contention)."""
        return self.grace(budget_seconds) + self.startup_seconds + self.export_seconds


KNOWN_KEYS = ("name", "description", "command", "prepare", "evaluate", "metric", "direction", "budget_seconds",
              "grace_seconds", "startup_seconds", "export_seconds", "evaluation_seconds", "prepare_seconds",
              "editable", "fixed", "test_metric", "env", "tunable", "disk_quota_mb", "evaluation_memory_mb")
MAX_PHASE_SECONDS = 600.0  # a start-up or export allowance longer than this is a budget in disguise
REQUIRED_KEYS = ("command", "evaluate", "metric", "direction", "budget_seconds", "editable")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `NAME = 12`, `NAME: float = 3e-4  # why`: the constants a tunable may name (and mutate may change)
TOP_LEVEL_CONSTANT = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*(?::\s*\w+\s*)?=\s*)(?P<value>[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"(?P<rest>\s*(?:#.*)?)$", re.MULTILINE)


def load_recipe(path: Path) -> Recipe:
    """Read and validate recipe.yaml in the folder `path`; every mistake is one UserError line."""
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
    for key in spec:
        if key not in KNOWN_KEYS:
            near = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; the keys are: {', '.join(KNOWN_KEYS)}"
            raise UserError(f"{spec_path}: unknown key {key!r}{hint}")
    missing = [key for key in REQUIRED_KEYS if key not in spec]
    if missing:
        why = ("; `evaluate` is the fixed command that scores the model the training saved: the metric comes from "
               "the harness, never from what the training prints (docs/recipe-contract.md)") if "evaluate" in missing else ""
        raise UserError(f"{spec_path} lacks {', '.join(missing)}{why}")
    for key in ("command", "evaluate", "prepare", "metric", "name", "description", "test_metric"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            shape = "a list" if isinstance(spec[key], list) else type(spec[key]).__name__
            raise UserError(f"{spec_path}: {key} must be one string, not {shape}"
                            + (" (write the command line as you would type it)" if key == "command" else ""))
    for key in ("command", "evaluate", "prepare"):
        if key in spec and spec[key] is not None and not spec[key].strip():
            raise UserError(f"{spec_path}: {key} is empty")
    direction = str(spec["direction"]).lower()
    if direction not in DIRECTIONS:
        raise UserError(f"{spec_path}: direction must be lower or higher, not {spec['direction']!r}")
    budget = _number(spec, "budget_seconds", spec_path)
    grace = None if spec.get("grace_seconds") is None else _number(spec, "grace_seconds", spec_path, allow_zero=True)
    startup, export = (0.0 if spec.get(key) is None else _number(spec, key, spec_path, allow_zero=True)
                       for key in ("startup_seconds", "export_seconds"))
    for key, value in (("startup_seconds", startup), ("export_seconds", export)):
        if value > MAX_PHASE_SECONDS:
            raise UserError(f"{spec_path}: {key} is at most {MAX_PHASE_SECONDS:g} (an allowance, not a budget), "
                            f"not {value:g}")
    evaluation_seconds = (600.0 if spec.get("evaluation_seconds") is None
                          else _number(spec, "evaluation_seconds", spec_path))
    limits = {key: _number(spec, key, spec_path, unit="megabytes") for key in ("disk_quota_mb", "evaluation_memory_mb")
              if spec.get(key) is not None}
    prepare_seconds = (DEFAULT_PREPARE_SECONDS if spec.get("prepare_seconds") is None
                       else _number(spec, "prepare_seconds", spec_path))
    editable = _file_list(spec, "editable", spec_path)
    fixed = _file_list(spec, "fixed", spec_path)
    if RECIPE_FILE not in fixed:
        fixed = fixed + (RECIPE_FILE,)
    overlap = set(editable) & set(fixed)
    if overlap:
        raise UserError(f"{spec_path}: {', '.join(sorted(overlap))} cannot be both editable and fixed")
    if not editable:
        raise UserError(f"{spec_path}: editable must name at least one file")
    for name in editable + fixed:
        if not (path / name).is_file():
            raise UserError(f"{spec_path} names {name}, which is not in {path}")
    env = _file_list(spec, "env", spec_path, check_paths=False)
    bad_names = [name for name in env if not ENV_NAME.match(name)]
    if bad_names:
        raise UserError(f"{spec_path}: env lists names of environment variables, not {bad_names[0]!r}")
    return Recipe(
        path=path,
        name=str(spec.get("name") or path.name),
        command=spec["command"],
        evaluate=spec["evaluate"],
        prepare=spec.get("prepare"),
        metric=spec["metric"],
        direction=direction,
        budget_seconds=budget,
        grace_seconds=grace,
        startup_seconds=startup,
        export_seconds=export,
        evaluation_seconds=evaluation_seconds,
        prepare_seconds=prepare_seconds,
        editable=editable,
        fixed=fixed,
        description=str(spec.get("description") or ""),
        test_metric=spec.get("test_metric"),
        env=env,
        tunable=_tunables(spec.get("tunable"), spec_path),
        **limits,
    )


def check_tunables(recipe: Recipe) -> None:
    """Every tunable names a numeric constant at the top level of the first editable file.

    Checked when a run starts (a typo would leave a knob that mutate never turns); not at every
    load, since an agent's kept edit may later remove a constant.
    """
    target = recipe.editable[0]
    source = (recipe.path / target).read_text()
    found = {match.group("name") for match in TOP_LEVEL_CONSTANT.finditer(source)}
    for tunable in recipe.tunable:
        if tunable.name not in found:
            near = difflib.get_close_matches(tunable.name, sorted(found), n=1)
            raise UserError(f"{recipe.path / RECIPE_FILE}: tunable {tunable.name} is not a numeric constant at the "
                            f"top level of {target}" + (f"; did you mean {near[0]}?" if near else ""))


def _number(spec: dict, key: str, spec_path: Path, allow_zero: bool = False, unit: str = "seconds") -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{spec_path}: {key} must be a number of {unit}, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{spec_path}: {key} must be {'zero or more' if allow_zero else 'positive'}, not {value!r}")
    return float(value)


def _tunables(spec, spec_path: Path) -> tuple[Tunable, ...]:
    """`tunable:` maps a constant's name to `[low, high]` or `{choices: [...]}` (or `{low: .., high: ..}`)."""
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise UserError(f"{spec_path}: tunable maps constant names to [low, high] or {{choices: [...]}}")
    tunables = []
    for name, entry in spec.items():
        where = f"{spec_path}: tunable {name}"
        if isinstance(entry, dict) and set(entry) <= {"low", "high"} and len(entry) == 2:
            entry = [entry["low"], entry["high"]]
        if isinstance(entry, dict) and set(entry) == {"choices"}:
            choices = entry["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(_is_number(c) for c in choices):
                raise UserError(f"{where}: choices must be a list of at least two numbers")
            tunables.append(Tunable(str(name), choices=tuple(choices),
                                    integer=all(isinstance(c, int) for c in choices)))
            continue
        if not isinstance(entry, list) or len(entry) != 2 or not all(_is_number(v) for v in entry):
            raise UserError(f"{where}: give [low, high] or {{choices: [...]}}, not {entry!r}")
        low, high = entry
        if not low < high:
            raise UserError(f"{where}: low must be below high, not {low} and {high}")
        tunables.append(Tunable(str(name), low=low, high=high, integer=isinstance(low, int) and isinstance(high, int)))
    return tuple(tunables)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _file_list(spec: dict, key: str, spec_path: Path, check_paths: bool = True) -> tuple[str, ...]:
    value = spec.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{spec_path}: {key} must be a list of {'file names' if check_paths else 'names'}")
    for name in value if check_paths else ():
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
