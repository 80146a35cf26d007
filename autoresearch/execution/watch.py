"""What a running job may use, watched from outside by the executor's poll loop: its disk and its memory.

A job carries a `Watch` (plain data, so it travels with the job to where it runs); the executor
calls `Watcher.check` a few times a second with the job's processes, and stops the job at the first
reason it returns (the result's `stopped_for`; the training, or the evaluation, is then `invalid`
with that reason).

- Disk: what the job has written into its folders (its working copy and its model folder), on
  disk, against the recipe's quota (`disk_quota_mb`, the same quota as for the model folder it
  leaves); and the free space of the file system under them, which may not fall below a reserve
  (the smaller of RESERVE_BYTES and half of what was free when the job started): a training that
  writes without end, in its folders or (without the sandbox) anywhere else on that disk, is
  stopped before the disk is full, so the ledger and the logs can always be written.
- Memory: the resident memory of the job's whole process tree against a limit (the evaluation's:
  recipe.yaml `evaluation_memory_mb`). Why a watch on RSS and not an rlimit: RLIMIT_AS breaks CUDA
  (the driver reserves terabytes of address space at start), RLIMIT_DATA counts mappings CUDA and
  its allocators make and was not verified on a GPU here, and a cgroup needs systemd or root to
  delegate one. RSS is what the machine's other work loses, it is the same on CPU and GPU (GPU
  memory is not in it), and the watch needs nothing of the system. Its bound is not exact: what a
  process allocates between two samples (WATCH_SECONDS) comes on top; the archive checks of lm.py
  keep a saved model from inflating in one step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.execution.leftovers import MEGABYTE, Limits, describe_bytes, disk_usage

WATCH_SECONDS = 0.25
RESERVE_BYTES = 2 << 30  # free disk kept under a training, at most half of what was free at its start
DEFAULT_MEMORY_MB = 16384  # an evaluation whose recipe names no evaluation_memory_mb
MAX_ENTRIES = 200_000  # files a training may write into its folders while it runs


@dataclass(frozen=True)
class Watch:
    """Limits of one job while it runs: plain data."""

    folders: tuple[str, ...] = ()
    disk_bytes: int | None = None  # what the job may write into `folders`, on disk
    keep_free: bool = True  # stop it before the disk under its folders is (nearly) full
    memory_bytes: int | None = None  # resident memory of its process tree

    def start(self) -> "Watcher":
        return Watcher(self)


def training_watch(folders: tuple[Path, ...], quota_mb: float | None) -> Watch:
    return Watch(folders=tuple(str(folder) for folder in folders), disk_bytes=Limits.for_quota(quota_mb).bytes)


def evaluation_watch(memory_mb: float | None) -> Watch:
    return Watch(keep_free=False, memory_bytes=int((DEFAULT_MEMORY_MB if memory_mb is None else memory_mb) * MEGABYTE))


class Watcher:
    """A Watch applied: call `check(processes)` often; it samples at most every WATCH_SECONDS."""

    def __init__(self, watch: Watch):
        self.watch = watch
        self._next = 0.0
        self._reserve = None
        if watch.keep_free and watch.folders:
            free = free_bytes(watch.folders[0])
            self._reserve = None if free is None else min(RESERVE_BYTES, free // 2)

    def check(self, processes) -> str | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + WATCH_SECONDS
        return self._memory(processes) or self._disk()

    def _memory(self, processes) -> str | None:
        limit = self.watch.memory_bytes
        if limit is None:
            return None
        used = 0
        for process in processes:
            try:
                used += process.memory_info().rss
            except Exception:  # gone meanwhile
                continue
        if used > limit:
            return f"its processes used more than {describe_bytes(limit)} of memory ({describe_bytes(used)}); stopped"
        return None

    def _disk(self) -> str | None:
        watch = self.watch
        if watch.disk_bytes is not None and watch.folders:
            used = entries = 0
            for folder in watch.folders:
                folder_used, folder_entries = disk_usage(Path(folder), MAX_ENTRIES)
                used, entries = used + folder_used, entries + folder_entries
            if used > watch.disk_bytes:
                return (f"it wrote more than the recipe's disk quota of {describe_bytes(watch.disk_bytes)} "
                        f"({describe_bytes(used)}); stopped")
            if entries > MAX_ENTRIES:
                return f"it wrote more than {MAX_ENTRIES:,} files and folders; stopped"
        if self._reserve is not None:
            free = free_bytes(watch.folders[0])
            if free is not None and free < self._reserve:
                return (f"the disk under its folders had less than {describe_bytes(self._reserve)} free "
                        f"({describe_bytes(free)}); stopped before it was full")
        return None


def free_bytes(folder: str) -> int | None:
    try:
        info = os.statvfs(folder)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize
