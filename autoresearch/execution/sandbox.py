"""The sandbox a training runs in: whether a run uses one, what each job may see, and bubblewrap.

`--sandbox auto|on|off` (settings.RunOptions.sandbox): `auto` probes bubblewrap when a run starts
(`probe`: it runs a small command in a sandbox built the same way and checks that it holds) and
uses it when the check passes, else says in one line what protection is missing and goes on; `on`
refuses to start without it; `off` never uses it (`choose_sandbox`). The level in force is recorded
per run and per training run.

With the sandbox (`SandboxPolicy`), a training sees the machine read-only, its fresh copy and its
model folder writable, the data the recipe's prepare step showed, and nothing of the workspace (the
ledger, runs/, .git, program.md, the person's checkout), of the home folder, or of what the prepare
step hid (the held-out data and the files it is made from). The harness's evaluation runs sandboxed
too, without network and without the workspace, but it reads the held-out data and the model.

How a sandbox is built: a bubblewrap command line, the GPU device nodes, and a probe.

The training is untrusted code, so it runs under bubblewrap (`bwrap`, Linux namespaces, no root
needed). `sandbox_argv(spec, argv)` returns `["bwrap", ..., "--", *argv]`; the caller starts it as it
would have started argv, with the environment it would have given argv (bwrap hands its own
environment to the command unchanged, so the local executor's allowlist stays the only filter).

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

The local executor wraps the whole command: `with_parent_death_signal(sandbox_argv(spec, argv))`. The
launcher stays bwrap's parent and, told by the kernel that the tool died, kills every process with
the job's marker (bwrap keeps the caller's environment): bwrap's own parent-death signal is not
enough, since at its start its credentials change before it asks for its own, and a tool killed in
those milliseconds left a sandbox running. bwrap dies with the launcher (PR_SET_PDEATHSIG before
its exec) and --die-with-parent carries that to everything inside, so `kill -9` of the tool leaves
nothing of the sandbox alive.

`probe()` runs one small command in a sandbox built the same way and checks that it really holds;
it takes about 0.03 s (median 0.029 s, slowest 0.043 s of 20 calls, measured on 2 shared cores with
Python 3.11 and bubblewrap 0.8, the interpreter's files already in the page cache).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence

from autoresearch.errors import InvalidSetting

BWRAP = "bwrap"
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"
PROBE_TIMEOUT_SECONDS = 10.0
GPU_DEVICE_PATTERNS = ("nvidia*", "nvidia-caps/*", "dri/*", "kfd")  # NVIDIA, DRM render nodes, AMD ROCm
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # recipes' fixed files may import the harness's own library

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


@dataclass(frozen=True)
class SandboxProbe:
    """Whether the sandbox works here; `problem` says in one line what protection is missing and why."""

    available: bool
    level: str  # "bubblewrap" or "none"
    problem: str | None
    seconds: float
    bwrap: str | None  # the bwrap that was run, None when none was found


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


def relocated(spec: SandboxSpec, moves: dict[Path, Path]) -> SandboxSpec:
    """The same sandbox for a job that runs on another machine (a Ray node): each path of `moves` at its
    new place there, and that machine's own interpreter, home folder and GPU device nodes."""
    def moved(paths):
        return tuple(moves.get(Path(path), Path(path)) for path in paths)

    return replace(spec, workdir=moves.get(Path(spec.workdir), Path(spec.workdir)), writable=moved(spec.writable),
                   readable=moved(spec.readable), hidden=moved(spec.hidden), devices=gpu_devices(),
                   home=None if spec.home is None else Path.home(), interpreter=interpreter_paths())


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


# ---------------------------------------------------------------------------------------------
# The probe

