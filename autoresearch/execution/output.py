"""A training's output as the harness keeps it: a bounded log, and the `name: value` summary lines in it.

A training's output is hostile input: it may print without end, in lines of any length. `BoundedLog`
writes the head of the stream to disk as it comes and keeps a bounded tail in memory (a flood of
output costs neither disk nor memory); `parse_summary_line` reads one `name: value` line with a
numeric value, `parse_summary` every such line of a text. They are information for the person and
the agent, never the metric.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

SUMMARY_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*:\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|infinity))\s*$",
                          re.IGNORECASE)
LOG_HEAD_BYTES = 1_000_000
LOG_TAIL_BYTES = 1_000_000
MAX_LINE_BYTES = 64_000  # a longer line is never a summary line
TAIL_LINES = 40
TAIL_CHARS = 8_000


def parse_summary_line(line: str) -> tuple[str, float] | None:
    """`name: value` with a numeric value (nan and inf included), else None."""
    match = SUMMARY_LINE.match(line)
    if not match:
        return None
    return match.group(1), float(match.group(2))


def parse_summary(text: str) -> dict[str, float]:
    """Every `name: value` line of text; the last occurrence of a name wins."""
    summary: dict[str, float] = {}
    for line in text.splitlines():
        parsed = parse_summary_line(line)
        if parsed:
            summary[parsed[0]] = parsed[1]
    return summary


class BoundedLog:
    """Writes the head of a stream to disk as it comes and keeps a bounded tail in memory.

    The tail is appended to the file when the stream ends, after a line saying how much was left
    out, so a flood of output costs neither disk nor memory beyond the two bounds. A log that cannot
    be written (a full disk) is reported in `error`; the stream is still read and its tail kept.
    """

    def __init__(self, path: Path, head_bytes: int = LOG_HEAD_BYTES, tail_bytes: int = LOG_TAIL_BYTES):
        self.path = path
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.total_bytes = 0
        self.error: str | None = None
        self._written = 0
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")
        except OSError as exc:
            self._file = None
            self.error = f"cannot write the log: {exc.strerror or exc}"

    def write(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        room = self.head_bytes - self._written
        if room > 0:
            self._write_file(chunk[:room])
            self._written += min(room, len(chunk))
            chunk = chunk[room:]
        if chunk:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self._tail[0]) >= self.tail_bytes:
                self._tail_size -= len(self._tail.popleft())

    def _write_file(self, data: bytes) -> None:
        if self._file is None or not data:
            return
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            self.error = f"cannot write the log: {exc.strerror or exc}"
            self._close_quietly()

    def close(self) -> None:
        if self._tail:
            tail = b"".join(self._tail)[-self.tail_bytes:]
            omitted = self.total_bytes - self._written - len(tail)
            if omitted > 0:
                self._write_file(f"\n[autoresearch: {omitted} bytes of output left out here]\n".encode())
            self._write_file(tail)
        self._close_quietly()

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def tail_text(self, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
        """The last lines of the stream (at most `chars` characters), from memory or the file."""
        if self._tail:
            data = b"".join(self._tail)[-64_000:]
        else:
            data = self._head_end()
        text = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
        return text[-chars:]

    def _head_end(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(max(0, self._written - 64_000))
                return handle.read(64_000)
        except OSError:
            return b""
