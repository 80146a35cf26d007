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


def parse_reply(text: str) -> ParsedReply:
    """Split a reply into its description and its edit blocks."""
    if not text or not text.strip():
        raise EditError("the reply was empty")
    lines = text.splitlines()
    description = ""
    for line in lines:
        match = DESCRIPTION_LINE.match(line)
        if match:
            description = match.group(1).strip().strip("*`").strip()
            break
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
            known = ", ".join(sorted(files))
            raise EditError(f"block {number} names {block.filename or 'no file'!r}; the files are: {known}")
        try:
            current[block.filename] = apply_block(current[block.filename], block)
        except EditError as exc:
            raise EditError(f"block {number} ({block.filename}): {exc}") from None
        changed[block.filename] = current[block.filename]
    return {name: content for name, content in changed.items() if content != files[name]}


def apply_block(content: str, block: EditBlock) -> str:
    """Apply one block to content: exact, then trailing-whitespace-blind, then indentation-shifted."""
    if not block.search.strip():
        raise EditError("the SEARCH part is empty; copy the exact lines to replace")
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
