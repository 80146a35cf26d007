"""The proposal's prompt: an order a prefix cache can reuse, what a strong model needs, notes, repairs that fit."""

from __future__ import annotations

import pytest
from conftest import nvidia_smi_on_path
from faultkit import BETTER

from autoresearch.edits import MAX_NOTES_CHARS, EditError, parse_reply
from autoresearch.prompts import (reminder, CHARS_PER_TOKEN, NOTES_TOKENS, AgentContext, LineageEntry, Note,
                                  Standing, build_messages, estimate_tokens, format_program, prompt_tokens,
                                  repair_conversation)
from autoresearch.recipe import load_recipe

DIFF = """\
--- a/train.py
+++ b/train.py
@@ -5,3 +5,3 @@
-LEARNING_RATE = 0.5
+LEARNING_RATE = 0.3
 WIDTH = 4
"""


def context(workspace, **fields) -> AgentContext:
    recipe = load_recipe(workspace / "recipes/synth")
    files = {"train.py": (workspace / "recipes/synth/train.py").read_text(), "prepare.py": ""}
    base = dict(number=3, program="# Research direction\n\nLower the loss.", recipe=recipe, budget_seconds=5,
                files=files, baseline_metric=0.29, best_metric=0.25, hardware="2 CPU cores; no GPU found",
                baseline=Standing(0, 0.29, {"num_steps": 1000, "training_seconds": 50.0, "peak_memory_mb": 512.0}),
                best=Standing(1, 0.25, {"num_steps": 800, "training_seconds": 50.0, "peak_memory_mb": 600.0}),
                best_diff=DIFF, best_log_tail="step 800: loss 1.91\nstep 810: loss 1.90")
    return AgentContext(**{**base, **fields})


def entry(number: int, outcome: str = "discard", diff: str = "") -> LineageEntry:
    return LineageEntry(number=number, outcome=outcome, reason=None, metric=0.3, gain=-0.05,
                        description=f"try {number}", diff=diff)


def user_message(ctx: AgentContext) -> str:
    return build_messages(ctx)[1]["content"]


# --- an order made for caching

def test_two_prompts_in_a_row_share_everything_up_to_the_history_while_nothing_was_kept(workspace):
    lineage = (entry(0, "keep"), entry(1, "keep"), entry(2))
    first = user_message(context(workspace, number=3, lineage=lineage))
    second = user_message(context(workspace, number=4, lineage=lineage + (entry(3, diff=DIFF),)))
    shared = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    history = first.index("# Experiments so far")
    assert first[:history] == second[:history]  # program, recipe, hardware, train.py, the standing: all the same
    for stable in ("# Research direction", "- hardware: 2 CPU cores", "# Current train.py", "# Where the run stands",
                   "The best commit against the baseline"):
        assert first.index(stable) < history
    assert shared >= history


def test_what_changes_every_experiment_comes_last(workspace):
    ctx = context(workspace, lineage=(entry(0, "keep"), entry(1, "keep"), entry(2, diff=DIFF)),
                  notes=(Note(2, "plan: try warm-up next"),))
    prompt = user_message(ctx)
    order = ["# Research direction", "# The recipe", "# Current train.py", "# Where the run stands",
             "# Your notes from earlier experiments", "# Experiments so far",
             "# What recent tries that were not kept changed", "# Your task"]
    assert [prompt.index(heading) for heading in order] == sorted(prompt.index(heading) for heading in order)


def test_the_reply_form_is_repeated_at_the_end_of_the_user_message(workspace):
    ctx = context(workspace)
    prompt = user_message(ctx)
    assert prompt.endswith(reminder(ctx))
    assert "DESCRIPTION:" in reminder(ctx) and "<<<<<<< SEARCH" in reminder(ctx)
    assert len(reminder(ctx)) < len(build_messages(ctx)[0]["content"])  # briefly


def test_program_md_with_its_own_heading_gets_no_second_one(workspace):
    prompt = user_message(context(workspace))
    assert prompt.startswith("# Research direction\n\nLower the loss.")
    assert "# Research direction (program.md)" not in prompt
    assert format_program("Lower the loss.").startswith("# Research direction (program.md)\n\nLower the loss.")


# --- what a strong model needs

def test_the_baseline_and_the_best_with_their_training_numbers_diff_and_log(workspace):
    prompt = user_message(context(workspace))
    standing = prompt.split("# Where the run stands", 1)[1].split("# Experiments so far", 1)[0]
    assert "- baseline val_loss: 0.29" in standing and "- best val_loss so far (experiment 1): 0.25" in standing
    assert "| | baseline (#0) | best (#1) |" in standing
    assert "| num_steps | 1000 | 800 |" in standing
    assert "| seconds_per_step | 0.05 | 0.0625 |" in standing  # the time per step, derived
    assert "+LEARNING_RATE = 0.3" in standing and "step 810: loss 1.90" in standing


