"""What every fault test needs: a faulty proposal, the invariants, and the tool as a real process.

A fault is injected the way it would arrive overnight: the (fake, HTTP) agent proposes a change to
the synthetic recipe's train.py that misbehaves. Then a good change follows, to show the run went on.
The invariants after any fault: the branch is at the best kept commit, every experiment's commit is
reachable under its ref, the worktree is clean, and no process of the run is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import KILL_WAIT, RecordingReporter, git, reply  # noqa: F401 (the tests import them from here too)

from autoresearch.ledger import Ledger, best_row

TAG = "t"
EVALUATE_LINE = "save_model(LEARNING_RATE, WIDTH)"
BETTER = reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")


def inject(description: str, code: str) -> str:
    """A reply that adds top-level code to train.py just before its evaluation."""
    return reply(description, EVALUATE_LINE, f"{code.strip()}\n{EVALUATE_LINE}")


def resume_with(run_loop, script: list, max_experiments: int = 1, **options):
    """Go on with run `t` for `max_experiments` more experiments, small limits; returns (loop, its experiment rows)."""
    loop = run_loop.make(script, small=True)
    done = sum(row["outcome"] not in ("running", "interrupted") for row in loop.ledger.experiments(TAG))
    loop, rows, _ = run_loop(loop=loop, resume=True, small=True, tag=TAG, max_experiments=done + max_experiments,
                             **options)
    return loop, rows


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pids_with_cmdline(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read() and alive(int(name)):
                        found.append(int(name))
            except OSError:
                pass
    return found


def run_processes(workspace: Path, tag: str = TAG) -> list[int]:
    """Live processes whose environment says they belong to the run (training and all it spawned)."""
    marker = f"AUTORESEARCH_RUN={(workspace / 'runs' / tag).resolve()}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if marker in handle.read().split(b"\0") and alive(int(name)):
                        found.append(int(name))
            except OSError:
                pass
    return found


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def best_kept(workspace: Path, rows: list[dict], tag: str = TAG) -> dict | None:
    """The run's best row, by the ledger's own pointer; every kept commit is in its history (no keep
    dropped another's change, whatever order experiments in flight at once ended in)."""
    ledger = Ledger(workspace / "runs/ledger.db")
    try:
        run = ledger.run(tag)
    finally:
        ledger.close()
    kept = [row for row in rows if row["outcome"] == "keep"]
    best = best_row(run, kept)
    for row in kept:
        assert subprocess.run(["git", "merge-base", "--is-ancestor", row["commit_sha"], best["commit_sha"]],
                              cwd=workspace).returncode == 0, f"kept experiment {row['number']} was dropped"
    return best


def assert_consistent(workspace: Path, rows: list[dict], tag: str = TAG) -> None:
    """The invariants every fault must leave intact."""
    kept = [row for row in rows if row["outcome"] == "keep"]
    assert kept, "the baseline is kept"
    best = best_kept(workspace, rows, tag)
    assert git(workspace, "rev-parse", f"autoresearch/{tag}") == best["commit_sha"]
    assert all(row["outcome"] != "running" for row in rows)
    assert [row["number"] for row in rows] == list(range(len(rows)))
    base_commit = rows[0]["commit_sha"]  # the baseline's
    for row in rows[1:]:
        if row["commit_sha"] and row["commit_sha"] != base_commit:
            assert git(workspace, "rev-parse", f"refs/autoresearch/{tag}/{row['number']}") == row["commit_sha"]
    worktree = workspace / "runs" / tag / "worktree"
    assert git(worktree, "status", "--porcelain", "--untracked-files=no") == ""
    assert git(worktree, "rev-parse", "HEAD") == best["commit_sha"]
    assert run_processes(workspace, tag) == []


# --- the tool as a person runs it: a real process, stopped with real signals

CLI = "from autoresearch.cli import app; app()"


def as_a_terminal_job() -> None:
    """Signal dispositions of a job started at an interactive shell. Tests launched as a background
    job of a non-interactive shell (`nohup ... &`) inherit SIGINT ignored, and an ignored signal
    stays ignored in the tool by design; the Ctrl-C tests must not depend on how pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class ToolProcess:
    """`autoresearch ARGS` in its own session (as a shell job), its stderr collected in a file."""

    def __init__(self, workspace: Path, *args: str, env: dict[str, str] | None = None, ignore_sighup: bool = False):
        self.stderr_path = workspace.parent / f"tool-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "wb")
        # nohup starts its command with SIGHUP ignored; so does this, when asked
        command = f"import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); {CLI}" if ignore_sighup else CLI
        self.process = subprocess.Popen([sys.executable, "-c", command, *args], cwd=workspace,
                                        env={**os.environ, "COLUMNS": "200", **(env or {})},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                        start_new_session=True, preexec_fn=as_a_terminal_job)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, seconds: float = 20.0) -> bool:
        return wait_until(lambda: text in self.stderr() or self.process.poll() is not None, seconds) \
            and text in self.stderr()

    def interrupt(self) -> None:
        """Ctrl-C at a terminal: SIGINT to the foreground job (the tool and any git it runs)."""
        os.killpg(self.process.pid, signal.SIGINT)

    def kill(self, whole_group: bool = False) -> None:
        """kill -9 of the tool (or of its whole job, git children included)."""
        if whole_group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.send_signal(signal.SIGKILL)

    def wait(self, seconds: float = 30.0) -> int:
        try:
            return self.process.wait(timeout=seconds)
        finally:
            self._stderr.close()


def tool_env(fake_llm) -> dict[str, str]:
    return {"OPENAI_BASE_URL": fake_llm.base_url, "OPENAI_API_KEY": "test"}


RUN_FLAGS = ("--noise-runs", "0", "--confirm-runs", "0", "--agent-backoff", "0.01", "--model", "fake-model")
