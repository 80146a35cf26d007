"""The offline mutate agent: one or two upper-case constants perturbed, seeded, described."""

from __future__ import annotations

import random
import re

from autoresearch.agents import MutateAgent, mutate_number
from autoresearch.guard import files_hash
from autoresearch.prompts import AgentContext
from autoresearch.recipe import load_recipe

from conftest import make_workspace


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
    seen = frozenset({files_hash({**ctx.files, **first.changed})})
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