# Runs inside the sandbox and reports what it could do as one JSON line; the probe judges.
# argv: the hidden marker, the readable file, the workdir, the home folder, a port on the host's loopback.
PROBE_PROGRAM = r"""
import json, os, socket, sys, tempfile
hidden_marker, readable_file, workdir, home, port = sys.argv[1:6]

def reads(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return None

def can_create_file_in(folder):
    try:
        descriptor, path = tempfile.mkstemp(dir=folder, prefix=".autoresearch-probe-")
    except OSError:
        return False
    os.close(descriptor)
    if os.path.dirname(path) != workdir:
        os.unlink(path)
    return True

def can_append(path):
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False

def connects(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False

def listing(folder):
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []

def effective_capabilities():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return -1

print(json.dumps({
    "hidden_marker": reads(hidden_marker),
    "readable_file": reads(readable_file),
    "readable_file_writable": can_append(readable_file),
    "workdir_writable": can_create_file_in(workdir),
    "root_writable": can_create_file_in("/"),
    "usr_writable": can_create_file_in("/usr"),
    "loopback_reached": connects("127.0.0.1", int(port)),
    "internet_reached": connects("1.1.1.1", 53),
    "pid_namespace": os.readlink("/proc/self/ns/pid"),
    "net_namespace": os.readlink("/proc/self/ns/net"),
    "capabilities": effective_capabilities(),
    "home_entries": listing(home),
}))
"""

_MARKER_TEXT = "autoresearch probe: this file is hidden"
_READABLE_TEXT = "autoresearch probe: this file is readable"


