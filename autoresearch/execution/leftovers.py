"""What a training leaves behind, read with bounds: its model folder and its working folder are hostile input.

The training is untrusted code, and so is every file it leaves. The tool hashes the model folder,
checks that a model is there, removes the folders afterwards and watches how much disk they fill
while the training runs; done naively, each of those is an attack surface of the tool itself:

- a sparse file of terabytes (no disk used) makes a hash run for hours;
- a symbolic link to `/proc/self/pagemap` (or to any file of the tool's user) makes the tool read
  its own memory, or a secret, in its own process;
- a FIFO or a device blocks a read for ever;
- a thousand nested folders make a recursive walk (`Path.rglob`, `shutil.rmtree` before Python 3.12)
  raise RecursionError in the tool, which ends the run.

So every walk here is iterative, goes through file descriptors relative to their parent folder
(`O_NOFOLLOW`, so no path is resolved through a link, and a path longer than PATH_MAX does not
matter), never follows a link, and stops at the first thing out of bounds, from `lstat` alone
(no byte of a file is read to find it): a link, a special file (device, FIFO, socket), more than
`Limits.entries` entries, a folder deeper than `Limits.depth`, more than `Limits.bytes` in all, by
apparent size (what a read would return) or on disk (what it occupies). `survey` says what is
there or why it is refused; `digest` hashes only what a survey accepted, each file opened with
`O_NOFOLLOW` and checked again to be the regular file of that size; `remove_tree` removes any
tree, whatever its depth, without recursion (folders too deep are moved up to the top first).
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MEGABYTE = 1 << 20
DEFAULT_QUOTA_MB = 4096  # a recipe that names no disk_quota_mb
MAX_ENTRIES = 10_000  # files and folders of one model folder
MAX_DEPTH = 16  # nested folders below the model folder
READ_BLOCK = 1 << 20
# Open flags for a folder or a file of the training's: never through a link, never blocking on a FIFO.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
FLATTEN_DEPTH = 32  # remove_tree moves folders deeper than this up to the top, so it never holds more fds


@dataclass(frozen=True)
class Limits:
    """How much a training may leave: bytes (apparent and on disk), entries, depth of folders."""

    bytes: int = DEFAULT_QUOTA_MB * MEGABYTE
    entries: int = MAX_ENTRIES
    depth: int = MAX_DEPTH

    @classmethod
    def for_quota(cls, quota_mb: float | None) -> "Limits":
        return cls(bytes=int((DEFAULT_QUOTA_MB if quota_mb is None else quota_mb) * MEGABYTE))


@dataclass
class Survey:
    """What a folder holds, from lstat alone; `problem` says why it is refused (None: within its limits)."""

    files: list[tuple[str, int]] = field(default_factory=list)  # (path relative to the folder, size), sorted
    apparent_bytes: int = 0
    disk_bytes: int = 0
    entries: int = 0
    exists: bool = True
    problem: str | None = None

    @property
    def has_files(self) -> bool:
        return bool(self.files)


def kind_of(mode: int) -> str:
    """What a special file is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def describe_bytes(count: int) -> str:
    if count >= 1 << 40:
        return f"{count / (1 << 40):.1f} TiB"
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    return f"{count / MEGABYTE:.1f} MiB"


def walk(folder: Path, max_depth: int) -> Iterator[tuple[str, os.stat_result, int]]:
    """Every entry below `folder`, depth first, as (its path relative to the folder, its lstat, its depth).

    Iterative, through descriptors relative to their parent (one open folder per level), never through a
    link; a folder deeper than max_depth is yielded but not entered; an entry that vanished meanwhile is
    skipped. Raises OSError when `folder` is not a folder that can be opened, or a folder in it cannot be.
    Closing the generator early closes every descriptor.
    """
    root = os.open(folder, DIR_FLAGS)
    stack: list[tuple[int, object, str, int]] = [(root, os.scandir(root), "", 0)]
    try:
        while stack:
            fd, entries, prefix, depth = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(fd)
                stack.pop()
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                yield prefix + entry.name, info, depth + 1
                if stat.S_ISDIR(info.st_mode) and depth + 1 <= max_depth:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                    stack.append((child, os.scandir(child), prefix + entry.name + "/", depth + 1))
            except FileNotFoundError:
                continue
    finally:
        for fd, entries, _, _ in stack:
            entries.close()
            os.close(fd)


def survey(folder: Path, limits: Limits = Limits()) -> Survey:
    """Walk `folder` (never a link, never deeper than limits.depth) and add up what it holds.

    Stops at the first thing out of bounds and says what it is in `problem`; reads no file.
    """
    found = Survey()
    try:
        os.close(os.open(folder, DIR_FLAGS))
    except FileNotFoundError:
        found.exists = False
        return found
    except OSError as exc:
        found.problem = f"cannot be opened as a folder ({exc.strerror or exc}: a link, or not a folder)"
        return found
    entries = walk(folder, limits.depth)
    try:
        for relative, info, depth in entries:
            found.entries += 1
            if found.entries > limits.entries:
                found.problem = f"holds more than {limits.entries:,} files and folders"
            elif stat.S_ISDIR(info.st_mode):
                if depth > limits.depth:
                    found.problem = f"nests folders deeper than {limits.depth} levels ({relative[:60]}...)"
            elif stat.S_ISREG(info.st_mode):
                found.files.append((relative, info.st_size))
                found.apparent_bytes += info.st_size
                found.disk_bytes += getattr(info, "st_blocks", 0) * 512
                if found.apparent_bytes > limits.bytes or found.disk_bytes > limits.bytes:
                    size = max(found.apparent_bytes, found.disk_bytes)
                    found.problem = (f"holds more than the recipe's disk quota of {describe_bytes(limits.bytes)} "
                                     f"({describe_bytes(size)} or more with {relative[:120]})")
            else:
                found.problem = f"holds {kind_of(info.st_mode)} ({relative[:120]}): only plain files and folders are read"
            if found.problem:
                break
    except OSError as exc:
        found.problem = f"cannot be read ({exc.strerror or exc})"
    finally:
        entries.close()
    found.files.sort()
    return found


