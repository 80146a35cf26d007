"""What the trainings run on, in one line for the agent: the CPU cores and the GPUs with their memory.

On a fixed-time budget the hardware decides what pays (a bigger model on an H100, fewer threads'
worth of work on two cores). The GPUs are asked of `nvidia-smi`, which holds nothing once it has
answered; torch is never imported here: in the tool's own process it would load for seconds and,
asked about a GPU, keep a CUDA context (and its memory) for the whole run beside the trainings.
Asked once per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

GPU_QUERY_SECONDS = 10


@functools.cache
def describe_hardware() -> str:
    """`16 CPU cores; GPU: 1 x NVIDIA H200 (141 GiB)`, or `2 CPU cores; no GPU found`."""
    cores = os.cpu_count() or 1
    cpu = f"{cores} CPU core" + ("s" if cores != 1 else "")
    gpus = nvidia_gpus()
    if not gpus:
        return f"{cpu}; no GPU found"
    kinds: dict[str, int] = {}
    for gpu in gpus:
        kinds[gpu] = kinds.get(gpu, 0) + 1
    return f"{cpu}; GPU: " + ", ".join(f"{count} x {kind}" for kind, count in kinds.items())


def nvidia_gpu_ids() -> list[tuple[str, str]] | None:
    """Each NVIDIA GPU of this machine as (index, uuid), as CUDA_VISIBLE_DEVICES may name it; None when
    nvidia-smi is missing or fails (the machine shows no GPU)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        listed = subprocess.run([tool, "--query-gpu=index,uuid", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=GPU_QUERY_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in listed.splitlines():
        index, _, uuid = line.partition(",")
        if index.strip():
            gpus.append((index.strip(), uuid.strip()))
    return gpus


def nvidia_gpus() -> list[str]:
    """Each visible NVIDIA GPU as `name (N GiB)`; empty without nvidia-smi or when it fails."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listed = subprocess.run([tool, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=GPU_QUERY_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in listed.splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append(f"{name.strip()} ({float(memory) / 1024:.0f} GiB)")
        except ValueError:
            continue
    return gpus
