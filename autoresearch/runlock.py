"""One process per run: an advisory lock on runs/<tag>/lock, held while the run goes on.

The kernel drops the lock when its holder dies, however it dies (kill -9 included), so a resume
after a crash never finds a stale lock, and a resume while the run is still going on in another
terminal is refused with the other process's pid instead of two loops fighting over one branch.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from autoresearch.errors import UserError

LOCK_FILE = "lock"


class RunLock:
    """Held from `acquire` until `release` or the end of the process."""

    def __init__(self, run_dir: Path, tag: str):
        self.path = Path(run_dir) / LOCK_FILE
        self.tag = tag
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"run {self.tag} is going on in another process (pid {holder}); stop it first, "
                            "or wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
