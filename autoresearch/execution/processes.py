"""Finding and stopping a job's processes, wherever they went.

No process of an experiment may outlive it. A process group is not enough for that: a grandchild
that calls setsid (a shell backgrounding a daemon) leaves the group, and one whose parent exits is
re-parented away from the tree. So a job's processes are found three ways: its process group
(`find_group`), every descendant seen while it ran (`ProcessTree`, sampled a few times a second),
and every process carrying the job's marker in its environment (`find_marked_processes`), which
children inherit whatever they do to their session or parent. `stop_processes` sends them SIGTERM,
then SIGKILL after a short wait. What a killed tool left behind is found by the run's marker when
the run is resumed (`stop_processes_marked`).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable

import psutil

KILL_WAIT_SECONDS = 3.0  # between SIGTERM and SIGKILL


class ProcessTree:
    """Every descendant of one process seen so far (kept even after it leaves the tree)."""

    def __init__(self, pid: int):
        try:
            self.root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.root = None
        self.seen: set[psutil.Process] = set()

    def sample(self) -> None:
        if self.root is None:
            return
        try:
            self.seen.update(self.root.children(recursive=True))
        except psutil.Error:
            pass

    def members(self) -> set[psutil.Process]:
        found = set(self.seen)
        if self.root is not None:
            found.add(self.root)
        return found


def find_marked_processes(name: str, value: str) -> set[psutil.Process]:
    """This user's processes whose environment has name=value (children inherit it wherever they go)."""
    found = set()
    me = os.getuid()
    for process in psutil.process_iter(["uids"]):
        try:
            if process.pid == os.getpid() or process.info["uids"] is None or process.info["uids"].real != me:
                continue
            if process.environ().get(name) == value:
                found.add(process)
        except (psutil.Error, OSError):
            continue
    return found


def find_group(pgid: int) -> set[psutil.Process]:
    """The processes of one process group."""
    found = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.pid != os.getpid():
                found.add(process)
        except (psutil.Error, OSError):
            continue
    return found


def stop_processes(processes: Iterable[psutil.Process], wait_seconds: float = KILL_WAIT_SECONDS,
                   also_group: int | None = None) -> list[psutil.Process]:
    """SIGTERM to each (and to the group), SIGKILL to whatever is left after wait_seconds.

    Returns the processes that were still alive after SIGKILL and a last short wait (normally none).
    """
    alive = [p for p in processes if is_alive(p)]
    if also_group is not None:
        _signal_group(also_group, signal.SIGTERM)
    for process in alive:
        _send(process, signal.SIGTERM)
    alive = _wait_gone(alive, wait_seconds)
    if also_group is not None:
        _signal_group(also_group, signal.SIGKILL)
    for process in alive:
        _send(process, signal.SIGKILL)
    return _wait_gone(alive, KILL_WAIT_SECONDS)


def stop_processes_marked(name: str, value: str, wait_seconds: float = KILL_WAIT_SECONDS) -> int:
    """Stop every process carrying name=value in its environment; returns how many there were."""
    found = find_marked_processes(name, value)
    stop_processes(found, wait_seconds)
    return len(found)


def is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no memory, no GPU and no pipe)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    alive = [p for p in processes if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
