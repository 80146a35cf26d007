"""recipe.yaml, the contract: mistakes are one clear line at load, and the built-in recipes keep it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SYNTH_RECIPE, make_workspace

from autoresearch.errors import UserError
from autoresearch.recipe import (TOP_LEVEL_CONSTANT, builtin_recipes, check_tunables, load_recipe)


def recipe_with(tmp_path: Path, extra: str = "", replace: tuple[str, str] | None = None):
    text = SYNTH_RECIPE + extra
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    root = make_workspace(tmp_path / "ws", recipe_yaml=text)
    return root / "recipes" / "synth"


def load_error(folder: Path) -> str:
    with pytest.raises(UserError) as caught:
        check_tunables(load_recipe(folder))
    return str(caught.value)


def test_an_unknown_key_names_the_nearest_known_one(tmp_path):
    message = load_error(recipe_with(tmp_path, replace=("grace_seconds: 1", "grace_secnds: 1")))
    assert "unknown key 'grace_secnds'" in message and "did you mean grace_seconds?" in message


def test_a_command_written_as_a_yaml_list_is_refused_at_load(tmp_path):
    message = load_error(recipe_with(tmp_path, replace=("command: python train.py", "command: [python, train.py]")))
    assert "command must be one string, not a list" in message


@pytest.mark.parametrize("line, words", [
    ("budget_seconds: soon", "budget_seconds must be a number"),
    ("budget_seconds: -5", "budget_seconds must be positive"),
    ("budget_seconds: .nan", "budget_seconds must be positive"),
    ("budget_seconds: true", "budget_seconds must be a number"),
])
def test_a_budget_that_is_not_a_positive_number_is_refused(tmp_path, line, words):
    assert words in load_error(recipe_with(tmp_path, replace=("budget_seconds: 5", line)))


def test_env_names_environment_variables(tmp_path):
    recipe = load_recipe(recipe_with(tmp_path, "env: [HF_HOME, WANDB_MODE]\n"))
    assert recipe.env == ("HF_HOME", "WANDB_MODE")
    assert "env lists names" in load_error(recipe_with(tmp_path / "b", "env: [HF HOME]\n"))


def test_tunables_are_ranges_or_choices(tmp_path):
    recipe = load_recipe(recipe_with(tmp_path, "tunable:\n  LEARNING_RATE: [0.1, 0.9]\n  WIDTH: {choices: [2, 4, 8]}\n"))
    by_name = {tunable.name: tunable for tunable in recipe.tunable}
    assert (by_name["LEARNING_RATE"].low, by_name["LEARNING_RATE"].high) == (0.1, 0.9)
    assert not by_name["LEARNING_RATE"].integer
    assert by_name["WIDTH"].choices == (2, 4, 8) and by_name["WIDTH"].integer


@pytest.mark.parametrize("entry, words", [
    ("LEARNING_RATE: [0.9, 0.1]", "low must be below high"),
    ("LEARNING_RATE: 0.5", "give [low, high]"),
    ("WIDTH: {choices: [4]}", "at least two numbers"),
    ("LERNING_RATE: [0.1, 0.9]", "did you mean LEARNING_RATE?"),
])
def test_a_broken_tunable_is_one_line(tmp_path, entry, words):
    assert words in load_error(recipe_with(tmp_path, f"tunable:\n  {entry}\n"))


@pytest.mark.parametrize("recipe", builtin_recipes(), ids=lambda recipe: recipe.name)
def test_every_builtin_tunable_names_a_constant_whose_value_is_inside_its_range(recipe):
    check_tunables(recipe)
    assert recipe.tunable, "the built-in recipes say what mutate may change"
    source = (recipe.path / recipe.editable[0]).read_text()
    values = {m.group("name"): float(m.group("value").replace("_", "")) for m in TOP_LEVEL_CONSTANT.finditer(source)}
    for tunable in recipe.tunable:
        assert tunable.contains(values[tunable.name]), tunable
    names = {tunable.name for tunable in recipe.tunable}
    assert not names & {"LOG_EVERY_SECONDS", "LOG_EVERY", "CPU_THREADS", "COMPILE_WARMUP_STEPS"}
