"""The offline mutate agent: one or two upper-case constants perturbed, seeded, described."""

from __future__ import annotations

import random
import re

from autoresearch.agents import MutateAgent, mutate_number
from autoresearch.guard import editable_digest
from autoresearch.prompts import AgentContext
from autoresearch.recipe import Tunable, load_recipe

from conftest import SYNTH_RECIPE, make_workspace


def context(tmp_path, number=1, seen=frozenset()):
    root = make_workspace(tmp_path / "ws")
    recipe = load_recipe(root / "recipes/synth")
    files = {"train.py": (recipe.path / "train.py").read_text()}
    return AgentContext(number=number, program="p", recipe=recipe, budget_seconds=5, files=files, seen_hashes=seen)


def test_mutation_changes_constants_and_describes_them(tmp_path):
    ctx = context(tmp_path)
    candidate = MutateAgent(seed=1).propose(ctx, lambda call: None)
    new = candidate.changed["train.py"]
    for part in candidate.description.split(", "):
        name, old, new_value = re.fullmatch(r"([A-Z_]+) (\S+) -> (\S+)", part).groups()
        assert f"{name} = {old}" in ctx.files["train.py"]
        assert f"{name} = {new_value}" in new
    assert len(new.splitlines()) == len(ctx.files["train.py"].splitlines())


def test_mutation_is_seeded(tmp_path):
    ctx = context(tmp_path)
    first = MutateAgent(seed=5).propose(ctx, lambda call: None)
    again = MutateAgent(seed=5).propose(ctx, lambda call: None)
    assert first == again


def test_mutation_avoids_results_already_seen(tmp_path):
    ctx = context(tmp_path)
    first = MutateAgent(seed=5).propose(ctx, lambda call: None)
    seen = frozenset({editable_digest(ctx.recipe, {**ctx.files, **first.changed})})
    second = MutateAgent(seed=5).propose(AgentContext(**{**ctx.__dict__, "seen_hashes": seen}), lambda call: None)
    assert second.changed != first.changed


def test_floats_scale_within_half_to_double_and_ints_step():
    rng = random.Random(0)
    for _ in range(200):
        value = float(mutate_number("0.04", rng))
        assert 0.02 <= value <= 0.08
        step = int(mutate_number("8", rng))
        assert step in (6, 10)
        assert int(mutate_number("1", rng)) >= 1


def test_mutations_stay_inside_the_recipes_ranges_and_choices(tmp_path):
    """The control arm is fair: a recipe's tunable ranges and choices are never left, and nothing else changes."""
    root = make_workspace(tmp_path / "ws", recipe_yaml=SYNTH_RECIPE + "tunable:\n  LEARNING_RATE: [0.45, 0.6]\n"
                          "  WIDTH: {choices: [2, 4, 8]}\n")
    recipe = load_recipe(root / "recipes/synth")
    files = {"train.py": (recipe.path / "train.py").read_text()}
    seen_values = set()
    for number in range(1, 60):
        ctx = AgentContext(number=number, program="p", recipe=recipe, budget_seconds=5, files=files)
        new = MutateAgent(seed=3).propose(ctx, lambda call: None).changed["train.py"]
        learning_rate = float(re.search(r"^LEARNING_RATE = (\S+)$", new, re.M).group(1))
        width = int(re.search(r"^WIDTH = (\S+)$", new, re.M).group(1))
        assert 0.45 <= learning_rate <= 0.6 and width in (2, 4, 8)
        assert "SLEEP_SECONDS = 0.0" in new  # not tunable: never touched
        seen_values.add((learning_rate, width))
    assert len(seen_values) > 10


def test_an_integer_tunable_stays_an_integer_and_a_range_through_zero_moves():
    rng = random.Random(1)
    steps = Tunable("NS_STEPS", low=1, high=6, integer=True)
    decay = Tunable("WEIGHT_DECAY", low=0.0, high=0.2)
    for _ in range(100):
        assert 1 <= int(mutate_number("5", rng, steps)) <= 6
        assert 0.0 <= float(mutate_number("0.0", rng, decay)) <= 0.2
    assert {mutate_number("0.0", rng, decay) for _ in range(20)} != {"0.0"}


def test_a_mutation_carries_blocks_that_make_the_same_change_on_other_files(tmp_path):
    """So a change drafted against one best can be applied again to a newer one."""
    from autoresearch.edits import apply_blocks

    ctx = context(tmp_path)
    candidate = MutateAgent(seed=2).propose(ctx, lambda call: None)
    assert apply_blocks(ctx.files, candidate.blocks) == candidate.changed
    moved = {"train.py": ctx.files["train.py"].replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 0.5")}
    again = apply_blocks(moved, candidate.blocks)["train.py"]
    assert "SLEEP_SECONDS = 0.5" in again or "SLEEP_SECONDS" in candidate.description
