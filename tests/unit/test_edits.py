"""Reply parsing and tolerant SEARCH/REPLACE application: pure functions, tested directly."""

from __future__ import annotations

import pytest

from autoresearch.edits import EditBlock, EditError, apply_block, apply_blocks, parse_reply, unified_diff

SOURCE = "import torch\n\nLR = 0.1\n\ndef step(x):\n    y = x * LR\n    return y\n"


def test_parse_reply_reads_description_and_several_blocks():
    text = ("DESCRIPTION: two tweaks\nsome reasoning\n\ntrain.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.2\n"
            ">>>>>>> REPLACE\n```\nother.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n")
    parsed = parse_reply(text)
    assert parsed.description == "two tweaks"
    assert parsed.blocks == (EditBlock("train.py", "LR = 0.1\n", "LR = 0.2\n"), EditBlock("other.py", "a\n", "b\n"))


def test_parse_reply_accepts_a_fenced_file_name_and_bold_description():
    text = "**DESCRIPTION:** faster\n```python\ntrain.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.3\n>>>>>>> REPLACE\n```"
    parsed = parse_reply(text)
    assert parsed.description == "faster"
    assert parsed.blocks[0].filename == "train.py"


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("DESCRIPTION: x\nno blocks here", "no SEARCH/REPLACE block"),
    ("train.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.2\n>>>>>>> REPLACE\n", "DESCRIPTION"),
    ("DESCRIPTION: x\ntrain.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.2\n", "cut off"),
])
def test_parse_reply_rejects_malformed_replies(text, message):
    with pytest.raises(EditError, match=message):
        parse_reply(text)


def test_exact_match_is_replaced():
    assert "LR = 0.2" in apply_block(SOURCE, EditBlock("train.py", "LR = 0.1\n", "LR = 0.2\n"))


def test_trailing_whitespace_is_ignored():
    result = apply_block(SOURCE, EditBlock("train.py", "LR = 0.1   \n\ndef step(x):  \n", "LR = 0.3\n\ndef step(x):\n"))
    assert "LR = 0.3\n\ndef step(x):\n    y = x * LR" in result


def test_uniform_indentation_shift_is_applied_to_the_replacement():
    block = EditBlock("train.py", "y = x * LR\nreturn y\n", "y = x * LR * 2\nreturn y\n")
    result = apply_block(SOURCE, block)
    assert "    y = x * LR * 2\n    return y\n" in result


def test_ambiguous_search_is_refused():
    with pytest.raises(EditError, match="matches 2 places"):
        apply_block("a = 1\na = 1\n", EditBlock("f", "a = 1\n", "a = 2\n"))


def test_missing_search_reports_the_nearest_real_lines():
    with pytest.raises(EditError) as caught:
        apply_block(SOURCE, EditBlock("train.py", "    y = x * LR_SCALE\n", "    y = 0\n"))
    assert "not in the file" in str(caught.value)
    assert "    y = x * LR" in str(caught.value)


def test_blocks_for_unknown_files_name_the_known_ones():
    with pytest.raises(EditError, match="'model.py'; the files are: train.py"):
        apply_blocks({"train.py": SOURCE}, [EditBlock("model.py", "x", "y")])


def test_apply_blocks_returns_only_changed_files_and_diff_shows_them():
    files = {"train.py": SOURCE, "prepare.py": "P = 1\n"}
    changed = apply_blocks(files, [EditBlock("train.py", "LR = 0.1\n", "LR = 0.2\n")])
    assert set(changed) == {"train.py"}
    diff = unified_diff(files, {**files, **changed})
    assert "-LR = 0.1" in diff and "+LR = 0.2" in diff and "prepare.py" not in diff
