"""Advisory locks held while a run goes on: one on the run, one on the workspace's machine.

The kernel drops a lock when its holder dies, however it dies (kill -9 included), so a resume
after a crash never finds a stale lock.

- `RunLock` (runs/<tag>/lock): one process per run. A resume (or a verify) while the run is still
  going on in another terminal is refused with the other process's pid, instead of two loops
  fighting over one branch.
- `WorkspaceLock` (runs/training.lock): one training run per workspace. Two runs of one workspace
  (two tags) would train at once and fight over the same GPU or CPU cores, which ruins both runs'
  timings and noise floors; a second one is refused with a line naming the first, unless the
  person asks for it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from autoresearch.errors import LockHeld, WorkspaceBusy

LOCK_FILE = "lock"
WORKSPACE_LOCK_FILE = "training.lock"


class _FileLock:
    """An exclusive flock on one file, which holds a line saying who holds it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def _acquire(self, holder: str) -> str | None:
        """Take the lock and write holder into it; when it is taken, return what its holder wrote."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return other
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunLock(_FileLock):
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, run_dir: Path, tag: str):
        super().__init__(Path(run_dir) / LOCK_FILE)
        self.tag = tag

    def acquire(self) -> "RunLock":
        holder = self._acquire(str(os.getpid()))
        if holder is not None:
            raise LockHeld(f"run {self.tag} is going on in another process (pid {holder}); stop it first, "
                           "or wait for it to finish", holder)
        return self


class WorkspaceLock(_FileLock):
    """Held by the process that trains in a workspace (a run, or a verify)."""

    def __init__(self, runs_dir: Path):
        super().__init__(Path(runs_dir) / WORKSPACE_LOCK_FILE)

    def acquire(self, what: str) -> "WorkspaceLock":
        """`what` names the holder for the person who is refused: `run dec01`, `verify of run dec01`."""
        holder = self._acquire(f"{what} (pid {os.getpid()})")
        if holder is not None:
            raise WorkspaceBusy(f"{holder} is training in this workspace; a second one would fight it for the "
                                "machine and spoil both runs' timings: wait for it or stop it", holder)
        return self
