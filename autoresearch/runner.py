"""Running one training job and bringing back its log and summary.

`LocalExecutor` is the first implementation of "run one experiment somewhere": a subprocess in its
own process session, the budget handed over in the environment, output to a bounded log file (its
head and its tail are kept), and past budget + grace the whole process group is sent SIGTERM and
then SIGKILL. Other executors (a GPU of several, a cluster) keep the same `run(job)` shape.
"""

from __future__ import annotations

import math
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

SUMMARY_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*:\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|infinity))\s*$",
                          re.IGNORECASE)
LOG_HEAD_BYTES = 1_000_000
LOG_TAIL_BYTES = 1_000_000
MAX_LINE_BYTES = 64_000
KILL_WAIT_SECONDS = 3.0
TAIL_LINES = 40


@dataclass(frozen=True)
class TrainingJob:
    """What to run: the command, where, with which extra environment, for how long."""

    command: str
    cwd: Path
    log_path: Path
    budget_seconds: float
    grace_seconds: float
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainingResult:
    """What came back: exit code, whether it was killed at the limit, the summary and the log tail."""

    exit_code: int | None
    timed_out: bool
    seconds: float
    summary: dict[str, float]
    log_path: Path
    log_tail: str
    log_bytes: int = 0
    log_error: str | None = None


class Executor(Protocol):
    def run(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> TrainingResult: ...


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


def resolve_command(command: str) -> list[str]:
    """Split the recipe's command; a leading `python` means the interpreter running this tool."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


class BoundedLog:
    """Writes the head of a stream to disk as it comes and keeps a bounded tail in memory.

    The tail is appended to the file when the stream ends, after a line saying how much was left
    out, so a flood of output costs neither disk nor memory beyond the two bounds.
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

    def tail_text(self, lines: int = TAIL_LINES) -> str:
        if self._tail:
            data = b"".join(self._tail)[-64_000:]
        else:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(max(0, self._written - 64_000))
                    data = handle.read()
            except OSError:
                data = b""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class LocalExecutor:
    """Runs the training command as a subprocess on this machine."""

    def run(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> TrainingResult:
        env = {**os.environ, **job.env, "AUTORESEARCH_TIME_BUDGET": f"{job.budget_seconds:g}",
               "PYTHONUNBUFFERED": "1"}
        log = BoundedLog(job.log_path)
        started = time.monotonic()
        process = subprocess.Popen(resolve_command(job.command), cwd=job.cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        reader = _OutputReader(process.stdout.fileno(), log, on_output)
        reader.start()
        timed_out = False
        try:
            deadline = started + job.budget_seconds + job.grace_seconds
            while process.poll() is None:
                if time.monotonic() >= deadline:
                    timed_out = True
                    terminate_group(process)
                    break
                time.sleep(0.05)
        finally:
            # Always: stray children (workers, backgrounded shells) must not outlive the run.
            if process.poll() is None:
                terminate_group(process)
            kill_group(process.pid)
            reader.finish()
            process.stdout.close()
            log.close()
        return TrainingResult(
            exit_code=process.returncode,
            timed_out=timed_out,
            seconds=time.monotonic() - started,
            summary=reader.summary,
            log_path=job.log_path,
            log_tail=log.tail_text(),
            log_bytes=log.total_bytes,
            log_error=log.error,
        )


def terminate_group(process: subprocess.Popen) -> None:
    """SIGTERM to the whole group, then SIGKILL if it is still there after a short wait."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    kill_group(process.pid)
    process.wait()


def kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class _OutputReader(threading.Thread):
    """Drains the child's output into the log and watches it for summary lines."""

    def __init__(self, fd: int, log: BoundedLog, on_output: Callable[[str], None] | None):
        super().__init__(daemon=True)
        self.fd = fd
        self.log = log
        self.on_output = on_output
        self.summary: dict[str, float] = {}
        self._partial = b""
        self._stop_requested = threading.Event()

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                if self._stop_requested.is_set():
                    break
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.log.write(chunk)
            self._scan(chunk)
        if self._partial:
            self._scan(b"\n")

    def _scan(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[-MAX_LINE_BYTES:]
        last_line = None
        for raw in lines:
            if len(raw) > MAX_LINE_BYTES:
                continue
            line = raw.decode("utf-8", "replace").rstrip("\r")
            parsed = parse_summary_line(line)
            if parsed:
                self.summary[parsed[0]] = parsed[1]
            if line.strip():
                last_line = line
        if last_line is not None and self.on_output is not None:
            self.on_output(last_line)

    def finish(self) -> None:
        """Stop reading once the pipe is drained (or at once if something still holds it open)."""
        self._stop_requested.set()
        self.join(timeout=5)


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
