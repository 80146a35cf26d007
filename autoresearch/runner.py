"""Running one training job and bringing back its log and summary.

`LocalExecutor` is the first implementation of "run one experiment somewhere": a subprocess in its
own process session, the budget handed over in the environment, output to a bounded log file (its
head and its tail are kept, so a flood of output costs neither disk nor memory). Other executors
(one GPU of several, a cluster) keep the same `run(job)` shape.

No process of an experiment may outlive it. A process group is not enough for that: a grandchild
that calls setsid (a shell backgrounding a daemon) leaves the group, and one whose parent exits is
re-parented away from the tree. So every job's processes are found three ways, and all of them are
sent SIGTERM, then SIGKILL after a short wait, when the job ends or passes its limit:
- the process group of the job (its own session);
- every descendant seen while it ran (the tree is sampled a few times a second);
- every process carrying the job's marker in its environment (`AUTORESEARCH_JOB`), which children
  inherit whatever they do to their session or parent.
On Linux the training command is also stopped when the tool itself dies (`kill -9`, a second
Ctrl-C): a tiny launcher, its parent, asks the kernel (PR_SET_PDEATHSIG) for a signal at the
tool's death and then kills every process with the job's marker; the command dies with the
launcher. What anything leaves behind all the same is found by its environment marker when the
run is resumed (`stop_processes_marked`).
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
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import psutil

from autoresearch.recipe import Recipe

SUMMARY_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*:\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|infinity))\s*$",
                          re.IGNORECASE)
LOG_HEAD_BYTES = 1_000_000
LOG_TAIL_BYTES = 1_000_000
MAX_LINE_BYTES = 64_000
KILL_WAIT_SECONDS = 3.0
TAIL_LINES = 40
TAIL_CHARS = 8_000
POLL_SECONDS = 0.05
TREE_SAMPLE_SECONDS = 0.25
JOB_MARKER = "AUTORESEARCH_JOB"
RUN_MARKER = "AUTORESEARCH_RUN"  # set by the loop: which run a training process belongs to
OUTPUT_DIR_ENV = "AUTORESEARCH_OUTPUT_DIR"  # where a training saves its model
# What of the tool's environment a training sees (docs/recipe-contract.md): enough to find its
# interpreter, its home and cache, the locale and the GPU; never a secret such as OPENAI_API_KEY.
ALLOWED_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR", "TZ", "LANG", "LANGUAGE",
                               "LD_LIBRARY_PATH", "AUTORESEARCH_CACHE"})
ALLOWED_ENV_PREFIXES = ("LC_", "CUDA_", "NCCL_", "NVIDIA_", "TORCH_", "PYTORCH_", "TORCHINDUCTOR_", "TRITON_", "OMP_",
                        "MKL_", "OPENBLAS_")

# Runs the real command as its child and stays its parent, having asked the kernel for SIGUSR2 when
# its own parent (the tool) dies: then it kills every process carrying the job's marker and exits.
# It does not exec the command, because the signal does not survive what bubblewrap does at its
# start (its credentials change before it asks for its own): a tool killed in those milliseconds
# left a sandbox running. The command gets SIGKILL when the launcher dies, as the launcher once did
# with the tool. It exits at once if the tool is already gone; otherwise it passes SIGTERM,
# SIGINT and SIGHUP on to the command and ends as the command ended (its code, or its signal).
# argv: the tool's pid, then the command. Standard library only (it runs with -I -S).
PARENT_DEATH_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    f"job = os.environ.get({JOB_MARKER!r})\n"
    f"marker = ({JOB_MARKER!r} + '=' + (job or '')).encode()\n"
    "children = []\n"
    "def sweep(*_):\n"
    "    for pid in children:\n"
    "        try:\n"
    "            os.kill(pid, signal.SIGKILL)\n"
    "        except OSError:\n"
    "            pass\n"
    "    for name in os.listdir('/proc') if job else ():\n"
    "        if name.isdigit() and int(name) != os.getpid():\n"
    "            try:\n"
    "                with open(f'/proc/{name}/environ', 'rb') as handle:\n"
    "                    if marker in handle.read().split(b'\\0'):\n"
    "                        os.kill(int(name), signal.SIGKILL)\n"
    "            except OSError:\n"
    "                pass\n"
    "    os._exit(137)\n"
    "signal.signal(signal.SIGUSR2, sweep)\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGUSR2)\n"  # PR_SET_PDEATHSIG = 1
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sweep()\n"
    "launcher = os.getpid()\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"  # and the command dies with the launcher
    "    if os.getppid() != launcher:\n"
    "        os._exit(137)\n"
    "    try:\n"
    "        os.execvp(sys.argv[2], sys.argv[2:])\n"
    "    except OSError as exc:\n"
    "        print(f'cannot start {sys.argv[2]}: {exc.strerror or exc}', file=sys.stderr)\n"
    "    os._exit(127)\n"
    "children.append(child)\n"
    "def forward(number, _):\n"
    "    try:\n"
    "        os.kill(child, number)\n"
    "    except OSError:\n"
    "        pass\n"
    "for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
    "    signal.signal(number, forward)\n"
    "while True:\n"
    "    try:\n"
    "        _, status = os.waitpid(child, 0)\n"
    "        break\n"
    "    except ChildProcessError:\n"
    "        os._exit(127)\n"
    "    except InterruptedError:\n"
    "        continue\n"
    "if os.WIFSIGNALED(status):\n"
    "    number = os.WTERMSIG(status)\n"
    "    signal.signal(number, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), number)\n"
    "os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)\n"
)


@dataclass(frozen=True)
class TrainingJob:
    """What to run: the command, where, with which extra environment, for how long.

    A training, and also the harness's own steps (preparing data, evaluating a model): those run
    `isolated` (`python -I -B`: no PYTHON* variables, no user site, no script folder on the path,
    no bytecode written) and do not make up time a hypervisor stole.
    """

    command: str
    cwd: Path
    log_path: Path
    budget_seconds: float
    grace_seconds: float
    env: dict[str, str] = field(default_factory=dict)  # set for the training on top of the allowlist
    passthrough: tuple[str, ...] = ()  # more names of the tool's environment to hand through (recipe `env:`)
    isolated: bool = False
    makes_up_steal: bool = False  # the deadline moves by the steal measured while it runs, up to a quarter of the budget
    sandbox: object | None = None  # a sandbox.SandboxSpec: the command runs inside bubblewrap as it describes
    job_id: str | None = None  # the harness's name for it (its process marker); None: a fresh one
    slot: int | None = None  # which of the executor's slots it takes; None: a harness step of this machine
    # Names in `env` whose values are folders: what travels with the job to where it runs (read), and
    # what it writes there and must bring back (the saved model). Only an executor elsewhere moves them.
    carries: tuple[str, ...] = ()
    brings_back: tuple[str, ...] = ()
    watch: object | None = None  # a watch.Watch: disk and memory limits checked while it runs


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
    stolen_seconds: float = 0.0  # CPU time the hypervisor gave to other tenants while it ran (harness-measured)
    cancelled: bool = False  # stopped by the harness (Ctrl-C, the run stopping), not finished
    lost: bool = False  # the worker or node running it died before it ended (an executor elsewhere)
    device: str | None = None  # the GPU it was given where the executor chose one (Ray), as CUDA_VISIBLE_DEVICES
    sandbox_level: str | None = None  # the sandbox in force where it ran, where that was decided there (Ray)
    stopped_for: str | None = None  # stopped by its watch (watch.py): over its disk quota or memory limit


def recipe_job(recipe: Recipe, cwd: Path, log_path: Path, budget_seconds: float, seed: int, run_marker: str,
               output_dir: Path) -> TrainingJob:
    """The job that trains a recipe once: for the loop's experiments and for `verify` alike.

    Every such job carries its run's marker, so a resume (or the next verify) finds what a killed
    tool left running. The training saves its model into `output_dir`; it never evaluates.
    """
    return TrainingJob(command=recipe.command, cwd=cwd, log_path=log_path, budget_seconds=budget_seconds,
                       grace_seconds=recipe.grace(budget_seconds), passthrough=recipe.env, makes_up_steal=True,
                       env={"AUTORESEARCH_SEED": str(seed), OUTPUT_DIR_ENV: str(output_dir),
                            RUN_MARKER: run_marker}, brings_back=(OUTPUT_DIR_ENV,))


class JobHandle:
    """One submitted job, running in a thread of its own: wait for it, ask whether it is done, cancel it.

    `id` is also the job's process marker (JOB_MARKER), by which its processes are found wherever they
    went. The thread that starts a job's process lives until the process is reaped: the launcher's
    parent-death signal belongs to that thread, so the process dies with it, not before.

    Waiting is on an Event, never on Thread.join: a join that Ctrl-C interrupts leaves CPython 3.11's
    thread marked as ended while it still runs (the bpo-45274 fix releases its lock), and the cleanup
    after a first Ctrl-C would not be waited for.
    """

    def __init__(self, work: Callable[["JobHandle"], TrainingResult], job_id: str | None = None):
        self.id = job_id or new_job_id()
        self.cancelled = threading.Event()
        self._result: TrainingResult | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["JobHandle"], None]] = []
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(work,), daemon=True, name=f"job-{self.id[:8]}")
        self._thread.start()

    def _work(self, work: Callable[["JobHandle"], TrainingResult]) -> None:
        try:
            self._result = work(self)
        except BaseException as exc:  # handed to whoever waits for the result
            self._error = exc
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
            self._finished.set()
        for callback in callbacks:
            callback(self)

    def on_done(self, callback: Callable[["JobHandle"], None]) -> None:
        """Call `callback(handle)` once the job has ended (at once if it already has), from its thread."""
        with self._lock:
            if not self._finished.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def cancel(self) -> None:
        """Stop the job: its process tree is ended as at its deadline; its result says `cancelled`."""
        self.cancelled.set()

    def result(self) -> TrainingResult:
        """The job's result, once it has ended. Ctrl-C (or anything else) while waiting cancels the job,
        waits for its processes to be gone, and goes on up."""
        try:
            self._finished.wait()
        except BaseException:
            self.cancel()
            self._finished.wait()
            raise
        if self._error is not None:
            raise self._error
        return self._result


def new_job_id() -> str:
    return uuid.uuid4().hex


class Executor(Protocol):
    """Where a training (or a harness step) runs: `submit` returns a handle at once, `run` waits for it.

    `offered_slots` is how many trainings it can run at once when it knows (a cluster), else None;
    `job_ref` is what the ledger keeps of a job before it starts, for a resume to look it up with
    `find_jobs` (job ref -> what became of it, for the person); `close` gives back what it holds.
    """

    def submit(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> JobHandle: ...

    def run(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> TrainingResult: ...

    def offered_slots(self) -> int | None: ...

    def job_ref(self, job_id: str, slot: int | None) -> str: ...

    def find_jobs(self, refs: list[str], run_marker: str) -> dict[str, str]: ...

    def close(self) -> None: ...


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


def training_environment(parent: dict[str, str], passthrough: tuple[str, ...] = ()) -> dict[str, str]:
    """The part of the tool's environment a training may see: the allowlist and the recipe's own names."""
    return {name: value for name, value in parent.items()
            if name in ALLOWED_ENV_NAMES or name.startswith(ALLOWED_ENV_PREFIXES) or name in passthrough}


def resolve_command(command: str, isolated: bool = False) -> list[str]:
    """Split the recipe's command; a leading `python` means the interpreter running this tool.

    `isolated` adds `-I -B` after it: what the harness runs of a recipe (its data preparation and
    its evaluation) sees no PYTHON* variable, no user site-packages and no script folder on its
    path, and leaves no bytecode that a later process could pick up.
    """
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0:1] = [sys.executable, "-I", "-B"] if isolated else [sys.executable]
    return argv


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """argv run through the launcher that makes the kernel kill it with the tool (Linux only)."""
    if not sys.platform.startswith("linux") or not argv:
        return argv
    return [sys.executable, "-I", "-S", "-c", PARENT_DEATH_LAUNCHER, str(os.getpid()), *argv]


class BoundedLog:
    """Writes the head of a stream to disk as it comes and keeps a bounded tail in memory.

    The tail is appended to the file when the stream ends, after a line saying how much was left
    out, so a flood of output costs neither disk nor memory beyond the two bounds. A log that cannot
    be written (a full disk) is reported in `error`; the stream is still read and its tail kept.
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

    def tail_text(self, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
        """The last lines of the stream (at most `chars` characters), from memory or the file."""
        if self._tail:
            data = b"".join(self._tail)[-64_000:]
        else:
            data = self._head_end()
        text = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
        return text[-chars:]

    def _head_end(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(max(0, self._written - 64_000))
                return handle.read(64_000)
        except OSError:
            return b""


class LocalExecutor:
    """Runs the training command as a subprocess on this machine.

    `kill_wait_seconds` is how long SIGTERM is given before SIGKILL; the log bounds are per job.
    """

    def __init__(self, kill_wait_seconds: float = KILL_WAIT_SECONDS, log_head_bytes: int = LOG_HEAD_BYTES,
                 log_tail_bytes: int = LOG_TAIL_BYTES):
        self.kill_wait_seconds = kill_wait_seconds
        self.log_head_bytes = log_head_bytes
        self.log_tail_bytes = log_tail_bytes

    def submit(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> "JobHandle":
        """Start the job in a thread of its own and return at once; the handle waits for it or cancels it."""
        return JobHandle(lambda handle: self.execute(job, on_output, handle.id, handle.cancelled), job.job_id)

    def run(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> TrainingResult:
        """Run the job to its end (JobHandle.result: Ctrl-C cancels it and waits for its processes)."""
        return self.submit(job, on_output).result()

    def offered_slots(self) -> int | None:
        return None  # this machine's slots are the person's choice (--slots, --gpus)

    def job_ref(self, job_id: str, slot: int | None) -> str:
        return f"local:{job_id}"  # its processes carry the id as their marker

    def find_jobs(self, refs: list[str], run_marker: str) -> dict[str, str]:
        return {}  # what a killed tool left here is found by the run's process marker (recovery.reconcile)

    def close(self) -> None:
        pass

    def execute(self, job: TrainingJob, on_output: Callable[[str], None] | None, marker: str,
                cancelled: threading.Event) -> TrainingResult:
        """The job in this thread, to its end: also what a Ray worker runs on its node (cluster.py).

        The process is started from this thread and reaped in it (the parent-death signal belongs to it).
        """
        env = {**training_environment(dict(os.environ), job.passthrough), **job.env,
               "AUTORESEARCH_TIME_BUDGET": f"{job.budget_seconds:g}",
               "PYTHONUNBUFFERED": "1", JOB_MARKER: marker}
        log = BoundedLog(job.log_path, self.log_head_bytes, self.log_tail_bytes)
        started = time.monotonic()
        argv = resolve_command(job.command, job.isolated)
        if job.sandbox is not None:
            from autoresearch.sandbox import sandbox_argv

            argv = sandbox_argv(job.sandbox, argv)
        try:
            process = subprocess.Popen(with_parent_death_signal(argv), cwd=job.cwd, env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as exc:
            message = f"cannot start {argv[0] if argv else 'an empty command'}: {exc.strerror or exc}"
            log.write(message.encode() + b"\n")
            log.close()
            return TrainingResult(exit_code=127, timed_out=False, seconds=time.monotonic() - started, summary={},
                                  log_path=job.log_path, log_tail=message, log_bytes=log.total_bytes,
                                  log_error=log.error)
        tree = ProcessTree(process.pid)
        reader = _OutputReader(process.stdout.fileno(), log, on_output)
        reader.start()
        timed_out = was_cancelled = False
        steal = StealMeter() if job.makes_up_steal else None
        watcher, stopped_for = (job.watch.start() if job.watch is not None else None), None
        try:
            deadline = started + job.budget_seconds + job.grace_seconds
            next_sample = 0.0
            while process.poll() is None:
                if cancelled.is_set():
                    was_cancelled = True
                    break
                now = time.monotonic()
                allowance = 0.0 if steal is None else min(steal.seconds(), job.budget_seconds / 4)
                if now >= deadline + allowance:
                    timed_out = True
                    break
                if now >= next_sample:
                    tree.sample()
                    next_sample = now + TREE_SAMPLE_SECONDS
                if watcher is not None and (stopped_for := watcher.check(tree.members())):
                    break
                time.sleep(POLL_SECONDS)
            seconds = time.monotonic() - started  # the training's own time, not the cleanup's
        finally:
            # Always, also on Ctrl-C: the job's processes must not outlive it, whatever they did.
            tree.sample()
            survivors = tree.members() | find_marked_processes(JOB_MARKER, marker) | find_group(process.pid)
            stop_processes(survivors, self.kill_wait_seconds, also_group=process.pid)
            _reap(process)
            reader.finish()
            process.stdout.close()
            log.close()
        return TrainingResult(
            exit_code=process.returncode,
            timed_out=timed_out,
            cancelled=was_cancelled,
            seconds=seconds,
            stolen_seconds=0.0 if steal is None else steal.seconds(),
            summary=reader.summary,
            log_path=job.log_path,
            log_tail=log.tail_text(),
            log_bytes=log.total_bytes,
            log_error=log.error,
            stopped_for=stopped_for,
        )


class StealMeter:
    """Steal time of this machine's most-robbed CPU since the meter started (Linux /proc/stat; 0 elsewhere).

    The harness's own measure of time a cloud host's hypervisor took: a training is allowed that much
    past its deadline (at most a quarter of its budget), so a noisy neighbour does not turn into a
    timeout, and nothing the training reports about its own clock is needed for it.
    """

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        try:
            with open("/proc/stat") as stat:
                rows = [line.split() for line in stat if line.startswith("cpu") and not line.startswith("cpu ")]
        except OSError:
            return []
        return [int(fields[8]) for fields in rows if len(fields) > 8]

    def seconds(self) -> float:
        now = self._read()
        if not now or len(now) != len(self._start):
            return 0.0
        return max(b - a for a, b in zip(self._start, now)) / os.sysconf("SC_CLK_TCK")


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


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    if self._stop_requested.is_set():
                        break
                    continue
                chunk = os.read(self.fd, 65536)
            except (OSError, ValueError):
                break
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
            # Only short lines with a colon can be summary lines; a flood of output stays cheap.
            if len(raw) <= MAX_LINE_BYTES and b":" in raw:
                parsed = parse_summary_line(raw.decode("utf-8", "replace").rstrip("\r"))
                if parsed:
                    self.summary[parsed[0]] = parsed[1]
            if raw.strip():
                last_line = raw
        if last_line is not None and self.on_output is not None:
            self.on_output(last_line[:1000].decode("utf-8", "replace").rstrip("\r"))

    def finish(self) -> None:
        """Stop reading once the pipe is drained (or at once if something still holds it open)."""
        self._stop_requested.set()
        self.join(timeout=5)


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
