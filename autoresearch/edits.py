"""Parsing the agent's reply and applying its SEARCH/REPLACE blocks: pure functions, no I/O.

The reply contract (docs and prompt agree on it):

    (free reasoning)
    DESCRIPTION: one line, becomes the commit message
    NOTES: optional lines the agent keeps for its later experiments
    train.py
    <<<<<<< SEARCH
    exact lines from the file
    =======
    replacement lines
    >>>>>>> REPLACE

Blocks are applied tolerantly: an exact match first, then a match that ignores trailing
whitespace, then one that allows a uniform shift of indentation (the replacement is shifted the
same way). A block that still does not apply raises EditError with the nearest real lines, so that
the agent can be told what the file really says.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from autoresearch.recipe import TOP_LEVEL_CONSTANT

SEARCH_MARK = re.compile(r"^<{5,9} ?SEARCH\s*$")
DIVIDER_MARK = re.compile(r"^={5,9}\s*$")
REPLACE_MARK = re.compile(r"^>{5,9} ?REPLACE\s*$")
DESCRIPTION_LINE = re.compile(r"^\s*\**DESCRIPTION\**\s*:\s*\**\s*(.+?)\s*$", re.IGNORECASE)
NOTES_LINE = re.compile(r"^\s*\**NOTES\**\s*:\s*\**\s*(.*?)\s*$", re.IGNORECASE)
MAX_DESCRIPTION_CHARS = 200
MAX_NOTES_CHARS = 1_500


@dataclass(frozen=True)
class EditBlock:
    """One SEARCH/REPLACE block aimed at one file."""

    filename: str
    search: str
    replace: str


@dataclass(frozen=True)
class ParsedReply:
    description: str
    blocks: tuple[EditBlock, ...]
    notes: str = ""  # what the agent wrote under NOTES:, for its later prompts


class EditError(ValueError):
    """A reply that cannot be parsed or a block that does not apply; the message is for the agent."""


def parse_description(text: str) -> str:
    """The reply's `DESCRIPTION:` line, or "" without one."""
    for line in (text or "").splitlines():
        match = DESCRIPTION_LINE.match(line)
        if match:
            return match.group(1).strip().strip("*`").strip()[:MAX_DESCRIPTION_CHARS]
    return ""


def parse_reply(text: str) -> ParsedReply:
    """Split a reply into its description and its edit blocks."""
    if not text or not text.strip():
        raise EditError("the reply was empty")
    lines = text.splitlines()
    description = parse_description(text)
    blocks: list[EditBlock] = []
    index = 0
    while index < len(lines):
        if not SEARCH_MARK.match(lines[index]):
            index += 1
            continue
        filename = _filename_before(lines, index)
        search, index = _collect(lines, index + 1, DIVIDER_MARK, "=======", before=REPLACE_MARK)
        replace, index = _collect(lines, index + 1, REPLACE_MARK, ">>>>>>> REPLACE")
        blocks.append(EditBlock(filename=filename, search=search, replace=replace))
        index += 1
    if not blocks:
        raise EditError("the reply has no SEARCH/REPLACE block")
    if not description:
        raise EditError("the reply has no 'DESCRIPTION: ...' line")
    return ParsedReply(description=description[:MAX_DESCRIPTION_CHARS], blocks=tuple(blocks), notes=parse_notes(text))


def parse_notes(text: str) -> str:
    """The lines under `NOTES:`, up to the description, the first block or its file's name; "" without them."""
    lines = text.splitlines()
    start = next((index for index, line in enumerate(lines) if NOTES_LINE.match(line)), None)
    if start is None:
        return ""
    ends = {index for index, line in enumerate(lines) if SEARCH_MARK.match(line) or DESCRIPTION_LINE.match(line)
            or line.strip().startswith("```")}
    for index in [i for i in ends if SEARCH_MARK.match(lines[i])]:
        above = [i for i in range(max(0, index - 3), index) if lines[i].strip()]
        ends.update(above[-1:])  # the line naming the block's file
    notes = [NOTES_LINE.match(lines[start]).group(1)]
    for index in range(start + 1, len(lines)):
        if index in ends:
            break
        notes.append(lines[index])
    return "\n".join(notes).strip()[:MAX_NOTES_CHARS]


def _filename_before(lines: list[str], search_index: int) -> str:
    """The file a block is aimed at: the nearest non-empty line above it that is not a fence."""
    for line in reversed(lines[max(0, search_index - 3):search_index]):
        name = line.strip().strip("`*:").strip()
        if name and not name.startswith("```"):
            return name.split()[-1] if " " in name else name
    return ""


