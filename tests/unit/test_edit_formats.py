"""The edit formats (formats.py) and the tolerance of SEARCH/REPLACE blocks (edits.py): pure functions."""

from __future__ import annotations

import re

import pytest

from autoresearch.edits import EditBlock, EditError, apply_blocks, blocks_between
from autoresearch.formats import ModelFacts, choose_format, example_text, knobs_of, parameters_in_name, read_reply
from autoresearch.recipe import load_recipe

from conftest import SYNTH_RECIPE, SYNTH_TRAIN, make_workspace

TUNABLE = SYNTH_RECIPE + "tunable:\n  LEARNING_RATE: [0.1, 0.9]\n  WIDTH: {choices: [2, 4, 8]}\n"


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(make_workspace(tmp_path / "ws", recipe_yaml=TUNABLE) / "recipes/synth")


FILES = {"train.py": SYNTH_TRAIN}


# --- search-replace: the tolerance real models need

def test_a_block_may_skip_unchanged_lines_with_an_elision_kept_as_the_file_has_them():
    block = EditBlock("train.py", "LEARNING_RATE = 0.5\n...\nSLEEP_SECONDS = 0.0\n",
                      "LEARNING_RATE = 0.4\n...\nSLEEP_SECONDS = 0.1\n")
    new = apply_blocks(FILES, [block])["train.py"]
    assert "LEARNING_RATE = 0.4\nWIDTH = 4\nSLEEP_SECONDS = 0.1\n" in new


def test_an_elision_in_the_search_part_only_is_refused_with_why():
    block = EditBlock("train.py", "LEARNING_RATE = 0.5\n...\nSLEEP_SECONDS = 0.0\n", "LEARNING_RATE = 0.4\n")
    with pytest.raises(EditError, match="REPLACE part does not skip the same way"):
        apply_blocks(FILES, [block])


def test_a_spurious_leading_blank_line_and_a_near_file_name_still_apply():
    block = EditBlock("recipes/synth/train.py", "\nWIDTH = 4\n", "\nWIDTH = 8\n")
    assert "WIDTH = 8\n" in apply_blocks(FILES, [block])["train.py"]
    assert "WIDTH = 8\n" in apply_blocks(FILES, [EditBlock("trian.py", "WIDTH = 4\n", "WIDTH = 8\n")])["train.py"]
    with pytest.raises(EditError, match="names 'model.py'"):
        apply_blocks(FILES, [EditBlock("model.py", "WIDTH = 4\n", "WIDTH = 8\n")])


def test_blocks_between_two_versions_make_the_same_change_again():
    new = SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8").replace("print(\"---\")", "print(\"--- done\")")
    blocks = blocks_between("train.py", SYNTH_TRAIN, new)
    assert len(blocks) == 2
    assert apply_blocks(FILES, blocks)["train.py"] == new


# --- whole

