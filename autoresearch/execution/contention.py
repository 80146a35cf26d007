"""How busy the machine was while a training ran, and the harness's deadline for it.

The machine is part of every wall-clock measurement. Besides a hypervisor's steal (execution.steal),
the commonest thief is other processes on the same machine: a browser, another job, the tool's own
local LLM server. `ContentionMeter` measures it from outside the training: the machine's busy CPU
time (/proc/stat) less the CPU time of the training's own process tree, which the harness samples
itself from /proc (`TreeCpu`), never from anything the training reports. So a training that loads
the machine itself (busy children, threads) only raises its own CPU time: it is not contention and
buys no time. On a GPU box, `other_gpu_processes` counts the other processes on the training's GPU
and `gpus_computing` which GPUs given processes compute on (a model server's, beside the trainings);
nvidia-smi where present, nothing where absent.

`deadline_seconds` is the one rule for when the harness stops a training (the local executor and
the Ray driver both use it): start-up (until its first line of output, at most the recipe's
`startup_seconds`), the budget, `grace_seconds`, the export (`export_seconds`), plus the steal and the
contention measured meanwhile, each at most a quarter of the budget. A training that starts writing
its model (the export) before then has `export_seconds` from that moment and no more: claiming to
export early never buys time (docs/trust.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

import psutil

NVIDIA_SMI_TIMEOUT_SECONDS = 5.0
BUSY_SHARE = 0.25  # other work took at least this share of the machine: it was busy
BUSY_LOAD_PER_CPU = 0.5  # a load average of at least this per CPU as a run starts: it is busy


def machine_cpus() -> int:
    return os.cpu_count() or 1


def _busy_ticks() -> int | None:
    """The machine's busy CPU time so far, in clock ticks (user, nice, system, irq, softirq), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[1:8])
    return user + nice + system + irq + softirq  # guest time is already inside user


class TreeCpu:
    """CPU seconds a process tree used, as the harness saw it.

    At each sample: the user and system time of every member still there (a zombie included), plus the
    time of the children each has reaped (which holds every member that ended and was reaped inside the
    tree, once). The figure kept is the largest seen, so a member that ended between two samples and
    whose time left the tree with it (an orphan reaped outside it, without the sandbox) keeps what was
    seen of it. Counting a process's time twice is possible only within one sample's race with its
    reaping, and only makes the tree's time larger: the contention figure errs on the low side.
    """

    def __init__(self):
        self._seconds = 0.0

    def sample(self, processes) -> None:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except (psutil.Error, OSError):
                continue
            total += times.user + times.system + getattr(times, "children_user", 0.0) + getattr(
                times, "children_system", 0.0)
        self._seconds = max(self._seconds, total)

    def seconds(self) -> float:
        return self._seconds


class ContentionMeter:
    """CPU time other processes took while a training ran, as wall seconds of the machine (Linux; 0 elsewhere).

    `seconds()` is (the machine's busy CPU time since the start - the tree's own) / the machine's CPUs:
    how long the whole machine worked for others. `share(wall)` is that over the wall time.
    """

    def __init__(self, tree: TreeCpu):
        self.tree = tree
        self.cpus = machine_cpus()
        self._start = _busy_ticks()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def cpu_seconds(self) -> float:
        """CPU seconds of other processes, all CPUs together."""
        now = _busy_ticks()
        if now is None or self._start is None:
            return 0.0
        return max(0.0, (now - self._start) / self._tick - self.tree.seconds())

    def seconds(self) -> float:
        return self.cpu_seconds() / self.cpus


def training_cpus() -> int:
    """The CPUs a training on this machine may use (this process's affinity, which it inherits)."""
    try:
        return len(os.sched_getaffinity(0)) or machine_cpus()
    except (AttributeError, OSError):
        return machine_cpus()


def busy_machine_line(load: float | None = None, cpus: int | None = None) -> str | None:
    """One line when the machine is already busy as a run starts (the 1-minute load average is at least
    half the CPUs trainings use), else None: other work costs the trainings steps and widens the noise."""
    cpus = cpus or training_cpus()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
    if load < BUSY_LOAD_PER_CPU * cpus:
        return None
    return (f"this machine is busy: load average {load:.1f} over the {cpus} CPUs trainings use; other work "
            f"costs the trainings steps and widens the noise floor (the contention of each training is measured "
            f"and shown; a quieter machine gives steadier numbers)")