def test_recent_discarded_tries_show_what_they_changed_most_recent_first(workspace):
    other = DIFF.replace("0.3", "0.2")
    lineage = (entry(0, "keep"), entry(1, "keep"), entry(2, diff=DIFF), entry(3, "crash", diff=other))
    tries = user_message(context(workspace, lineage=lineage)).split("# What recent tries that were not kept", 1)[1]
    assert tries.index("Experiment 3 (crash)") < tries.index("Experiment 2 (discard)")
    assert "+LEARNING_RATE = 0.2" in tries and " WIDTH = 4" not in tries  # the changed lines only


def test_the_hardware_line_says_cores_and_gpus(workspace, tmp_path, monkeypatch):
    import os

    from autoresearch.hardware import describe_hardware

    assert "- hardware: 2 CPU cores; no GPU found" in user_message(context(workspace))
    # a real nvidia-smi's answer to the tool's query, from a script of that name on PATH
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", "NVIDIA H200, 143771\nNVIDIA H200, 143771\n"))
    describe_hardware.cache_clear()
    try:
        cores = os.cpu_count()
        assert describe_hardware() == f"{cores} CPU core{'s' if cores != 1 else ''}; GPU: 2 x NVIDIA H200 (140 GiB)"
    finally:
        describe_hardware.cache_clear()


# --- the notebook

def test_notes_are_parsed_after_the_reasoning_and_the_description():
    text = ("I think the learning rate is too high.\nDESCRIPTION: lower the learning rate\nNOTES: plan: lr first,"
            "\nthen the width.\ntrain.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.5\n=======\nLEARNING_RATE = 0.3\n"
            ">>>>>>> REPLACE\n")
    parsed = parse_reply(text)
    assert parsed.description == "lower the learning rate"  # reasoning may come before it
    assert parsed.notes == "plan: lr first,\nthen the width."
    assert parse_reply(BETTER).notes == ""
    long = text.replace("then the width.", "x" * (2 * MAX_NOTES_CHARS))
    assert len(parse_reply(long).notes) == MAX_NOTES_CHARS


def test_notes_in_the_prompt_are_bounded_most_recent_first(workspace):
    notes = tuple(Note(number, f"note of experiment {number}: " + "words " * 200) for number in range(1, 30))
    prompt = user_message(context(workspace, notes=notes, token_budget=100_000))
    section = prompt.split("# Your notes from earlier experiments (most recent first)", 1)[1].split("# ", 1)[0]
    assert section.index("Experiment 29:") < section.index("Experiment 28:")
    assert "Experiment 1:" not in section
    assert estimate_tokens(section) <= NOTES_TOKENS


# --- the budget and the repair turns

def test_the_budget_is_kept_with_room_for_a_repair_turn(workspace):
    lineage = tuple(entry(n, "crash" if n % 2 else "discard", diff=DIFF * 5) for n in range(2, 200))
    ctx = context(workspace, lineage=(entry(0, "keep"), entry(1, "keep")) + lineage, token_budget=4_000,
                  best_diff=DIFF * 60)
    messages = build_messages(ctx)
    assert prompt_tokens(messages) <= 4_000 - 1_000  # a repair turn's room is left
    failed = "DESCRIPTION: x\n" + "reasoning " * 3_000
    repaired = repair_conversation(messages, failed, "the SEARCH part is not in the file", 4_000)
    assert prompt_tokens(repaired) <= 4_000 and "characters left out" in repaired[2]["content"]


def test_older_repair_turns_go_first_when_the_latest_does_not_fit(workspace):
    messages = build_messages(context(workspace, token_budget=3_000))
    base = prompt_tokens(messages)
    once = repair_conversation(messages, "a" * 1_500, "first error", base + 600)
    twice = repair_conversation(once, "b" * 1_500, "second error", base + 600)
    assert twice[:2] == messages and "second error" in twice[-1]["content"] and "first error" not in str(twice)
    assert repair_conversation(messages, "c" * 1_500, "error", base + 20) is None


def test_the_token_estimate_is_measured_not_four_characters():
    assert CHARS_PER_TOKEN == pytest.approx(3.3)
    assert estimate_tokens("x" * 330) == 101
    assert estimate_tokens("x" * 330, chars_per_token=3.0) == 111


def test_a_missing_divider_says_what_it_is():
    text = "DESCRIPTION: d\ntrain.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.5\nLEARNING_RATE = 0.3\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="has no ======= line between its SEARCH part and its REPLACE line"):
        parse_reply(text)
    with pytest.raises(EditError, match="a block is cut off"):
        parse_reply(text.split("LEARNING_RATE = 0.3")[0])