def test_whole_takes_the_file_written_back_and_diffs_it(recipe):
    reply = "DESCRIPTION: wider\n```python train.py\n" + SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8") + "```\n"
    edit = read_reply("whole", reply, recipe, FILES)
    assert edit.description == "wider" and "WIDTH = 8" in edit.changed["train.py"]
    assert [block.replace for block in edit.blocks if "WIDTH = 8" in block.replace]


@pytest.mark.parametrize("elision", ["...", "# ... rest of the file unchanged", "# existing code here"])
def test_whole_refuses_a_file_with_code_left_out_and_says_so(recipe, elision):
    text = SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8").split("# --- training")[0] + elision + "\n"
    with pytest.raises(EditError, match="leaves code out"):
        read_reply("whole", f"DESCRIPTION: wider\n```python train.py\n{text}```\n", recipe, FILES)


def test_whole_without_a_named_block_or_with_no_change_is_refused(recipe):
    with pytest.raises(EditError, match="no fenced block"):
        read_reply("whole", "DESCRIPTION: wider\nI would make it wider.", recipe, FILES)
    with pytest.raises(EditError, match="changes nothing"):
        read_reply("whole", f"DESCRIPTION: same\n```python train.py\n{SYNTH_TRAIN}```\n", recipe, FILES)


# --- knobs

def test_knobs_sets_the_tunable_constants_inside_their_ranges(recipe):
    edit = read_reply("knobs", "DESCRIPTION: slower and wider\nLEARNING_RATE = 0.35\nSET WIDTH = 8\n", recipe, FILES)
    assert edit.description == "slower and wider"
    new = edit.changed["train.py"]
    assert "LEARNING_RATE = 0.35\n" in new and "WIDTH = 8\n" in new and "SLEEP_SECONDS = 0.0\n" in new
    assert len(edit.blocks) == 2


@pytest.mark.parametrize("line,problem", [("LEARNING_RATE = 3", "outside what it may be (0.1 to 0.9)"),
                                          ("WIDTH = 5", "outside what it may be (one of 2, 4, 8)"),
                                          ("LEARNING_RAT = 0.3", "not one of the constants you may set"),
                                          ("SLEEP_SECONDS = 1", "not one of the constants you may set")])
def test_knobs_refuses_a_value_out_of_range_or_a_name_not_listed(recipe, line, problem):
    with pytest.raises(EditError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        read_reply("knobs", f"DESCRIPTION: try\n{line}\n", recipe, FILES)


def test_knobs_lists_each_constant_with_its_current_value_and_range(recipe):
    knobs = {knob.name: (knob.current, knob.allowed()) for knob in knobs_of(recipe, FILES)}
    assert knobs == {"LEARNING_RATE": ("0.5", "0.1 to 0.9"), "WIDTH": ("4", "one of 2, 4, 8")}


# --- the reply form: a real example, never copied

def test_knobs_shows_no_example_change_to_copy(recipe):
    assert example_text("knobs", recipe, FILES) == ""  # its list of constants shows the form, on real lines


@pytest.mark.parametrize("name", ["search-replace"])
def test_the_example_is_a_real_line_of_the_file_and_a_reply_repeating_it_is_refused(recipe, name):
    example = example_text(name, recipe, FILES)
    assert "LEARNING_RATE" in example and "(" not in example  # real, no placeholder in parentheses
    with pytest.raises(EditError, match="repeats the example"):
        read_reply(name, example, recipe, FILES)


def test_a_reply_echoing_the_old_placeholders_is_refused_with_why(recipe):
    reply = ("(your reasoning first, briefly: ...)\nDESCRIPTION: x\ntrain.py\n<<<<<<< SEARCH\nexact lines copied "
             "from the current file\n=======\nthe lines that replace them\n>>>>>>> REPLACE\n")
    with pytest.raises(EditError, match="placeholder text"):
        read_reply("search-replace", reply, recipe, FILES)


# --- auto

@pytest.mark.parametrize("facts,expected", [
    (ModelFacts("Qwen2.5-Coder-1.5B-Instruct"), "knobs"),
    (ModelFacts("qwen2.5-coder:7b"), "whole"),
    (ModelFacts("/models/qwen2.5-coder-32b-instruct-q4_k_m.gguf"), "search-replace"),
    (ModelFacts("model.gguf", parameters=134_515_008, source="the server's /v1/models"), "knobs"),
    (ModelFacts("SmolLM2-135M-Instruct"), "knobs"),
    (ModelFacts("gpt-5-mini"), "search-replace"),
    (ModelFacts("my-finetune"), "search-replace"),
])
def test_auto_picks_by_the_models_size_and_says_why(facts, expected):
    name, reason = choose_format(facts)
    assert name == expected and reason


def test_a_size_is_read_from_a_models_name():
    assert parameters_in_name("Qwen2.5-Coder-1.5B-Instruct") == 1.5e9
    assert parameters_in_name("qwen2.5-coder:1.5b") == 1.5e9
    assert parameters_in_name("SmolLM2-135M-Instruct") == 135e6
    assert parameters_in_name("gpt-5-mini") is None


def test_a_format_that_cannot_serve_gives_way(recipe, tmp_path):
    from autoresearch.formats import fitting

    assert fitting("whole", recipe, FILES, file_tokens=3_000, context_tokens=32_768) == "whole"
    assert fitting("whole", recipe, FILES, file_tokens=3_000, context_tokens=4_096) == "knobs"
    bare = load_recipe(make_workspace(tmp_path / "bare", train="print('no constants')\nfrom prepare import save_model\n")
                       / "recipes/synth")
    files = {"train.py": (bare.path / "train.py").read_text()}
    assert fitting("knobs", bare, files) == "whole"
    assert fitting("knobs", bare, files, file_tokens=3_000, context_tokens=4_096) == "search-replace"


def test_a_run_stored_before_the_formats_resumes_with_the_new_defaults_not_forced_drafting():
    from autoresearch.settings import resumed_options

    old = {"tag": "t", "config": {"draft_ahead": True, "model": "m"}, "budget_seconds": 5}
    options = resumed_options(old, {})
    assert options.draft_ahead is None and options.edit_format == "auto" and options.temperature == 0.2
    forced = resumed_options({**old, "config": {"draft_ahead": True, "edit_format": "whole"}}, {})
    assert forced.draft_ahead is True and forced.edit_format == "whole"


def test_a_knobs_reply_that_gives_one_constant_two_values_is_refused():
    from autoresearch.formats import Knob, parse_knobs

    knobs = [Knob("LEARNING_RATE", "0.5", None, "")]
    assert parse_knobs("LEARNING_RATE = 0.3\nLEARNING_RATE = 0.3\n", knobs) == {"LEARNING_RATE": "0.3"}
    with pytest.raises(EditError, match="LEARNING_RATE is given two values"):
        parse_knobs("<<<<<<< SEARCH\nLEARNING_RATE = 0.55\n=======\nLEARNING_RATE = 0.3\n>>>>>>> REPLACE\n", knobs)


def test_the_knobs_prompt_offers_values_not_tried_yet_never_a_tried_one():
    from pathlib import Path

    from autoresearch.edits import set_constants
    from autoresearch.formats import untried_values
    from autoresearch.guard import editable_digest

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
    recipe = load_recipe(tiny)
    files = {name: (tiny / name).read_text() for name in recipe.editable + recipe.fixed}
    offered = untried_values(recipe, files, frozenset())
    assert offered["DEPTH"] == ["3", "1"]  # a count steps by one
    assert offered["BATCH_SIZE"] == ["16", "4"] and offered["N_EMBD"] == ["96", "64"]
    tried, _, _ = set_constants(files["train.py"], {"DEPTH": "3"}, "train.py")
    seen = frozenset({editable_digest(recipe, {**files, "train.py": tried})})
    assert untried_values(recipe, files, seen)["DEPTH"] == ["1", "4"]  # the value tried is not offered again


def test_a_change_tried_already_is_told_with_values_not_tried_yet_in_knobs():
    from pathlib import Path

    from autoresearch.formats import tried_already

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
    recipe = load_recipe(tiny)
    files = {name: (tiny / name).read_text() for name in recipe.editable + recipe.fixed}
    said = tried_already("knobs", recipe, files, frozenset())
    assert said.startswith("this change was tried already") and "not tried yet, for instance: DEPTH = 3" in said
    assert "not tried yet" not in tried_already("search-replace", recipe, files, frozenset())


def test_a_knobs_line_that_keeps_the_forms_name_prefix_is_read():
    from autoresearch.formats import Knob, parse_knobs

    knobs = [Knob("LEARNING_RATE", "0.5", None, ""), Knob("WIDTH", "4", None, "")]
    # what Qwen2.5-Coder-1.5B wrote, told the form `NAME = VALUE`
    assert parse_knobs("NAME = LEARNING_RATE = 0.04\nNAME = WIDTH = 8\n", knobs) == {"LEARNING_RATE": "0.04",
                                                                                    "WIDTH": "8"}


def test_a_knobs_line_copied_from_the_list_with_its_range_is_read():
    from autoresearch.formats import Knob, parse_knobs

    knobs = [Knob("LEARNING_RATE", "0.02", None, ""), Knob("BATCH_SIZE", "8", None, "")]
    # what Qwen2.5-Coder-1.5B wrote: the prompt's own list rows, with new values
    reply = ("- LEARNING_RATE = 0.04 (may be 0.001 to 0.1; not tried yet: 0.04, 0.01)\n"
             "- BATCH_SIZE = 16 (may be 2 to 32, whole numbers; not tried yet: 16, 4)\n")
    assert parse_knobs(reply, knobs) == {"LEARNING_RATE": "0.04", "BATCH_SIZE": "16"}


def test_a_knobs_reply_changing_more_constants_than_asked_is_refused():
    from pathlib import Path

    from autoresearch.formats import MAX_KNOBS_CHANGED, untried_changes
    from autoresearch.prompts import TACK_CHANGES

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
    recipe = load_recipe(tiny)
    files = {name: (tiny / name).read_text() for name in recipe.editable + recipe.fixed}
    offered = untried_changes(recipe, files, frozenset())[:6]
    # what Qwen2.5-Coder-1.5B wrote, offered a list of six changes to copy one of: all six
    with pytest.raises(EditError, match=f"changes 6 constants; change at most {MAX_KNOBS_CHANGED}"):
        read_reply("knobs", "DESCRIPTION: a lower learning rate\n" + "\n".join(offered), recipe, files)
    # a restart offers no more than a reply may set: copied whole, it is a change in the form
    copied = read_reply("knobs", "DESCRIPTION: deeper\n" + "\n".join(offered[:TACK_CHANGES]), recipe, files)
    assert len(copied.blocks) == TACK_CHANGES


def test_knobs_lines_with_words_after_the_value_or_two_on_one_line_are_read():
    from autoresearch.formats import Knob, parse_knobs

    knobs = [Knob("DEPTH", "2", None, ""), Knob("N_EMBD", "128", None, ""), Knob("BATCH_SIZE", "8", None, "")]
    # what Qwen2.5-Coder-1.5B wrote in a restart
    assert parse_knobs("DEPTH = 3, inside range [1, 4]\nN_EMBD = 96, inside range [64, 192]\n", knobs) == {
        "DEPTH": "3", "N_EMBD": "96"}
    assert parse_knobs("- DEPTH = 3, BATCH_SIZE = 16\n", knobs) == {"DEPTH": "3", "BATCH_SIZE": "16"}


# what Qwen2.5-Coder-1.5B wrote back in whole: program.md pasted in an unnamed block of its own, then the file in
# another, from below its imports on (its docstring and first imports left out)
WRITTEN_FROM_BELOW_THE_IMPORTS = SYNTH_TRAIN[SYNTH_TRAIN.index("from prepare"):].replace("WIDTH = 4", "WIDTH = 8")


def test_whole_reads_the_unnamed_block_most_like_the_file_and_puts_back_a_head_left_out(recipe):
    files = {**FILES, "prepare.py": "print('the fixed file')\n"}  # a fixed file beside the one editable file
    reply = ("DESCRIPTION: lower\n\n```python\n# Research direction\n\nLower the loss.\n```\n\n```python\n"
             + WRITTEN_FROM_BELOW_THE_IMPORTS + "```\n")
    edit = read_reply("whole", reply, recipe, files)
    assert edit.changed["train.py"] == SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8")
    assert set(edit.changed) == {"train.py"}