def open_file(folder: Path, relative: str) -> int:
    """A descriptor of the regular file `relative` below `folder`, opened without following any link."""
    parts = relative.split("/")
    fd = os.open(folder, DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        handle = os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise OSError(f"{relative} is not a regular file")
    return handle


def digest(folder: Path, found: Survey) -> tuple[int, str]:
    """(bytes, sha256) of the files a survey accepted, in name order: at most the survey's sizes are read."""
    sha = hashlib.sha256()
    total = 0
    for relative, size in found.files:
        sha.update(relative.encode() + b"\0")
        handle = open_file(folder, relative)
        try:
            left = min(size, os.fstat(handle).st_size)
            while left > 0:
                block = os.read(handle, min(READ_BLOCK, left))
                if not block:
                    break
                sha.update(block)
                total += len(block)
                left -= len(block)
        finally:
            os.close(handle)
    return total, sha.hexdigest()


def read_file(folder: Path, relative: str, max_bytes: int) -> bytes:
    """A file of the training's, at most max_bytes of it (OSError when it is larger, a link or not a file)."""
    handle = open_file(folder, relative)
    try:
        size = os.fstat(handle).st_size
        if size > max_bytes:
            raise OSError(f"{relative} holds {describe_bytes(size)}, more than {describe_bytes(max_bytes)}")
        chunks, left = [], size
        while left > 0:
            block = os.read(handle, min(READ_BLOCK, left))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)
    finally:
        os.close(handle)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it, whatever it holds: no recursion, no link followed, errors ignored.

    A folder deeper than FLATTEN_DEPTH below `path` is moved up to `path` itself under a fresh name
    and removed in a later pass, so a thousand nested folders (or a tree deeper than PATH_MAX) cost
    no more descriptors than FLATTEN_DEPTH. A folder the training made unwritable is made writable.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(info.st_mode):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    try:
        os.chmod(path, 0o700)
        root = os.open(path, DIR_FLAGS)
    except OSError:
        return
    try:
        visited: set[tuple[int, int]] = set()
        while _removal_pass(root, visited):
            pass
    finally:
        os.close(root)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _removal_pass(root: int, visited: set[tuple[int, int]]) -> bool:
    """One depth-first pass of remove_tree; True when it moved folders up to the top (another pass is due)."""
    moved = False
    stack: list[tuple[int, object, str | None]] = []
    try:
        stack.append((root, os.scandir(root), None))
        while stack:
            fd, entries, name = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                stack.pop()
                if stack:
                    os.close(fd)
                    try:  # emptied now
                        os.rmdir(name, dir_fd=stack[-1][0])
                    except OSError:
                        pass
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir:
                    os.unlink(entry.name, dir_fd=fd)
                    continue
                try:
                    os.rmdir(entry.name, dir_fd=fd)  # already empty: gone at once
                    continue
                except OSError:
                    pass
                if len(stack) > FLATTEN_DEPTH:  # move it up: the tree gets shallower, the stack no deeper
                    os.rename(entry.name, f".removing-{uuid.uuid4().hex}", src_dir_fd=fd, dst_dir_fd=root)
                    moved = True
                    continue
                info = entry.stat(follow_symlinks=False)
                if (info.st_dev, info.st_ino) in visited:
                    continue  # could not be emptied before; nothing more to try
                visited.add((info.st_dev, info.st_ino))
                os.chmod(entry.name, 0o700, dir_fd=fd)
                child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            stack.append((child, os.scandir(child), entry.name))
    except OSError:
        pass
    finally:
        for fd, entries, _ in stack:
            entries.close()
            if fd != root:
                os.close(fd)
    return moved


def disk_usage(folder: Path, max_entries: int = MAX_ENTRIES * 10, max_depth: int = 64) -> tuple[int, int]:
    """(bytes on disk, entries) of what a running training has written under `folder`, links and specials not counted.

    Stops counting at max_entries (the caller treats that as over) and does not descend past max_depth (the
    survey after the training refuses that); a folder it cannot read ends the count with what it has.
    """
    used = entries = 0
    try:
        found = walk(folder, max_depth)
        try:
            for _, info, _ in found:
                entries += 1
                if entries > max_entries:
                    break
                if stat.S_ISREG(info.st_mode):
                    used += getattr(info, "st_blocks", 0) * 512
        finally:
            found.close()
    except OSError:
        pass
    return used, entries