def probe(bwrap: str = BWRAP, devices: tuple[Path, ...] = (), block_nested_userns: bool = True,
          timeout: float = PROBE_TIMEOUT_SECONDS) -> SandboxProbe:
    """Run a tiny Python command in a sandbox built like a training's and check that it holds.

    bwrap is a name looked up on PATH or a path. The sandbox hides a temporary folder holding a
    marker and re-exposes a file inside it, hides the caller's home, and binds `devices`; the
    command must run with this interpreter, must not read the marker but must read the file (and
    not write it), must write its workdir but not / or /usr, must reach neither the host's loopback
    nor the internet, must live in other PID and network namespaces with no capability, and must
    see nothing of the home folder but what the interpreter needs. Nothing is cached.
    """
    started = time.monotonic()
    found = shutil.which(bwrap)
    if found is None:
        return SandboxProbe(False, "none", f"bubblewrap is not installed: {INSTALL_HINT}", time.monotonic() - started,
                            None)
    with tempfile.TemporaryDirectory(prefix="autoresearch-probe-") as scratch, \
            socket.create_server(("127.0.0.1", 0)) as host_server:
        # The probe's folder lies under /tmp, which the sandbox replaces: it is made readable so that
        # the marker is hidden by the hidden folder over it, not by accident.
        root = Path(scratch)
        workdir, hidden = root / "work", root / "hidden"
        workdir.mkdir()
        hidden.mkdir()
        marker, readable_file = hidden / "marker.txt", hidden / "readable.txt"
        marker.write_text(_MARKER_TEXT)
        readable_file.write_text(_READABLE_TEXT)
        spec = SandboxSpec(workdir=workdir, readable=(root, readable_file), hidden=(hidden,), devices=devices,
                           block_nested_userns=block_nested_userns)
        command = [sys.executable, "-I", "-c", PROBE_PROGRAM, str(marker), str(readable_file), str(workdir),
                   str(spec.home or root), str(host_server.getsockname()[1])]
        try:
            completed = subprocess.run(sandbox_argv(spec, command, bwrap=found), capture_output=True, text=True,
                                       timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            problem = f"the sandbox did not finish its check in {timeout:g} s"
            return SandboxProbe(False, "none", problem, time.monotonic() - started, found)
        except OSError as exc:
            problem = f"cannot run {found}: {exc.strerror or exc}"
            return SandboxProbe(False, "none", problem, time.monotonic() - started, found)
        problem = _judge(completed, spec, workdir)
    seconds = time.monotonic() - started
    return SandboxProbe(problem is None, "bubblewrap" if problem is None else "none", problem, seconds, found)


def _judge(completed: subprocess.CompletedProcess, spec: SandboxSpec, workdir: Path) -> str | None:
    """None when the probe's report shows every protection; else one line naming what is missing."""
    report = _last_json_line(completed.stdout)
    if report is None:
        return _start_failure(completed)
    missing = []
    if report["hidden_marker"] is not None:
        missing.append("a hidden file can be read")
    if report["readable_file"] != _READABLE_TEXT:
        missing.append("a readable file inside a hidden folder cannot be read")
    if report["readable_file_writable"]:
        missing.append("a readable file can be written")
    if not report["workdir_writable"] or not any(workdir.glob(".autoresearch-probe-*")):
        missing.append("the workdir cannot be written")
    if report["root_writable"] or report["usr_writable"]:
        missing.append("/ or /usr can be written")
    if report["loopback_reached"] or report["internet_reached"]:
        missing.append("the network can be reached")
    if report["pid_namespace"] == os.readlink("/proc/self/ns/pid"):
        missing.append("the tool's processes can be seen and signalled (no PID namespace)")
    if report["net_namespace"] == os.readlink("/proc/self/ns/net"):
        missing.append("it shares the tool's network namespace")
    if report["capabilities"] != 0:
        missing.append("it keeps capabilities (it could unmount what hides a folder)")
    if spec.home is not None and not set(report["home_entries"]) <= _expected_home_entries(spec):
        missing.append("the home folder can be seen")
    return "the sandbox does not hold: " + "; ".join(missing) if missing else None


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _start_failure(completed: subprocess.CompletedProcess) -> str:
    """The first line bwrap (or the command in it) wrote: why the sandbox did not start."""
    first = next((line.strip() for line in completed.stderr.splitlines() if line.strip()), "")
    if "--disable-userns" in first:
        return f"bubblewrap 0.8 or newer is needed to stop nested user namespaces ({first}): upgrade bubblewrap"
    if not first:
        return f"the sandbox's check exited with code {completed.returncode} and said nothing"
    return first


def _expected_home_entries(spec: SandboxSpec) -> set[str]:
    """The names directly under the home folder that re-exposed paths make visible."""
    home = _resolve(spec.home)
    names = set()
    for path in (*spec.interpreter, *spec.readable, spec.workdir, *spec.writable):
        real = _resolve(path)
        if real != home and real.is_relative_to(home):
            names.add(real.relative_to(home).parts[0])
    return names


# ---------------------------------------------------------------------------------------------
# A run's sandbox: whether there is one, and what a training and an evaluation may see in it

class VisiblePaths(Protocol):
    """What the recipe's prepare step said (evaluation.PreparedData): the paths a training may read
    (`show`), and those it must never see (`hide`)."""

    show: tuple[Path, ...]
    hide: tuple[Path, ...]


@dataclass(frozen=True)
class SandboxPolicy:
    """The two kinds of sandbox of a run: a training's and an evaluation's.

    `show` and `hide` are the prepared data's paths: what a training may read, and what it must never see.
    """

    workspace_root: Path
    show: tuple[Path, ...]
    hide: tuple[Path, ...]
    devices: tuple[Path, ...]

    def training(self, workdir: Path, model_dir: Path) -> SandboxSpec:
        """`workdir`: the training's fresh copy of its recipe folder, writable and its current folder."""
        return SandboxSpec(workdir=workdir, writable=(model_dir,), readable=(*self.show, PACKAGE_DIR),
                           hidden=(self.workspace_root, *self.hide), devices=self.devices)

    def evaluation(self, workdir: Path, model_dir: Path) -> SandboxSpec:
        """`workdir`: the evaluation's fresh folder of the fixed files; the model is read-only."""
        return SandboxSpec(workdir=workdir, readable=(model_dir, *self.show, *self.hide, PACKAGE_DIR),
                           hidden=(self.workspace_root,), devices=self.devices)


@dataclass(frozen=True)
class SandboxChoice:
    """What a run trains in: `policy` None means no sandbox; `problem` says why there is none when one was wanted."""

    level: str
    policy: SandboxPolicy | None
    problem: str | None = None


def choose_sandbox(mode: str, workspace_root: Path, data: VisiblePaths) -> SandboxChoice:
    """The sandbox for a run under `mode` (auto, on, off), after a probe that shows it holds on this machine."""
    if mode == "off":
        return SandboxChoice("none", None)
    devices = gpu_devices()
    found = probe(devices=devices)
    if not found.available:
        if mode == "on":
            raise InvalidSetting("sandbox", f"is on, but the sandbox cannot run here: {found.problem}")
        return SandboxChoice("none", None, f"training without a sandbox ({found.problem}): the training can read "
                                           "and write whatever this user can; docs/trust.md says what that leaves open")
    return SandboxChoice(found.level, SandboxPolicy(Path(workspace_root), tuple(data.show), tuple(data.hide), devices))
