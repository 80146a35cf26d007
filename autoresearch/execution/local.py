"""Running one job on this machine: `LocalExecutor`, a subprocess under the harness's clock.

The command runs in its own process session, with the environment from an allowlist (never a secret
such as OPENAI_API_KEY), the budget handed over in the environment, inside bubblewrap when the job
has a sandbox (execution.sandbox), and its output drained into a bounded log whose summary lines are
read as they come (execution.output). The harness's clock ends it at its deadline (start-up, budget,
grace, export, and the steal and contention measured meanwhile: execution.contention) or when it is
cancelled; then its whole process tree is stopped (execution.processes): its group, every
descendant seen while it ran, and every process carrying the job's marker (`AUTORESEARCH_JOB`).

On Linux the training command is also stopped when the tool itself dies (`kill -9`, a second
Ctrl-C): a tiny launcher, its parent, asks the kernel (PR_SET_PDEATHSIG) for a signal at the
tool's death and then kills every process with the job's marker; the command dies with the
launcher. What anything leaves behind all the same is found by its environment marker when the
run is resumed (`processes.stop_processes_marked`). A Ray worker runs its jobs with the same code
(`LocalExecutor.execute`) on its node.
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import sys
import threading
import time
from typing import Callable

from autoresearch.execution.contention import ContentionMeter, Progress, TreeCpu, other_gpu_processes
from autoresearch.execution.jobs import JOB_MARKER, OUTPUT_DIR_ENV, JobHandle, TrainingJob, TrainingResult
from autoresearch.execution.output import LOG_HEAD_BYTES, LOG_TAIL_BYTES, MAX_LINE_BYTES, BoundedLog, parse_summary_line
from autoresearch.execution.processes import (KILL_WAIT_SECONDS, ProcessTree, find_group, find_marked_processes,
                                              stop_processes)
from autoresearch.execution.sandbox import sandbox_argv
from autoresearch.execution.steal import StealMeter

POLL_SECONDS = 0.05
TREE_SAMPLE_SECONDS = 0.25
GPU_SAMPLE_SECONDS = 10.0  # nvidia-smi takes a while: the other processes on the GPU, now and then
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
                cancelled: threading.Event, progress: Progress | None = None) -> TrainingResult:
        """The job in this thread, to its end: also what a Ray worker runs on its node (execution.ray).

        `progress`, when given, is kept up to date with what the harness sees of the machine and the
        job's phases while it runs (a Ray node reports it to the driver, whose clock decides).

        The process is started from this thread and reaped in it (the parent-death signal belongs to it).
        """
        env = {**training_environment(dict(os.environ), job.passthrough), **job.env,
               "AUTORESEARCH_TIME_BUDGET": f"{job.budget_seconds:g}",
               "PYTHONUNBUFFERED": "1", JOB_MARKER: marker}
        log = BoundedLog(job.log_path, self.log_head_bytes, self.log_tail_bytes)
        started = time.monotonic()
        argv = resolve_command(job.command, job.isolated)
        if job.sandbox is not None:
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
        reader = _OutputReader(process.stdout.fileno(), log, on_output, started)
        reader.start()
        timed_out = was_cancelled = False
        machine = _MachineWatch(job, tree, progress)
        limits, stopped_for = (job.watch.start() if job.watch is not None else None), None
        try:
            next_sample = 0.0
            while process.poll() is None:
                if cancelled.is_set():
                    was_cancelled = True
                    break
                now = time.monotonic()
                if now >= next_sample:
                    tree.sample()
                    machine.sample(now, now - started, reader.first_output)
                    next_sample = now + TREE_SAMPLE_SECONDS
                if now - started >= machine.deadline():
                    timed_out = True
                    break
                if limits is not None and (stopped_for := limits.check(tree.members())):
                    break
                time.sleep(POLL_SECONDS)
            seconds = time.monotonic() - started  # the training's own time, not the cleanup's
        finally:
            # Always, also on Ctrl-C: the job's processes must not outlive it, whatever they did.
            tree.sample()
            machine.sample(time.monotonic(), time.monotonic() - started, reader.first_output, final=True)
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
            stolen_seconds=machine.progress.steal,
            contention_seconds=machine.progress.contention,
            other_gpu_processes=machine.gpu_others,
            startup_seconds=machine.progress.startup_ended,
            summary=reader.summary,
            log_path=job.log_path,
            log_tail=log.tail_text(),
            log_bytes=log.total_bytes,
            log_error=log.error,
            stopped_for=stopped_for,
        )


class _MachineWatch:
    """What the machine did while a job ran (steal, other processes' CPU and GPU use), into `progress`.

    Only a training (`makes_up_steal`) is measured and has its deadline moved; a harness step keeps
    budget + grace.
    """

    def __init__(self, job: TrainingJob, tree: ProcessTree, progress: Progress | None):
        self.job, self.tree = job, tree
        self.progress = progress if progress is not None else Progress()
        self.measured = job.makes_up_steal
        self.steal = StealMeter() if self.measured else None
        self.tree_cpu = TreeCpu()
        self.contention = ContentionMeter(self.tree_cpu) if self.measured else None
        self.device = job.env.get("CUDA_VISIBLE_DEVICES")
        self.gpu_others: int | None = None
        self._next_gpu = 0.0

    def sample(self, now: float, elapsed: float, first_output: float | None, final: bool = False) -> None:
        if not self.measured:
            return
        job = self.job
        members = self.tree.members()
        self.tree_cpu.sample(members)
        progress = self.progress
        if progress.startup_ended is None:
            if first_output is not None:
                progress.startup_ended = first_output
            elif job.startup_seconds and self.tree_cpu.seconds() >= job.startup_seconds:
                progress.startup_ended = elapsed  # silent work is not start-up: its budget starts now
        progress.steal, progress.contention = self.steal.seconds(), self.contention.seconds()
        progress.look_for_export(job.env.get(OUTPUT_DIR_ENV), elapsed)
        if self.device and (final or now >= self._next_gpu):
            self._next_gpu = now + GPU_SAMPLE_SECONDS
            others = other_gpu_processes(self.device, {member.pid for member in members})
            if others is not None:
                self.gpu_others = max(others, self.gpu_others or 0)

    def deadline(self) -> float:
        job = self.job
        if not self.measured:
            return job.budget_seconds + job.grace_seconds
        return self.progress.deadline(job.budget_seconds, job.grace_seconds, job.startup_seconds, job.export_seconds)


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _OutputReader(threading.Thread):
    """Drains the child's output into the log and watches it for summary lines."""

    def __init__(self, fd: int, log: BoundedLog, on_output: Callable[[str], None] | None, started: float):
        super().__init__(daemon=True)
        self.started = started
        self.first_output: float | None = None  # seconds after the start when its first output came
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
            if self.first_output is None:
                self.first_output = time.monotonic() - self.started
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
