"""Tests of the sandbox: every rule checked by a real command under the real bwrap.

Each sandboxed command is a short Python program that reports what it could do as one JSON line.
The test folders live under /tmp, which the sandbox replaces with its own: the tests list their root
as readable, so that what a test shows hidden is hidden by the rule under test, not by that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from pathlib import Path

import pytest

from faultkit import alive, wait_until  # noqa: E402

from autoresearch.execution.sandbox import (SandboxError, SandboxSpec, gpu_devices, interpreter_paths, probe,  # noqa: E402
                                  sandbox_argv)

REPO = Path(__file__).resolve().parents[2]


def bwrap_refusal() -> str | None:
    """Why bwrap cannot run here at all (not installed, or no namespaces for it), else None.

    Checked with a bare bwrap command, not with sandbox_argv, so that a mistake in the code under
    test fails the tests instead of skipping them.
    """
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    completed = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--", "true"], capture_output=True,
                               text=True)
    if completed.returncode != 0:
        said = completed.stderr.strip() or f"exit code {completed.returncode}"
        return f"bwrap cannot make namespaces on this machine: {said.splitlines()[0]}"
    return None


BWRAP_REFUSAL = bwrap_refusal()
needs_bwrap = pytest.mark.skipif(BWRAP_REFUSAL is not None, reason=BWRAP_REFUSAL or "")


def bwrap_version() -> tuple[int, ...]:
    output = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.split()[-1]
    return tuple(int(part) for part in output.split("."))


needs_bwrap_0_8 = pytest.mark.skipif(BWRAP_REFUSAL is not None or bwrap_version() < (0, 8),
                                     reason=BWRAP_REFUSAL or "needs bubblewrap 0.8 or newer (--disable-userns)")


@pytest.fixture
def tree(tmp_path) -> Path:
    """A readable root with a workdir and a home holding a secret."""
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".netrc").write_text("machine example.com password hunter2\n")
    (tmp_path / "visible.txt").write_text("visible")
    return tmp_path


def spec_in(tree: Path, **fields) -> SandboxSpec:
    fields["readable"] = (tree, *fields.get("readable", ()))
    fields.setdefault("home", tree / "home")
    return SandboxSpec(workdir=tree / "work", **fields)


# Defined in every sandboxed program: outcome(action) is "ok" or the name of the OSError it raised.
HELPERS = """
def outcome(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return type(exc).__name__
def read(path):
    with open(path, "rb") as handle:
        return handle.read().decode()
def append(path):
    with open(path, "ab") as handle:
        handle.write(b"x")
"""


def run_in(spec: SandboxSpec, program: str, *args: str, env: dict[str, str] | None = None):
    """Run a Python program in the sandbox (after HELPERS); it sets `report`, which comes back decoded."""
    code = "import json, os, sys\n" + HELPERS + textwrap.dedent(program) + "\nprint(json.dumps(report))\n"
    completed = subprocess.run(sandbox_argv(spec, [sys.executable, "-c", code, *args]), capture_output=True,
                               text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# What is hidden


@needs_bwrap
def test_a_hidden_folder_and_the_files_in_it_cannot_be_seen(tree):
    (tree / "secret").mkdir()
    (tree / "secret" / "held_out.txt").write_text("the answers")
    report = run_in(spec_in(tree, hidden=(tree / "secret",)), """
    report = {"listing": os.listdir(sys.argv[1]), "file": outcome(lambda: read(sys.argv[1] + "/held_out.txt")),
              "neighbour": read(sys.argv[2])}
    """, str(tree / "secret"), str(tree / "visible.txt"))
    assert report == {"listing": [], "file": "FileNotFoundError", "neighbour": "visible"}


@needs_bwrap
def test_a_hidden_single_file_cannot_be_opened(tree):
    # bwrap binds /dev/null there on a nodev mount: opening it is refused, nothing of it is read.
    (tree / "answers.txt").write_text("the answers")
    report = run_in(spec_in(tree, hidden=(tree / "answers.txt",)), """
    report = {"read": outcome(lambda: read(sys.argv[1])), "write": outcome(lambda: append(sys.argv[1])),
              "size": os.stat(sys.argv[1]).st_size}
    """, str(tree / "answers.txt"))
    assert report == {"read": "PermissionError", "write": "PermissionError", "size": 0}
    assert (tree / "answers.txt").read_text() == "the answers"


@needs_bwrap
def test_a_readable_file_inside_a_hidden_folder_is_readable_and_read_only(tree):
    data = tree / "data"
    data.mkdir()
    (data / "train.bin").write_text("training bytes")
    (data / "test.bin").write_text("held-out bytes")
    report = run_in(spec_in(tree, hidden=(data,), readable=(data / "train.bin",)), """
    report = {"train": read(sys.argv[1] + "/train.bin"), "append": outcome(lambda: append(sys.argv[1] + "/train.bin")),
              "test": outcome(lambda: read(sys.argv[1] + "/test.bin")), "listing": os.listdir(sys.argv[1])}
    """, str(data))
    assert report == {"train": "training bytes", "append": "OSError", "test": "FileNotFoundError",
                      "listing": ["train.bin"]}
    assert (data / "train.bin").read_text() == "training bytes"


@needs_bwrap
def test_the_home_folder_is_hidden_and_is_scratch_inside(tree):
    home = tree / "home"
    report = run_in(spec_in(tree), """
    home = sys.argv[1]
    listing = os.listdir(home)
    os.makedirs(home + "/.cache/torch")
    with open(home + "/.cache/torch/kernel.bin", "w") as handle:
        handle.write("cached")
    report = {"listing": listing, "netrc": outcome(lambda: read(home + "/.netrc"))}
    """, str(home))
    assert report == {"listing": [], "netrc": "FileNotFoundError"}
    assert not (home / ".cache").exists()


@needs_bwrap
def test_a_hidden_symlink_hides_its_target(tree):
    (tree / "real_data").mkdir()
    (tree / "real_data" / "secret.txt").write_text("the answers")
    (tree / "link").symlink_to(tree / "real_data")
    report = run_in(spec_in(tree, hidden=(tree / "link",)), """
    report = [outcome(lambda: read(path)) for path in sys.argv[1:]]
    """, str(tree / "link" / "secret.txt"), str(tree / "real_data" / "secret.txt"))
    assert report == ["FileNotFoundError", "FileNotFoundError"]


@needs_bwrap
def test_a_path_listed_hidden_and_writable_is_hidden(tree):
    (tree / "both").mkdir()
    (tree / "both" / "file.txt").write_text("secret")
    report = run_in(spec_in(tree, hidden=(tree / "both",), writable=(tree / "both",)), """
    report = os.listdir(sys.argv[1])
    """, str(tree / "both"))
    assert report == []


@needs_bwrap
def test_paths_that_do_not_exist_are_skipped(tree):
    report = run_in(spec_in(tree, hidden=(tree / "missing",), readable=(tree / "gone",), writable=(tree / "nope",)),
                    """
    report = os.path.exists(sys.argv[1])
    """, str(tree / "missing"))
    assert report is False


@needs_bwrap
def test_run_is_empty_so_host_sockets_cannot_be_reached(tree):
    if not os.listdir("/run"):
        pytest.skip("this machine's /run is empty")
    assert run_in(spec_in(tree), "report = os.listdir('/run')") == []


# ---------------------------------------------------------------------------------------------
# The interpreter under hidden folders


@needs_bwrap
def test_the_interpreter_runs_with_the_workspace_and_the_real_home_hidden(tree):
    # The real layout: here the .venv lies in the hidden repository and pyenv's Python in hidden /root.
    spec = SandboxSpec(workdir=tree / "work", hidden=(REPO,), home=Path.home())
    report = run_in(spec, """
    import yaml
    report = {"yaml": yaml.safe_load("a: 1"), "repo": os.listdir(sys.argv[1]), "home": os.listdir(sys.argv[2])}
    """, str(REPO), str(Path.home()))
    assert report["yaml"] == {"a": 1}
    assert "README.md" not in report["repo"] and "program.md" not in report["repo"]
    home = Path(os.path.realpath(Path.home()))
    needed = {path.relative_to(home).parts[0] for path in interpreter_paths() if path.is_relative_to(home)}
    assert set(report["home"]) <= needed


@needs_bwrap
def test_a_hidden_path_inside_a_re_exposed_interpreter_folder_is_hidden_again(tree):
    prefix = tree / "hidden_root" / "prefix"
    (prefix / "test").mkdir(parents=True)
    (prefix / "module.py").write_text("VALUE = 1\n")
    (prefix / "test" / "held_out.py").write_text("ANSWERS = 42\n")
    (tree / "hidden_root" / "other.txt").write_text("secret")
    spec = spec_in(tree, hidden=(tree / "hidden_root", prefix / "test"), interpreter=(*interpreter_paths(), prefix))
    report = run_in(spec, """
    prefix = sys.argv[1]
    report = [outcome(lambda: read(prefix + "/module.py")), outcome(lambda: read(prefix + "/test/held_out.py")),
              outcome(lambda: read(prefix + "/../other.txt"))]
    """, str(prefix))
    assert report == ["ok", "FileNotFoundError", "FileNotFoundError"]


@needs_bwrap
def test_the_standard_librarys_test_folder_can_be_hidden_while_the_standard_library_runs(tree):
    held_out = Path(sysconfig.get_paths()["stdlib"]) / "test"
    if not held_out.is_dir():
        pytest.skip("this Python has no test/ folder in its standard library")
    spec = SandboxSpec(workdir=tree / "work", hidden=(held_out,), home=Path.home())
    report = run_in(spec, """
    import json, email.parser
    report = os.listdir(sys.argv[1])
    """, str(held_out))
    assert report == []


# ---------------------------------------------------------------------------------------------
# What may be written


@needs_bwrap
def test_the_workdir_and_writable_folders_are_writable_and_the_rest_is_not(tree):
    (tree / "model").mkdir()
    report = run_in(spec_in(tree, writable=(tree / "model",)), """
    def create(path):
        with open(path, "x") as handle:
            handle.write("written inside")
    report = {"cwd": os.getcwd(), "workdir": outcome(lambda: create("result.txt")),
              "writable": outcome(lambda: create(sys.argv[1] + "/model.pt2")),
              "root": outcome(lambda: create("/autoresearch-sandbox-test")),
              "usr": outcome(lambda: create("/usr/autoresearch-sandbox-test")),
              "readable": outcome(lambda: create(sys.argv[2] + "/new.txt"))}
    """, str(tree / "model"), str(tree))
    assert report == {"cwd": str(tree / "work"), "workdir": "ok", "writable": "ok", "root": "OSError",
                      "usr": "OSError", "readable": "OSError"}
    assert (tree / "work" / "result.txt").read_text() == "written inside"
    assert (tree / "model" / "model.pt2").read_text() == "written inside"


@needs_bwrap
def test_tmp_and_dev_shm_are_scratch_of_its_own(tree):
    name = f"autoresearch-sandbox-{uuid.uuid4().hex}"
    report = run_in(spec_in(tree), """
    for folder in ("/tmp", "/dev/shm"):
        with open(folder + "/" + sys.argv[1], "w") as handle:
            handle.write("scratch")
    report = sorted(os.listdir("/tmp"))
    """, name)
    # Only the mount points the sandbox made for what it binds (the test's folders, and the interpreter
    # when it lives under /tmp, as in a clone there), none of the host's /tmp.
    spec = spec_in(tree)
    bound = [Path(os.path.realpath(path)) for path in (tree, *spec.interpreter)]
    made_for_binds = {path.parts[2] for path in bound if len(path.parts) > 2 and path.parts[1] == "tmp"}
    assert set(report) == {name} | made_for_binds
    assert not Path("/tmp", name).exists() and not Path("/dev/shm", name).exists()


# ---------------------------------------------------------------------------------------------
# Network, processes, privileges


@needs_bwrap
@pytest.mark.parametrize("network", [False, True])
def test_the_hosts_loopback_is_reachable_only_with_network(tree, network):
    with socket.create_server(("127.0.0.1", 0)) as server:
        report = run_in(spec_in(tree, network=network), """
        import socket
        try:
            socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
            report = "connected"
        except OSError as exc:
            report = type(exc).__name__
        """, str(server.getsockname()[1]))
    assert report == ("connected" if network else "ConnectionRefusedError")


@needs_bwrap
def test_the_sandbox_can_neither_see_nor_signal_the_tool(tree):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        report = run_in(spec_in(tree), """
        import signal
        try:
            os.kill(int(sys.argv[2]), signal.SIGTERM)
            signalled = "signalled"
        except OSError as exc:
            signalled = type(exc).__name__
        report = {"signal": signalled, "pids": sorted(int(name) for name in os.listdir("/proc") if name.isdigit())}
        """, str(os.getpid()), str(victim.pid))
        assert report["signal"] == "ProcessLookupError"
        assert os.getpid() not in report["pids"] and victim.pid not in report["pids"]
        assert len(report["pids"]) <= 3  # bwrap's init, the program, nothing of the host
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@needs_bwrap
def test_no_capability_is_left_so_a_hidden_folder_cannot_be_unmounted(tree):
    report = run_in(spec_in(tree), """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    detach = 2  # MNT_DETACH
    unmounted = libc.umount2(sys.argv[1].encode(), detach) == 0
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    report = {"unmounted": unmounted, "listing": os.listdir(sys.argv[1]), "capabilities": int(status["CapEff"], 16)}
    """, str(tree / "home"))
    assert report == {"unmounted": False, "listing": [], "capabilities": 0}


@needs_bwrap_0_8
@pytest.mark.parametrize("blocked", [True, False])
def test_nested_user_namespaces_are_refused_unless_allowed(tree, blocked):
    report = run_in(spec_in(tree, block_nested_userns=blocked), """
    import ctypes
    new_user_namespace = 0x10000000  # CLONE_NEWUSER
    report = ctypes.CDLL(None, use_errno=True).unshare(new_user_namespace) == 0
    """)
    assert report is (not blocked)


@needs_bwrap
def test_the_callers_environment_is_kept(tree):
    report = run_in(spec_in(tree), "report = os.environ.get('AUTORESEARCH_SANDBOX_TEST')",
                    env={**os.environ, "AUTORESEARCH_SANDBOX_TEST": "kept"})
    assert report == "kept"


PARENT = """\
import subprocess, sys, time
from pathlib import Path
from autoresearch.execution.local import with_parent_death_signal
from autoresearch.execution.sandbox import SandboxSpec, sandbox_argv
argv = sandbox_argv(SandboxSpec(workdir=Path(sys.argv[1]), home=None), ["sleep", "600"])
subprocess.Popen(with_parent_death_signal(argv) if sys.argv[2] == "launcher" else argv, start_new_session=True)
time.sleep(600)
"""


def marked_processes(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment holds marker."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and marker.encode() in Path("/proc", name, "environ").read_bytes().split(b"\0"):
                found.append(int(name))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


@needs_bwrap
@pytest.mark.parametrize("start", ["launcher", "bwrap alone"])
def test_kill_9_of_the_parent_leaves_nothing_of_the_sandbox_alive(tree, start):
    marker = f"AUTORESEARCH_SANDBOX_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tree / "work"), start.split()[0]],
                              env={**os.environ, name: value}, stdin=subprocess.DEVNULL)
    try:
        def sleep_started() -> bool:
            return any(Path("/proc", str(pid), "cmdline").read_bytes() == b"sleep\x00600\x00"
                       for pid in marked_processes(marker) if Path("/proc", str(pid)).exists())
        assert wait_until(sleep_started, 15), "the sandboxed sleep never started"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not marked_processes(marker), 5), f"still alive: {marked_processes(marker)}"
    finally:
        parent.kill()
        parent.wait()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Devices


def test_gpu_devices_lists_only_the_gpu_nodes_that_exist(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps/nvidia-cap1",
                 "dri/card0", "dri/renderD128", "kfd", "sda", "null"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "dri" / "by-path").mkdir()
    assert gpu_devices(tmp_path) == tuple(tmp_path / name for name in (
        "dri/card0", "dri/renderD128", "kfd", "nvidia-caps/nvidia-cap1", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0",
        "nvidia1", "nvidiactl"))
    assert gpu_devices(tmp_path / "missing") == ()


def test_gpu_devices_on_this_machine_exist():
    assert all(path.exists() and not path.is_dir() for path in gpu_devices())


@needs_bwrap
def test_devices_are_bound_into_the_minimal_dev(tree):
    node = next((Path(path) for path in ("/dev/fuse", "/dev/kmsg", "/dev/loop-control", "/dev/vsock")
                 if os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)), None)
    if node is None:
        pytest.skip("no spare character device to bind on this machine")
    program = "report = os.path.exists(sys.argv[1])"
    assert run_in(spec_in(tree), program, str(node)) is False
    assert run_in(spec_in(tree, devices=(node,)), program, str(node)) is True


@needs_bwrap
@pytest.mark.skipif(not gpu_devices(), reason="no GPU device node on this machine")
def test_cuda_works_in_the_sandbox_with_the_gpu_devices_bound(tree):
    report = run_in(spec_in(tree, devices=gpu_devices()), """
    import torch
    report = torch.cuda.is_available() and float((torch.ones(4, device="cuda") * 2).sum())
    """)
    assert report == 8.0


# ---------------------------------------------------------------------------------------------
# Building the command line


def test_a_sandbox_that_cannot_be_built_is_refused(tree):
    with pytest.raises(SandboxError, match="empty"):
        sandbox_argv(spec_in(tree), [])
    with pytest.raises(SandboxError, match="workdir"):
        sandbox_argv(SandboxSpec(workdir=tree / "missing"), ["true"])
    with pytest.raises(SandboxError, match="hidden"):
        sandbox_argv(spec_in(tree, hidden=(Path("/"),)), ["true"])
    with pytest.raises(SandboxError, match="writable"):
        sandbox_argv(spec_in(tree, writable=(Path("/"),)), ["true"])


# ---------------------------------------------------------------------------------------------
# The probe


@needs_bwrap
def test_the_probe_finds_the_sandbox_working_here():
    result = probe()
    assert (result.available, result.level, result.problem) == (True, "bubblewrap", None)
    assert result.bwrap == shutil.which("bwrap")
    assert result.seconds < 5


def test_the_probe_says_how_to_install_bwrap_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    for result in (probe(), probe(bwrap=str(tmp_path / "bin" / "bwrap"))):
        assert (result.available, result.level, result.bwrap) == (False, "none", None)
        assert result.problem == "bubblewrap is not installed: install bubblewrap (apt-get install bubblewrap)"


@needs_bwrap_0_8
def test_the_probe_reports_bwraps_own_words_when_namespaces_are_refused(tree):
    # Inside the sandbox no user namespace can be made: a real refusal, as a locked-down kernel gives.
    report = run_in(spec_in(tree, readable=(REPO,)), """
    from autoresearch.execution.sandbox import probe
    result = probe()
    report = [result.available, result.level, result.problem]
    """)
    assert report[:2] == [False, "none"]
    assert report[2].startswith("bwrap: ") and "\n" not in report[2]


@needs_bwrap
def test_the_probe_checks_the_protections_rather_than_trusting_bwrap(tmp_path):
    # A stand-in that runs the probe's command under a read-only root and nothing else.
    weak = tmp_path / "bwrap"
    weak.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        while [ "$#" -gt 0 ]; do
          case "$1" in
            --chdir) workdir=$2; shift 2 ;;
            --) shift; break ;;
            *) shift ;;
          esac
        done
        exec {shutil.which("bwrap")} --ro-bind / / --dev /dev --bind "$workdir" "$workdir" --chdir "$workdir" -- "$@"
        """))
    weak.chmod(0o755)
    result = probe(bwrap=str(weak))
    assert (result.available, result.level) == (False, "none")
    for missing in ("a hidden file can be read", "the network can be reached", "no PID namespace"):
        assert missing in result.problem


CLEARING_PARENT = """\
import subprocess, sys, time
from autoresearch.execution.local import with_parent_death_signal
# A command that clears its parent-death signal as it starts, as bubblewrap's does for a moment
# when its credentials change (a tool killed then once left the whole sandbox running).
command = [sys.executable, "-c", "import ctypes, time; ctypes.CDLL(None).prctl(1, 0); print('up', flush=True); "
           "time.sleep(600)"]
child = subprocess.Popen(with_parent_death_signal(command), start_new_session=True, stdout=subprocess.PIPE)
child.stdout.readline()
print("started", flush=True)
time.sleep(600)
"""


def test_kill_9_of_the_tool_stops_a_command_that_cleared_its_parent_death_signal():
    job = uuid.uuid4().hex
    marker = f"AUTORESEARCH_JOB={job}"
    parent = subprocess.Popen([sys.executable, "-c", CLEARING_PARENT], env={**os.environ, "AUTORESEARCH_JOB": job},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started"
        assert len(marked_processes(marker)) >= 2  # the tool and the command (and the launcher)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not marked_processes(marker), 5), f"still alive: {marked_processes(marker)}"
    finally:
        parent.kill()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