def _collect(lines: list[str], start: int, end_mark: re.Pattern, end_text: str,
             before: re.Pattern | None = None) -> tuple[str, int]:
    """The lines from start up to end_mark; a block that reaches `before` first lacks that line, one that
    reaches the reply's end is cut off."""
    for index in range(start, len(lines)):
        if end_mark.match(lines[index]):
            body = "\n".join(lines[start:index])
            return (body + "\n" if index > start else ""), index
        if before is not None and before.match(lines[index]):
            raise EditError(f"the block at line {start} has no {end_text} line between its SEARCH part and its "
                            "REPLACE line")
    raise EditError(f"a block is cut off: no '{end_text}' line after line {start}")


def apply_blocks(files: dict[str, str], blocks: tuple[EditBlock, ...] | list[EditBlock]) -> dict[str, str]:
    """Apply every block in order; returns the changed files only (name -> new content)."""
    current = dict(files)
    changed: dict[str, str] = {}
    for number, block in enumerate(blocks, start=1):
        if block.filename not in current:
            near = close_filename(block.filename, files)
            if near is None:
                known = ", ".join(sorted(files))
                raise EditError(f"block {number} names {block.filename or 'no file'!r}; the files are: {known}")
            block = EditBlock(near, block.search, block.replace)
        try:
            current[block.filename] = apply_block(current[block.filename], block)
        except EditError as exc:
            raise EditError(f"block {number} ({block.filename}): {exc}") from None
        changed[block.filename] = current[block.filename]
    return {name: content for name, content in changed.items() if content != files[name]}


def close_filename(name: str, files) -> str | None:
    """The editable file a block's name means when it is not exactly one: `recipes/tiny/train.py`, `Train.py`,
    `train.py:`, `trian.py` all mean train.py; None when no file is close enough (or two are)."""
    cleaned = name.strip().strip("`*:'\"").strip()
    candidates = [known for known in files if cleaned == known or cleaned.endswith("/" + known)
                  or cleaned.lower() == known.lower()]
    if len(candidates) != 1:
        candidates = difflib.get_close_matches(cleaned, list(files), n=2, cutoff=0.8)
    return candidates[0] if len(candidates) == 1 else None


ELISION_LINE = re.compile(r"^\s*(#\s*)?(\.\.\.|…)\s*$")


def apply_block(content: str, block: EditBlock) -> str:
    """Apply one block to content: exact, then trailing-whitespace-blind, then indentation-shifted; then with a
    spurious leading blank line dropped, then with `...` lines standing for unchanged lines kept as they are."""
    if not block.search.strip():
        raise EditError("the SEARCH part is empty; copy the exact lines to replace")
    try:
        return _apply_strict(content, block)
    except EditError as first:
        if block.search.startswith("\n") and block.search.strip():
            trimmed = EditBlock(block.filename, block.search.lstrip("\n"),
                                block.replace.lstrip("\n") if block.replace.startswith("\n") else block.replace)
            try:
                return apply_block(content, trimmed)
            except EditError:
                pass
        if any(ELISION_LINE.match(line) for line in block.search.splitlines()):
            return _apply_elided(content, block)
        raise first


def _apply_elided(content: str, block: EditBlock) -> str:
    """A block whose SEARCH and REPLACE both skip unchanged lines with a `...` line: each part around the `...`
    is applied in turn and the lines between them stay as the file has them."""
    searches = _split_elided(block.search)
    replaces = _split_elided(block.replace)
    if len(searches) != len(replaces):
        raise EditError("the SEARCH part skips lines with '...' but the REPLACE part does not skip the same way: "
                        "write '...' in the REPLACE part where the unchanged lines stay, or copy the lines whole")
    result = content
    for search, replace in zip(searches, replaces):
        if not search.strip():
            if replace.strip():
                raise EditError("a '...' at the edge of the SEARCH part leaves nothing to place its replacement by")
            continue
        result = _apply_strict(result, EditBlock(block.filename, search, replace))
    return result


def _split_elided(text: str) -> list[str]:
    parts, current = [], []
    for line in text.splitlines(keepends=True):
        if ELISION_LINE.match(line):
            parts.append("".join(current))
            current = []
        else:
            current.append(line)
    parts.append("".join(current))
    return parts


