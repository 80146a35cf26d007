"""The sandbox a training runs in: a bubblewrap command line and the GPU device nodes.

The training is untrusted code, so it runs under bubblewrap (`bwrap`, Linux namespaces, no root
needed). `sandbox_argv(spec, argv)` returns `["bwrap", ..., "--", *argv]`; the caller starts it as it
would have started argv, with the environment it would have given argv (bwrap hands its own
environment to the command unchanged, so the runner's allowlist stays the only filter).

What the sandboxed command gets:
- a read-only view of the machine (`--ro-bind / /`), with every capability dropped (as root, bwrap
  would otherwise leave them all, and root with CAP_SYS_ADMIN can unmount what hides a folder);
- its own namespaces: PID (it cannot see or signal the tool), network (no network at all, loopback
  included, unless `network`), IPC, UTS, cgroup where possible, and a user namespace in which it
  cannot make another (`--disable-userns`, bubblewrap 0.8 or newer; `block_nested_userns=False`
  leaves that out for an older bwrap);
- a fresh /proc, a minimal /dev of its own (null, zero, random, tty, an empty /dev/shm, ...) with
  `devices` bound after it, and empty scratch folders of its own at /tmp and /run (/run holds the
  host's sockets: dbus, systemd, databases; a read-only mount does not stop connect() on a socket);
- `--new-session` (it cannot push input into the tool's terminal) and `--die-with-parent`.

Layers, applied in this order (bwrap mounts later arguments on top of earlier ones):
1. the base above: `/` read-only, /dev, the devices, /proc, /tmp, /run;
2. every path of the spec, from the shallowest to the deepest, so that **the innermost listed path
   decides**: `hidden` paths and `home` are hidden (a folder becomes an empty tmpfs, writable scratch
   inside the sandbox only; any other file is covered by /dev/null on a nodev mount, so opening it
   fails with "Permission denied"); `interpreter` and `readable` paths are bound read-only;
   `workdir` and `writable` are bound read-write. So a readable file inside a hidden folder is
   readable, an interpreter under a hidden $HOME or workspace still runs, and a hidden folder
   inside the interpreter's folders (the standard library's test/ used as held-out data) is hidden
   again. A path listed in two roles takes the more protective one: hidden, then read-only, then
   writable.

Paths are resolved (os.path.realpath, relative to the current folder) before they are bound, so a
hidden symlink hides its target, and a folder reached through a link is bound at its real place.
Paths that do not exist when the command line is built are skipped (build it just before starting
the training). `/` can only be read-only. The other entries of sys.path (an editable install's
source folder, which here is the workspace itself) are not re-exposed: list them in `readable`.

With the runner, wrap the whole command: `with_parent_death_signal(sandbox_argv(spec, argv))`. The
launcher sets PR_SET_PDEATHSIG and execs bwrap, which keeps it (bwrap is not setuid on current
distributions; where it is, exec clears it, and bwrap's own --die-with-parent still ties it to the
tool); --die-with-parent then carries the kill to everything inside, so `kill -9` of the tool leaves
nothing of the sandbox alive.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

BWRAP = "bwrap"
GPU_DEVICE_PATTERNS = ("nvidia*", "nvidia-caps/*", "dri/*", "kfd")  # NVIDIA, DRM render nodes, AMD ROCm

HIDDEN = "hidden"
READ_ONLY = "read-only"
WRITABLE = "writable"
_PROTECTION_ORDER = (HIDDEN, READ_ONLY, WRITABLE)  # on a path listed twice, the first role wins


class SandboxError(Exception):
    """A sandbox that cannot be built as asked (no workdir, an empty command, hiding or writing /)."""


def interpreter_paths() -> tuple[Path, ...]:
    """What this Python needs to run and import: its prefixes, its real executable's folder, site-packages."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    candidates += [entry for entry in sys.path if os.path.basename(entry) in ("site-packages", "dist-packages")]
    resolved = dict.fromkeys(Path(os.path.realpath(path)) for path in candidates if path)
    return tuple(resolved)


@dataclass(frozen=True)
class SandboxSpec:
    """What the sandboxed command may see and change; every path is resolved when the argv is built."""

    workdir: Path  # read-write, and the command's current folder: a fresh copy of the recipe
    writable: tuple[Path, ...] = ()  # more read-write folders (where the model is saved)
    readable: tuple[Path, ...] = ()  # read-only, even inside a hidden folder (the training split)
    hidden: tuple[Path, ...] = ()  # never visible: the workspace root, the held-out data and its sources
    devices: tuple[Path, ...] = ()  # device nodes bound into the minimal /dev (gpu_devices())
    network: bool = False
    home: Path | None = field(default_factory=Path.home)  # hidden as a whole (~/.ssh, ~/.netrc, tokens)
    interpreter: tuple[Path, ...] = field(default_factory=interpreter_paths)  # read-only, even when hidden
    block_nested_userns: bool = True  # needs bubblewrap 0.8; False for an older one


def sandbox_argv(spec: SandboxSpec, argv: Sequence[str], bwrap: str = BWRAP) -> list[str]:
    """The bwrap command line that runs argv in the sandbox `spec` describes."""
    if not argv:
        raise SandboxError("the command to sandbox is empty")
    workdir = _resolve(spec.workdir)
    if not workdir.is_dir():
        raise SandboxError(f"the sandbox's workdir is not a folder: {spec.workdir}")
    args = [bwrap, "--unshare-all"]
    if spec.network:
        args.append("--share-net")
    if spec.block_nested_userns:
        args += ["--unshare-user", "--disable-userns"]
    args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev"]
    for device in spec.devices:
        node = _resolve(device)
        if node.exists():
            args += ["--dev-bind", str(node), str(node)]
    args += ["--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for path, role in _layers(spec, workdir):
        args += _mount_args(path, role)
    return [*args, "--chdir", str(workdir), "--", *argv]


def gpu_devices(dev: Path = Path("/dev")) -> tuple[Path, ...]:
    """The GPU device nodes under dev that exist: /dev/nvidia*, nvidia-caps/*, dri/*, kfd (folders left out)."""
    found = {node for pattern in GPU_DEVICE_PATTERNS for node in dev.glob(pattern) if not node.is_dir()}
    return tuple(sorted(found))


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _layers(spec: SandboxSpec, workdir: Path) -> list[tuple[Path, str]]:
    """Each existing path of the spec with its role, shallowest first, one role per path."""
    roles: dict[Path, str] = {}
    wanted = [(path, HIDDEN) for path in ([spec.home] if spec.home is not None else [])]
    wanted += [(path, HIDDEN) for path in spec.hidden]
    wanted += [(path, READ_ONLY) for path in (*spec.interpreter, *spec.readable)]
    wanted += [(path, WRITABLE) for path in (workdir, *spec.writable)]
    for path, role in wanted:
        real = _resolve(path)
        if not real.exists():
            continue
        current = roles.get(real)
        if current is None or _PROTECTION_ORDER.index(role) < _PROTECTION_ORDER.index(current):
            roles[real] = role
    root = Path("/")
    if roles.get(root) in (HIDDEN, WRITABLE):
        raise SandboxError(f"the sandbox cannot make / {roles[root]}")
    # A read-only / again would bind the host's root over the base's fresh /dev, /proc and /tmp.
    roles.pop(root, None)
    return sorted(roles.items(), key=lambda item: (len(item[0].parts), str(item[0])))


def _mount_args(path: Path, role: str) -> list[str]:
    if role == HIDDEN:
        return ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return ["--ro-bind" if role == READ_ONLY else "--bind", str(path), str(path)]
