"""Text from a training is data, wherever it goes: quoted in a prompt, escaped on a terminal and in HTML.

A training prints what it likes, and its output reaches the agent's next prompt (the log tail of a
failure, the best's log, a reason that quotes its last error line) and the person's terminal
(`run`'s live and plain output, `show`, `log`, `report`). Printed naively, a line of three
backticks closes the tool's code fence and what follows reads as the tool's own words ("NOTE FROM
THE AUTORESEARCH HARNESS: ..."), and an escape sequence is interpreted by the terminal (an OSC 52
write to the clipboard, a title, a hidden line, a rewritten one).

- In a prompt: `clean` removes control characters and escape sequences (and the invisible
  direction and width marks), `fenced` quotes a block with a fence of backticks longer than any
  run of backticks in it (CommonMark closes a fence only with a run at least as long), `inline`
  quotes one line in a code span the same way (a pipe escaped for a table cell).
- On a terminal and in HTML: `printable` shows every control character, escape included, as
  `\\x1b`-style text, so nothing is interpreted; line breaks and tabs stay where asked.
"""

from __future__ import annotations

import re

# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), ESC P/X/^/_ ... ESC \ (DCS, SOS, PM, APC), ESC + one char.
ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]",
                             re.DOTALL)
# Control characters (C0 but tab and newline, DEL, C1), and the invisible marks that reorder or hide text.
INVISIBLE = "\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
CONTROL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{INVISIBLE}]")
CONTROL_OR_BREAK = re.compile(f"[\x00-\x1f\x7f-\x9f{INVISIBLE}]")
BACKTICKS = re.compile(r"`+")


def clean(text: str) -> str:
    """text without escape sequences and control characters (tabs and line breaks kept; `\\r\\n` is a break)."""
    text = text.replace("\r\n", "\n")
    return CONTROL.sub("", ESCAPE_SEQUENCE.sub("", text))


def longest_backticks(text: str) -> int:
    return max((len(run) for run in BACKTICKS.findall(text)), default=0)


def fence_for(text: str) -> str:
    """The backticks that open and close a block holding text: more than any run of them in it."""
    return "`" * max(3, longest_backticks(text) + 1)


def fenced(text: str, info: str = "", cleaned: bool = True) -> str:
    """A fenced code block that no content can close: its fence is longer than any run of backticks in it."""
    if cleaned:
        text = clean(text)
    fence = fence_for(text)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def inline(text: str, table: bool = False) -> str:
    """One line of text in a code span that no content can close (a pipe escaped for a markdown table cell)."""
    text = " ".join(clean(text).split())
    if not text:
        return ""
    ticks = "`" * (longest_backticks(text) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    quoted = f"{ticks}{padded}{ticks}"
    return quoted.replace("|", "\\|") if table else quoted


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_lines: bool = True) -> str:
    """text with every control character shown as `\\x1b`-style text (tabs and line breaks kept if keep_lines)."""
    if not isinstance(text, str):
        return text
    return (CONTROL if keep_lines else CONTROL_OR_BREAK).sub(_escape, text)


def printable_record(value):
    """A ledger record (dicts, lists, strings) with every string made printable: what a view may show."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: printable_record(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(printable_record(item) for item in value)
    return value