def _apply_strict(content: str, block: EditBlock) -> str:
    """Apply one block: exact, then trailing-whitespace-blind, then indentation-shifted."""
    exact_count = content.count(block.search)
    if exact_count == 1:
        return content.replace(block.search, block.replace, 1)
    if exact_count > 1:
        raise EditError(f"the SEARCH part matches {exact_count} places; include more lines to make it unique")
    file_lines = content.splitlines(keepends=True)
    search_lines = block.search.splitlines()
    replace_lines = block.replace.splitlines()
    for matcher in (_match_ignoring_trailing_space, _match_with_indent_shift):
        found = [m for start in range(len(file_lines) - len(search_lines) + 1)
                 if (m := matcher(file_lines[start:start + len(search_lines)], search_lines, start)) is not None]
        if len(found) == 1:
            start, shift = found[0]
            new_lines = [_shift(line, shift) + "\n" for line in replace_lines]
            return "".join(file_lines[:start] + new_lines + file_lines[start + len(search_lines):])
        if len(found) > 1:
            raise EditError(f"the SEARCH part matches {len(found)} places; include more lines to make it unique")
    raise EditError("the SEARCH part is not in the file. The nearest real lines are:\n"
                    + nearest_lines(content, block.search))


def _match_ignoring_trailing_space(window: list[str], search: list[str], start: int):
    if all(a.rstrip() == b.rstrip() for a, b in zip(window, search)):
        return start, 0
    return None


def _match_with_indent_shift(window: list[str], search: list[str], start: int):
    """Match when every non-blank line differs only by the same amount of leading whitespace."""
    shift = None
    for have, want in zip(window, search):
        if not have.strip() and not want.strip():
            continue
        if have.strip() != want.strip():
            return None
        delta = _indent(have) - _indent(want)
        if shift is None:
            shift = delta
        elif delta != shift:
            return None
    return (start, shift) if shift is not None else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _shift(line: str, shift: int) -> str:
    if not line.strip() or shift == 0:
        return line.rstrip("\n")
    if shift > 0:
        return " " * shift + line
    return line[min(-shift, _indent(line)):]


def nearest_lines(content: str, search: str, context: int = 2) -> str:
    """The lines of content most like search (with a little context), for the agent to copy."""
    file_lines = content.splitlines()
    search_lines = search.splitlines()
    if not file_lines:
        return "(the file is empty)"
    width = max(1, len(search_lines))
    best_start, best_ratio = 0, -1.0
    target = "\n".join(line.strip() for line in search_lines)
    for start in range(max(1, len(file_lines) - width + 1)):
        window = "\n".join(line.strip() for line in file_lines[start:start + width])
        ratio = difflib.SequenceMatcher(None, window, target, autojunk=False).quick_ratio()
        if ratio > best_ratio:
            best_start, best_ratio = start, ratio
    first = max(0, best_start - context)
    last = min(len(file_lines), best_start + width + context)
    return "\n".join(file_lines[first:last])


def unified_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """A unified diff of every file that differs between two snapshots."""
    parts = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, ""), after.get(name, "")
        if old != new:
            parts.extend(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                              fromfile=f"a/{name}", tofile=f"b/{name}"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in parts)


def set_constants(source: str, values: dict[str, str], filename: str) -> tuple[str, list[str], list[EditBlock]]:
    """source with top-level constants given new values (name -> the value's text): the new source, one
    `NAME old -> new` line per constant that changed, and the blocks that make the same change elsewhere.

    The one rewrite of a constant: the mutate agent's and the knobs format's.
    """
    matches = {match.group("name"): match for match in TOP_LEVEL_CONSTANT.finditer(source)}
    missing = [name for name in values if name not in matches]
    if missing:
        raise EditError(f"{missing[0]} is not a numeric constant at the top level of {filename}")
    new_source, changes, blocks = source, [], []
    for match in sorted((matches[name] for name in values), key=lambda m: m.start(), reverse=True):
        name, old_text, new_text = match.group("name"), match.group("value"), values[match.group("name")]
        if float(new_text.replace("_", "")) == float(old_text.replace("_", "")):
            continue
        line = name + match.group("eq") + new_text + match.group("rest")
        new_source = new_source[:match.start()] + line + new_source[match.end():]
        changes.insert(0, f"{name} {old_text} -> {new_text}")
        blocks.insert(0, EditBlock(filename, match.group(0) + "\n", line + "\n"))
    return new_source, changes, blocks


def blocks_between(filename: str, old: str, new: str, context: int = 2) -> list[EditBlock]:
    """SEARCH/REPLACE blocks that turn old into new (each changed stretch with `context` lines around it), so a
    whole file written back can be applied again on top of another version of it."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    blocks = []
    for group in matcher.get_grouped_opcodes(context):
        first, last = group[0], group[-1]
        search = "".join(old_lines[first[1]:last[2]])
        replace = "".join(new_lines[first[3]:last[4]])
        if not search.strip():  # a change at an empty edge: anchor it on the whole file
            search, replace = old, new
            return [EditBlock(filename, search, replace)]
        blocks.append(EditBlock(filename, _ended(search), _ended(replace)))
    return blocks


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"