def test_whole_refuses_unnamed_blocks_with_nothing_of_the_file(recipe):
    with pytest.raises(EditError, match="no fenced block named by its file"):
        read_reply("whole", "DESCRIPTION: x\n```python\nprint('something else')\n```\n", recipe, FILES)


def test_whole_reads_the_file_from_a_block_opened_inside_an_unclosed_one(recipe):
    written = SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8")
    reply = f"DESCRIPTION: wider\n```python\n# Research direction\n\nLower the loss.\n```python\n{written}```\n"
    assert read_reply("whole", reply, recipe, FILES).changed["train.py"] == written


@pytest.mark.parametrize("written,said", [
    (SYNTH_TRAIN.replace("WIDTH = 4\n", "WIDTH = 4\n[... 7413 characters left out ...]\n"),
     "leaves code out ('[... 7413 characters left out'"),  # the mark of a shortened reply, copied back
    (SYNTH_TRAIN.replace("WIDTH = 4\n", "WIDTH = (4\n"), "not valid Python (line 8: "),
    # what Qwen2.5-Coder-1.5B wrote back once: the one constant it changed, under the file's section heading
    ("# --- training\nWIDTH = 8\n", "has 2 lines where the current one has 18: write out every line")])
def test_whole_refuses_a_file_that_could_only_crash_saying_why(recipe, written, said):
    with pytest.raises(EditError, match=re.escape(said)):
        read_reply("whole", f"DESCRIPTION: x\n```python train.py\n{written}```\n", recipe, FILES)