def busy_share(contention_seconds: float | None, wall_seconds: float | None) -> float | None:
    """The share of the machine other work took while a training ran (0..1), or None unmeasured."""
    if contention_seconds is None or not wall_seconds:
        return None
    return max(0.0, min(1.0, contention_seconds / wall_seconds))


def other_gpu_processes(device: str | None, own_pids: set[int]) -> int | None:
    """How many processes other than `own_pids` compute on the GPU `device` (an index of
    CUDA_VISIBLE_DEVICES), or None where there is no GPU or no nvidia-smi to ask."""
    apps = _compute_apps() if device else None
    if apps is None:
        return None
    index = device.split(",")[0].strip()
    pids = {pid for pid, gpu in apps if index in gpu}
    return len(pids - own_pids)


def gpus_computing(pids: set[int]) -> set[str]:
    """The GPUs on which any of `pids` computes, each by its nvidia-smi index and its uuid; empty where none does
    or where there is no nvidia-smi to ask."""
    return {name for pid, gpu in _compute_apps() or [] if pid in pids for name in gpu}


def _compute_apps() -> list[tuple[int, tuple[str, str]]] | None:
    """Every process computing on a GPU, with its GPU's (index, uuid); None without nvidia-smi or its answer."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        gpus = {row[1]: (row[0], row[1]) for row in _smi("--query-gpu=index,uuid") if len(row) > 1}
        apps = _smi("--query-compute-apps=pid,gpu_uuid")
    except (OSError, subprocess.SubprocessError):
        return None
    return [(int(row[0]), gpus[row[1]]) for row in apps if len(row) > 1 and row[0].isdigit() and row[1] in gpus]


def _smi(query: str) -> list[list[str]]:
    done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                          timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True)
    return [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def made_up(taken_seconds: float, budget: float) -> float:
    """How much of the time the machine took (steal, or other processes' CPU) a training gets back: at most a
    quarter of its budget, so that no neighbour, real or staged, buys it more than that."""
    return min(taken_seconds, budget / 4)


def deadline_seconds(budget: float, grace: float, startup_allowance: float, export_allowance: float,
                     startup_used: float | None, export_claimed: float | None, steal: float = 0.0,
                     contention: float = 0.0) -> float:
    """Seconds after its start at which a training is stopped (see the module's docstring).

    `startup_used`: when its start-up ended (Progress; None: not yet, the whole allowance counts);
    `export_claimed`: when it first wrote into its model folder (None: not yet).
    """
    startup = startup_allowance if startup_used is None else min(startup_used, startup_allowance)
    extension = made_up(steal, budget) + made_up(contention, budget)
    end_of_training = startup + budget + grace + extension
    if export_allowance and export_claimed is not None:  # without an export allowance, grace covers the export
        return min(export_claimed, end_of_training) + export_allowance
    return end_of_training + export_allowance


@dataclass
class Progress:
    """What the harness has seen of a running training so far, in seconds after its start: the end of its
    start-up (its first output on the pipe, or the moment its process tree had used as many CPU seconds
    as the start-up allowance has wall seconds, whichever came first), its first write into the model
    folder, and the machine's steal and contention. All of it is read from outside the training; the
    Ray driver gets it from the node in each poll."""

    startup_ended: float | None = None
    export_claimed: float | None = None
    steal: float = 0.0
    contention: float = 0.0

    def look_for_export(self, output_dir: str | None, elapsed: float) -> None:
        if self.export_claimed is not None or not output_dir:
            return
        try:
            with os.scandir(output_dir) as entries:
                if next(entries, None) is not None:
                    self.export_claimed = elapsed
        except OSError:
            pass

    def deadline(self, budget: float, grace: float, startup_allowance: float, export_allowance: float) -> float:
        return deadline_seconds(budget, grace, startup_allowance, export_allowance, self.startup_ended,
                                self.export_claimed, self.steal, self.contention)

    def as_dict(self) -> dict:
        return asdict(self)
