"""Experiments on a Ray cluster: `run --executor ray` (docs/cluster.md).

`RayExecutor` has the Executor shape of execution.jobs, so the trainer and the scheduler do not know
where a job runs. Ray is imported here only, and only when a Ray executor is used: the tool without
the `ray` extra never imports it.

- Slots: one Ray actor per slot (`SlotWorker`), asking for one slot's resources (one GPU where the
  cluster has GPUs, else one CPU); how many the cluster offers is the default number of slots, and
  `--slots` caps it. An actor is made when its slot first takes a job, and again after its worker
  was lost. Its GPU is Ray's to give (CUDA_VISIBLE_DEVICES of its worker); each job reports it.
- A job travels as data, never as a path of this machine: its working folder (the recipe's files
  at the experiment's commit, which `git archive` wrote) packed as a tar, the folders it carries (the
  saved model an evaluation reads), the command, budget, environment and sandbox. On the node the
  worker unpacks it into a temporary folder and runs it with the local executor's own code
  (`LocalExecutor.execute`: the bounded log, the summary lines, the process-tree kill), inside
  bubblewrap when the job has a sandbox and the node can run one (the level in force comes back with
  the result). The folders the job brings back (the saved model) come back as a tar, unpacked with
  tarfile's `data` filter, where the harness evaluates them: the evaluation is another job, of the
  fixed files, and its printed numbers are read by the harness's code as they are locally.
- The clock is the harness's: the worker runs the job without a deadline of its own; this side
  counts the budget and grace (with the start-up, export, steal and contention allowances of
  execution.contention, from what the node measured and reports in each poll) from when the node
  started it, then has the worker stop it as locally (SIGTERM, SIGKILL after the kill wait); a
  worker that does not answer within the kill wait and FORCE_SLACK_SECONDS more is killed with
  force (`ray.kill`), and the node is swept for the job's processes by their marker.
- The log streams back: each poll brings what the worker's bounded log file gained since the last;
  the whole stream is at most the local executor's head and tail bounds, whatever the training prints.
- A worker or node that dies mid-job makes the result `lost` (the trainer's `crash: worker lost`),
  and the run goes on: the slot gets a new actor for its next job.
- Ctrl-C cancels every job as at a deadline; `close` kills every actor of this executor. The actors
  belong to the tool's Ray driver (they are not detached), so `kill -9` of the tool ends them with it
  and their trainings die with their worker (PR_SET_PDEATHSIG) or their sandbox (--die-with-parent).
  The ledger keeps each training's job as `ray:<actor name>:<job id>`, written before it starts; a
  resume looks each one up (`find_jobs`), stops any still running, sweeps every node for processes
  of the run, and says which were in flight; they are recorded as interrupted (a job is not waited
  for: the scheduler that would decide it is gone with the tool).
- A job with no slot is a harness step of this machine (the recipe's data preparation): it runs
  here, with the local executor.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoresearch.errors import InvalidSetting
from autoresearch.execution.jobs import JOB_MARKER, RUN_MARKER, JobHandle, TrainingJob, TrainingResult
from autoresearch.execution.leftovers import remove_tree, survey
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.output import LOG_HEAD_BYTES, LOG_TAIL_BYTES, BoundedLog
from autoresearch.execution.processes import KILL_WAIT_SECONDS, stop_processes_marked
from autoresearch.execution.sandbox import PACKAGE_DIR, gpu_devices, probe, relocated
from autoresearch.execution.contention import Progress

NAMESPACE = "autoresearch"  # the Ray namespace of every actor the tool makes
POLL_SECONDS = 0.1  # how long a worker holds a poll for its job's end before it answers with the news so far
POLL_TIMEOUT_SECONDS = 30.0  # one poll's answer, at most (a node that stopped answering is counted as gone then)
FORCE_SLACK_SECONDS = 10.0  # after the kill wait, before a worker that does not stop its job is killed
SWEEP_SECONDS = 30.0  # a sweep of one node for leftover processes, at most
FORWARDED_ENV_NAMES = ("AUTORESEARCH_CACHE",)
LOG_SLACK_BYTES = 64_000  # room for the line the local executor writes between a log's head and its tail
LOST_ERRORS = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
               "ActorUnavailableError", "ActorDiedError", "LocalRayletDiedError", "RaySystemError")


def ray_address(address: str | None) -> str:
    """The cluster to join: the given address, else RAY_ADDRESS, else `auto` (the cluster started on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or "auto"


# --- what travels: a job as data, and folders as tar archives

@dataclass(frozen=True)
class JobPackage:
    """A job as a node receives it: nothing in it refers to a folder of the tool's machine but as a name."""

    job_id: str
    command: str
    folder: bytes  # the job's working folder as a tar
    folder_path: str  # where that folder is on the tool's machine (the sandbox spec names it)
    carried: dict[str, bytes]  # env name -> the folder it names, as a tar
    brings_back: tuple[str, ...]  # env names of the folders to send back
    env: dict[str, str]
    passthrough: tuple[str, ...]
    isolated: bool
    budget_seconds: float
    startup_seconds: float  # the start-up allowance: also bounds, in CPU seconds, what the node counts as start-up
    makes_up_steal: bool  # a training: the node measures the machine and the phases for the driver's clock
    sandbox: object | None  # execution.sandbox.SandboxSpec with the tool's paths, moved on the node
    package_dir: str  # the tool's autoresearch package folder (the sandbox re-exposes the node's own)
    require_sandbox: bool


def pack_folder(folder: Path) -> bytes:
    """Every file under folder as an uncompressed tar (names relative to it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(folder), arcname=".")
    return buffer.getvalue()


def unpack_folder(data: bytes, into: Path) -> Path:
    """A tar from pack_folder into a folder; the `data` filter refuses links and paths that leave it."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


# --- the node's side

class NodeJob:
    """One job on a node, in a thread of its own that starts and reaps its process (the parent-death
    signal belongs to that thread), in a temporary folder that is removed once it has ended."""

    def __init__(self, runner: LocalExecutor, package: JobPackage, sandbox_check: Callable[[], tuple[bool, str | None]]):
        self.runner, self.package, self.sandbox_check = runner, package, sandbox_check
        self.root = Path(tempfile.mkdtemp(prefix="autoresearch-job-"))
        self.log_path = self.root / "job.log"
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.progress = Progress()  # what the node sees of the machine and the job's phases (execution.contention)
        self.line: str | None = None
        self.result: dict | None = None
        self.final_log = b""
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"job-{package.job_id[:8]}")
        self._thread.start()

    def _seen(self, line: str) -> None:
        self.line = line

    def _work(self) -> None:
        package = self.package
        try:
            job, level, refusal = self._unpacked()
            if refusal is not None:
                self.log_path.write_text(refusal + "\n")
                self.result = {"exit_code": 126, "timed_out": False, "cancelled": False, "seconds": 0.0,
                               "summary": {}, "log_tail": refusal, "log_bytes": len(refusal) + 1, "log_error": None}
            else:
                result = self.runner.execute(job, self._seen, package.job_id, self.cancelled, self.progress)
                self.result = {"exit_code": result.exit_code, "timed_out": result.timed_out,
                               "cancelled": result.cancelled, "seconds": result.seconds, "summary": result.summary,
                               "log_tail": result.log_tail, "log_bytes": result.log_bytes,
                               "log_error": result.log_error, "stolen_seconds": result.stolen_seconds,
                               "contention_seconds": result.contention_seconds,
                               "other_gpu_processes": result.other_gpu_processes,
                               "startup_seconds": result.startup_seconds}
            self.result.update(sandbox_level=level, device=os.environ.get("CUDA_VISIBLE_DEVICES") or None,
                               brought_back={})
            for name in package.brings_back:
                folder = self.root / "out" / name
                found = survey(folder)  # what the job left is hostile: bounded before a byte of it is read
                if found.problem:
                    self.result["stopped_for"] = f"its model folder {found.problem}"
                elif found.exists:
                    self.result["brought_back"][name] = pack_folder(folder)
        except BaseException as exc:  # a fault of the harness's side on the node: the driver raises it
            self.result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                self.final_log = self.log_path.read_bytes()
            except OSError:
                self.final_log = b""
            remove_tree(self.root)
            self.done.set()

    def _unpacked(self) -> tuple[TrainingJob, str, str | None]:
        """The job with this node's folders; the sandbox level in force, or why it may not run here."""
        package = self.package
        workdir = unpack_folder(package.folder, self.root / "work")
        env = dict(package.env)
        moves = {Path(package.folder_path): workdir, Path(package.package_dir): PACKAGE_DIR}
        for name, data in package.carried.items():
            moves[Path(env[name])] = unpack_folder(data, self.root / "in" / name)
            env[name] = str(moves[Path(env[name])])
        for name in package.brings_back:
            folder = self.root / "out" / name
            folder.mkdir(parents=True)
            moves[Path(env[name])] = folder
            env[name] = str(folder)
        sandbox, level = None, "none"
        if package.sandbox is not None:
            works, problem = self.sandbox_check()
            if works:
                sandbox, level = relocated(package.sandbox, moves), "bubblewrap"
            elif package.require_sandbox:
                return None, "none", f"autoresearch: the sandbox cannot run on node {socket.gethostname()}: {problem}"
        # No deadline of its own (infinite grace): the harness's clock on the driver ends it.
        job = TrainingJob(command=package.command, cwd=workdir, log_path=self.log_path,
                          budget_seconds=package.budget_seconds, grace_seconds=math.inf, env=env,
                          makes_up_steal=package.makes_up_steal, startup_seconds=package.startup_seconds,
                          passthrough=package.passthrough, isolated=package.isolated, sandbox=sandbox)
        return job, level, None

    def news(self, offset: int, wait_seconds: float = 0.0) -> dict:
        """What the log gained since `offset`, the last line seen, the progress so far (execution.contention),
        and the result once done; after waiting up to `wait_seconds` for the job to end (so that its end
        reaches the driver at once)."""
        done = self.done.wait(wait_seconds)
        if done:
            chunk = self.final_log[offset:]
        else:
            try:
                with open(self.log_path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(LOG_HEAD_BYTES)
            except OSError:
                chunk = b""
        return {"log": chunk, "line": self.line, "progress": self.progress.as_dict(),
                "result": self.result if done and offset + len(chunk) >= len(self.final_log) else None}


class SlotWorker:
    """The Ray actor of one slot: it runs one job at a time on its node, and answers polls about it."""

    def __init__(self, kill_wait_seconds: float, log_head_bytes: int, log_tail_bytes: int):
        self.runner = LocalExecutor(kill_wait_seconds, log_head_bytes, log_tail_bytes)
        self.jobs: dict[str, NodeJob] = {}
        self._sandbox: tuple[bool, str | None] | None = None

    def _sandbox_check(self) -> tuple[bool, str | None]:
        if self._sandbox is None:  # once per worker: the node's bubblewrap does not change under it
            found = probe(devices=gpu_devices())
            self._sandbox = (found.available, found.problem)
        return self._sandbox

    def start(self, package: JobPackage) -> dict:
        import ray

        self.jobs = {job_id: job for job_id, job in self.jobs.items() if not job.done.is_set()}
        self.jobs[package.job_id] = NodeJob(self.runner, package, self._sandbox_check)
        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def poll(self, job_id: str, offset: int) -> dict:
        return self.jobs[job_id].news(offset, POLL_SECONDS)

    def stop(self, job_id: str) -> None:
        self.jobs[job_id].cancelled.set()

    def running(self) -> list[str]:
        return [job_id for job_id, job in self.jobs.items() if not job.done.is_set()]


def sweep_node(name: str, value: str) -> int:
    """On one node: stop every process whose environment has name=value; returns how many there were."""
    return stop_processes_marked(name, value)


# --- the driver's side

class RayExecutor:
    """Runs each job of a slot on that slot's Ray actor; see the module's docstring."""

    def __init__(self, address: str | None = None, require_sandbox: bool = False,
                 kill_wait_seconds: float = KILL_WAIT_SECONDS, log_head_bytes: int = LOG_HEAD_BYTES,
                 log_tail_bytes: int = LOG_TAIL_BYTES):
        self.address = address
        self.require_sandbox = require_sandbox
        self.kill_wait_seconds = kill_wait_seconds
        self.log_head_bytes, self.log_tail_bytes = log_head_bytes, log_tail_bytes
        self.name = f"autoresearch-{uuid.uuid4().hex[:12]}"  # its actors' names start with it
        self.local = LocalExecutor(kill_wait_seconds, log_head_bytes, log_tail_bytes)
        self._workers: dict[int, tuple[str, object]] = {}  # slot -> (actor name, actor)
        self._made = 0
        self._per_slot: dict[str, float] | None = None
        self._lock = threading.Lock()

    # --- the cluster

    def _ray(self):
        import ray

        if not ray.is_initialized():
            address = ray_address(self.address)
            try:
                ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise InvalidSetting("ray_address", f"{address}: cannot join a Ray cluster there ({first}); start "
                                                    "one with `ray start --head` (docs/cluster.md)") from None
        return ray

    def offered_slots(self) -> int:
        """How many trainings the cluster can run at once: its GPUs, else its CPUs."""
        ray = self._ray()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        # A GPU slot holds no CPU in Ray's books, so that a node's CPUs never leave one of its GPUs idle.
        self._per_slot = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        if not (gpus or cpus):
            raise InvalidSetting("ray_address", f"{ray_address(self.address)}: the Ray cluster offers no GPU and no "
                                                "CPU")
        return gpus or cpus

    def _worker(self, slot: int) -> tuple[str, object]:
        with self._lock:
            if slot not in self._workers:
                ray = self._ray()
                if self._per_slot is None:
                    self.offered_slots()
                self._made += 1
                name = f"{self.name}-slot{slot}-{self._made}"
                # Threaded (max_concurrency): a stop is answered while a poll waits for the job's end.
                actor = ray.remote(SlotWorker).options(
                    name=name, namespace=NAMESPACE, max_restarts=0, max_concurrency=4, **self._per_slot).remote(
                    self.kill_wait_seconds, self.log_head_bytes, self.log_tail_bytes)
                self._workers[slot] = (name, actor)
            return self._workers[slot]

    def _forget(self, slot: int, actor) -> None:
        """The slot's actor is gone (or killed): its next job gets a new one."""
        with self._lock:
            if slot in self._workers and self._workers[slot][1] is actor:
                del self._workers[slot]

    # --- the Executor shape

    def job_ref(self, job_id: str, slot: int | None) -> str:
        if slot is None:
            return self.local.job_ref(job_id, slot)
        return f"ray:{self._worker(slot)[0]}:{job_id}"

    def submit(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> JobHandle:
        if job.slot is None:
            return self.local.submit(job, on_output)
        return JobHandle(lambda handle: self._execute(job, on_output, handle), job.job_id)

    def run(self, job: TrainingJob, on_output: Callable[[str], None] | None = None) -> TrainingResult:
        return self.submit(job, on_output).result()

    def close(self) -> None:
        """Kill every actor of this executor (their trainings end with their workers)."""
        if not self._workers:
            return
        ray = self._ray()
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for _, actor in workers:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass

    def find_jobs(self, refs: list[str], run_marker: str) -> dict[str, str]:
        """What became of jobs a killed tool left: each one still running is stopped; every node is swept."""
        ray = self._ray()
        found = {}
        for ref in refs:
            kind, _, rest = ref.partition(":")
            if kind != "ray":
                continue
            name, _, job_id = rest.rpartition(":")
            try:
                # A dead actor's name can still be found while a handle to it lives, and the class of one
                # whose driver died may no longer load: only an answer says it is there.
                actor = ray.get_actor(name, namespace=NAMESPACE)
                running = ray.get(actor.running.remote(), timeout=POLL_TIMEOUT_SECONDS)
            except Exception:
                found[ref] = "gone with the tool"
                continue
            ray.kill(actor, no_restart=True)
            still = any(other == job_id or other.startswith(job_id + "-") for other in running)
            found[ref] = "still running: stopped" if still else "its worker was still there: stopped"
        self.sweep(RUN_MARKER, run_marker)
        return found

    def sweep(self, name: str, value: str, node: str | None = None) -> int:
        """Stop the processes marked name=value on one node (or every live node); how many there were."""
        ray = self._ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node] if node else [entry["NodeID"] for entry in ray.nodes() if entry.get("Alive")]
        sweeper = ray.remote(sweep_node)
        refs = [sweeper.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                .remote(name, value) for node_id in nodes]
        try:
            return sum(ray.get(refs, timeout=SWEEP_SECONDS))
        except Exception:  # a node that died meanwhile has nothing left to sweep
            return 0

    # --- one job

    @staticmethod
    def _lost_errors(ray) -> tuple[type, ...]:
        """Ray's errors that say the actor, its worker or its node is gone (their names vary across versions)."""
        return tuple(getattr(ray.exceptions, name) for name in LOST_ERRORS if hasattr(ray.exceptions, name))

    def _package(self, job: TrainingJob, job_id: str) -> JobPackage:
        # The node's own environment gives PATH, HOME and the GPU; what the person set for the run here
        # (the data cache the prepare step filled, the recipe's `env:` names) goes with the job.
        forwarded = {name: os.environ[name] for name in (*FORWARDED_ENV_NAMES, *job.passthrough) if name in os.environ}
        return JobPackage(job_id=job_id, command=job.command, folder=pack_folder(job.cwd), folder_path=str(job.cwd),
                          carried={name: pack_folder(Path(job.env[name])) for name in job.carries},
                          brings_back=job.brings_back, env={**forwarded, **job.env}, passthrough=job.passthrough,
                          isolated=job.isolated, budget_seconds=job.budget_seconds, sandbox=job.sandbox,
                          startup_seconds=job.startup_seconds, makes_up_steal=job.makes_up_steal,
                          package_dir=str(PACKAGE_DIR), require_sandbox=self.require_sandbox)

    def _execute(self, job: TrainingJob, on_output: Callable[[str], None] | None, handle: JobHandle) -> TrainingResult:
        ray = self._ray()
        lost_errors = self._lost_errors(ray)
        name, actor = self._worker(job.slot)
        log = BoundedLog(job.log_path, self.log_head_bytes + self.log_tail_bytes + LOG_SLACK_BYTES, LOG_SLACK_BYTES)
        started = time.monotonic()
        place: dict = {}
        try:
            place = ray.get(actor.start.remote(self._package(job, handle.id)), timeout=POLL_TIMEOUT_SECONDS)
            reply = self._follow(ray, actor, job, handle, log, on_output, time.monotonic())
        except lost_errors + (ray.exceptions.GetTimeoutError,) as exc:
            self._forget(job.slot, actor)
            if place.get("node"):
                self.sweep(JOB_MARKER, handle.id, place["node"])
            return self._lost(job, log, started, f"the Ray worker running it was lost ({type(exc).__name__})")
        if reply is None:  # it did not stop when asked: killed with its worker
            ray.kill(actor, no_restart=True)
            self._forget(job.slot, actor)
            self.sweep(JOB_MARKER, handle.id, place["node"])
            result = self._lost(job, log, started, "the Ray worker did not stop it when asked: killed with force")
            result.lost = False
            result.timed_out = not handle.cancelled.is_set()
            result.cancelled = handle.cancelled.is_set()
            return result
        log.close()
        outcome = reply["result"]
        if "error" in outcome:
            raise RuntimeError(f"the Ray worker {name} failed to run a job: {outcome['error']}")
        for env_name, data in outcome["brought_back"].items():
            unpack_folder(data, Path(job.env[env_name]))
        stopped_at_deadline = reply.get("timed_out", False)
        return TrainingResult(exit_code=outcome["exit_code"], timed_out=outcome["timed_out"] or stopped_at_deadline,
                              cancelled=outcome["cancelled"] and not stopped_at_deadline, seconds=outcome["seconds"],
                              summary=outcome["summary"], log_path=job.log_path, log_tail=outcome["log_tail"],
                              log_bytes=outcome["log_bytes"], log_error=log.error or outcome["log_error"],
                              stolen_seconds=outcome.get("stolen_seconds", 0.0),
                              contention_seconds=outcome.get("contention_seconds", 0.0),
                              other_gpu_processes=outcome.get("other_gpu_processes"),
                              startup_seconds=outcome.get("startup_seconds"), device=outcome["device"],
                              stopped_for=outcome.get("stopped_for"),
                              sandbox_level=outcome["sandbox_level"])

    def _follow(self, ray, actor, job: TrainingJob, handle: JobHandle, log: BoundedLog,
                on_output: Callable[[str], None] | None, started: float) -> dict | None:
        """Poll the worker until the job's result comes; stop it at its deadline or when cancelled.

        Returns the last reply (with `timed_out` when the harness's clock stopped it), or None when the
        worker did not stop the job within the kill wait and FORCE_SLACK_SECONDS.
        """
        offset, last_line, stop_sent, timed_out = 0, None, None, False
        deadline = job.budget_seconds + job.grace_seconds
        while True:
            reply = ray.get(actor.poll.remote(handle.id, offset), timeout=POLL_TIMEOUT_SECONDS)
            if reply["log"]:
                log.write(reply["log"])
                offset += len(reply["log"])
            if reply["line"] is not None and reply["line"] != last_line and on_output is not None:
                on_output(reply["line"])
            last_line = reply["line"]
            if reply["result"] is not None:
                return {**reply, "timed_out": timed_out}
            now = time.monotonic()
            if job.makes_up_steal:  # the one rule of execution.contention, on what the node saw
                deadline = Progress(**reply["progress"]).deadline(job.budget_seconds, job.grace_seconds,
                                                                  job.startup_seconds, job.export_seconds)
            if stop_sent is None:
                timed_out = now >= started + deadline
                if timed_out or handle.cancelled.is_set():
                    actor.stop.remote(handle.id)
                    stop_sent = now
            elif now - stop_sent > self.kill_wait_seconds + FORCE_SLACK_SECONDS:
                return None

    def _lost(self, job: TrainingJob, log: BoundedLog, started: float, why: str) -> TrainingResult:
        log.write(f"\n[autoresearch: {why}]\n".encode())
        log.close()
        return TrainingResult(exit_code=None, timed_out=False, seconds=time.monotonic() - started, summary={},
                              log_path=job.log_path, log_tail=log.tail_text(), log_bytes=log.total_bytes,
                              log_error=log.error, lost=True)
