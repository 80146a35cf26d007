"""How fast the morning review answers on a big ledger: `log` and `runs` over 10,000 experiments.

Synthesizes a workspace whose ledger holds one run of N experiments (default 10,000) plus a few
small runs, written through the Ledger class with realistic sizes: a diff per experiment, a log
tail for each failure, a summary, and one or two LLM calls whose prompt is ~12 kB of JSON. Then
times each command as a subprocess, the way a person runs it (Python start-up and imports
included), with stdout to a pipe. Target on the 2-core reference machine: under 0.5 s each.

    .venv/bin/python benchmarks/review_speed.py [--experiments 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.ledger import Ledger
from autoresearch.repo import Repo

OUTCOMES = ("keep", "discard", "discard", "discard", "discard", "crash", "timeout", "invalid")
DIFF = """--- a/train.py
+++ b/train.py
@@ -10,7 +10,7 @@
 # --- hyperparameters
 DEPTH = 8
-LEARNING_RATE = {old}
+LEARNING_RATE = {new}
 WARMUP_STEPS = 100
 WEIGHT_DECAY = 0.1
 BATCH_SIZE = 64
""" * 4
LOG_TAIL = "step 120 loss 3.21\n" * 30 + "Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n"
PROMPT = [{"role": "system", "content": "You are the research agent. " * 60},
          {"role": "user", "content": "# train.py\n" + "x = 1  # a line of the training script\n" * 280}]


def synthesize(root: Path, experiments: int) -> None:
    """A committed workspace whose ledger has a run `big` of `experiments` and three runs of 20."""
    root.mkdir(parents=True)
    (root / ".gitignore").write_text("runs/\n")
    Repo.init(root).commit_all("workspace")
    ledger = Ledger(root / "runs" / "ledger.db")
    rng = random.Random(0)
    for tag, count in (("small-1", 20), ("small-2", 20), ("big", experiments), ("small-3", 20)):
        ledger.create_run(tag, recipe="recipes/tiny", branch=f"autoresearch/{tag}", worktree=str(root / tag),
                          base_commit="0" * 40, agent="llm", model="gpt-5-mini", metric="val_bpb",
                          direction="lower", budget_seconds=300.0)
        best = 1.2
        ledger._db.execute("BEGIN")
        for number in range(count):
            outcome = "keep" if number == 0 else rng.choice(OUTCOMES)
            metric = None
            if outcome in ("keep", "discard"):
                metric = best - rng.uniform(0.0, 0.002) if outcome == "keep" else best + rng.uniform(0.0, 0.05)
            ledger.start_experiment(tag, number, description=f"try learning rate variant {number}",
                                    commit_sha=f"{number:040x}", parent_sha=f"{number - 1:040x}", seed=0)
            ledger.update_experiment(
                tag, number, outcome=outcome, reason=None if outcome in ("keep", "discard") else "exit code 1: boom",
                metric=metric, best_before=best, summary={"val_bpb": metric or 0.0, "peak_memory_mb": 40000.0,
                                                          "training_seconds": 300.0, "mfu_percent": 39.8},
                diff=DIFF.format(old=0.04, new=0.04 + number * 1e-6), log_path=str(root / "runs" / tag / f"{number}.log"),
                log_tail=LOG_TAIL if outcome not in ("keep", "discard") else None,
                finished_at="2026-11-23T08:00:00+00:00", propose_seconds=20.0, train_seconds=305.0,
                total_seconds=330.0)
            for attempt in range(1, 2 + (number % 3 == 0)):
                ledger.record_llm_call(tag, number, attempt, "gpt-5-mini", PROMPT, "DESCRIPTION: x\n" * 40, None,
                                       3000, 400, 12.5)
            if outcome == "keep":
                best = metric
        ledger._db.execute("COMMIT")
        ledger.set_run_status(tag, "finished")
    ledger.close()


def time_command(root: Path, args: list[str], repeat: int) -> tuple[float, float, float, int]:
    """Best and median wall-clock seconds of `autoresearch ARGS`, median CPU seconds, and the bytes it printed.

    The best of several runs is the command's own time; the median shows what other work on the
    machine added. The CPU time (user + system of the child) is what the command itself costs.
    """
    command = [str(Path(sys.executable).parent / "autoresearch"), *args]
    # As a person's shell runs it: with the bytecode cache (a sandbox may set PYTHONDONTWRITEBYTECODE,
    # which recompiles the tool's modules on every start), warmed by one untimed run.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "160"
    subprocess.run(command, cwd=root, capture_output=True, check=True, env=env)
    seconds, cpu, size = [], [], 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=root, capture_output=True, check=True, env=env)
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        size = len(done.stdout)
    return min(seconds), statistics.median(seconds), statistics.median(cpu), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        started = time.perf_counter()
        synthesize(root, args.experiments)
        size_mb = (root / "runs" / "ledger.db").stat().st_size / 1e6
        print(f"ledger: {args.experiments} experiments in run big (+60 in 3 small runs), {size_mb:.0f} MB, "
              f"written in {time.perf_counter() - started:.1f}s")
        for label, command in (("log", ["log", "--tag", "big"]), ("log --json", ["log", "--tag", "big", "--json"]),
                               ("log --tsv", ["log", "--tag", "big", "--tsv"]),
                               ("log --last 20", ["log", "--tag", "big", "--last", "20"]),
                               ("log --outcome keep", ["log", "--tag", "big", "--outcome", "keep"]),
                               ("runs", ["runs"]), ("runs --json", ["runs", "--json"])):
            best, median, cpu, size = time_command(root, command, args.repeat)
            print(f"{label:<20} best {best:.3f}s  median {median:.3f}s  cpu {cpu:.3f}s  ({size / 1e6:.1f} MB of output)")


if __name__ == "__main__":
    main()
