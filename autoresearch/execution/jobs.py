"""The seam between the harness and where its jobs run: a job, its result, its handle, an executor, a slot.

A job is plain data (`TrainingJob`): the command, where, with which extra environment, for how long,
on which slot, inside which sandbox. An `Executor` (this machine: `execution.local`; a Ray cluster:
`execution.ray`) takes it and returns a `JobHandle` at once; the handle waits for the
`TrainingResult`, says whether the job is done, cancels it, and calls back when it ends. A job's id
is its processes' marker (`JOB_MARKER` in their environment) and, through `Executor.job_ref`, what
the ledger keeps of it before it starts, so that a resume can find it. The training and the harness
share the names of the environment variables below; nothing else of the harness is known here.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

JOB_MARKER = "AUTORESEARCH_JOB"
RUN_MARKER = "AUTORESEARCH_RUN"  # set by the loop: which run a training process belongs to
OUTPUT_DIR_ENV = "AUTORESEARCH_OUTPUT_DIR"  # where a training saves its model


@dataclass(frozen=True)
class Slot:
    """One place a training runs at once: a GPU of this box (`device`, for CUDA_VISIBLE_DEVICES), or a CPU slot."""

    index: int
    device: str | None = None


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
    # The deadline moves by the steal and by the contention measured while it runs, each up to a quarter of
    # the budget (execution.contention.deadline_seconds); a training's, not a harness step's.
    makes_up_steal: bool = False
    startup_seconds: float = 0.0  # start-up before its first line of output, at most this, is not the budget's
    export_seconds: float = 0.0  # saving the model after the budget (or from its first write into the folder)
    sandbox: object | None = None  # an execution.sandbox.SandboxSpec: the command runs inside bubblewrap as it describes
    job_id: str | None = None  # the harness's name for it (its process marker); None: a fresh one
    slot: int | None = None  # which of the executor's slots it takes; None: a harness step of this machine
    # Names in `env` whose values are folders: what travels with the job to where it runs (read), and
    # what it writes there and must bring back (the saved model). Only an executor elsewhere moves them.
    carries: tuple[str, ...] = ()
    brings_back: tuple[str, ...] = ()
    watch: object | None = None  # the harness's limits checked while it runs (watch.Watch: disk, memory); local only


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
    # The machine's time other processes took while it ran (CPU seconds / the machine's CPUs), and the most
    # other processes seen on its GPU (None: no GPU or no nvidia-smi); both harness-measured (execution.contention)
    contention_seconds: float = 0.0
    other_gpu_processes: int | None = None
    startup_seconds: float | None = None  # until its first line of output, as the harness saw it
    cancelled: bool = False  # stopped by the harness (Ctrl-C, the run stopping), not finished
    lost: bool = False  # the worker or node running it died before it ended (an executor elsewhere)
    device: str | None = None  # the GPU it was given where the executor chose one (Ray), as CUDA_VISIBLE_DEVICES
    sandbox_level: str | None = None  # the sandbox in force where it ran, where that was decided there (Ray)
    stopped_for: str | None = None  # stopped by its watch (execution/watch.py): over its disk quota or memory limit


def new_job_id() -> str:
    return uuid.uuid4().hex


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
