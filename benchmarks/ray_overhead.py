"""What Ray adds per experiment: the same serial run through the local executor and through Ray, side by side.

The synthetic recipe (tests/conftest.py) with a training that does nothing but save its model, and a
scripted chat-completions endpoint on 127.0.0.1 that answers at once, so that what is left of an
experiment is the harness's own work: write the commit's copy, start the training (in the sandbox),
evaluate the model, decide. One slot, no drafting ahead, N experiments after the baseline, both
executors in one run of this script (local first, then Ray against a local head with four logical
GPUs that the script starts, unless RAY_ADDRESS names one). Reported, as medians over the experiments:
- the experiment's wall time, from its row to its outcome (what a person waits);
- the training job and the evaluation job, each from submit to result as the slot's thread sees it;
and the difference and ratio of Ray to local for each.

    .venv/bin/python benchmarks/ray_overhead.py [--experiments 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_workspace, reply  # noqa: E402
from duty_cycle import SlotClock, start_ray  # noqa: E402
from fake_llm import FakeLLM  # noqa: E402

from autoresearch.agents import LLMAgent  # noqa: E402
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.execution.local import LocalExecutor  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402


class TimedJobs:
    """Wraps an executor: how long each job took from submit to result, by its kind (training or evaluation)."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds: dict[str, list[float]] = {"training": [], "evaluation": []}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, job, on_output=None):
        handle = self.inner.submit(job, on_output)
        started = time.monotonic()
        kind = "evaluation" if "AUTORESEARCH_MODEL_DIR" in job.env else "training"
        if job.slot is not None:
            handle.on_done(lambda _: self.seconds[kind].append(time.monotonic() - started))
        return handle


def measure(experiments: int, executor) -> dict:
    fake = FakeLLM()
    counter = iter(range(1_000_000))

    def answer(request: dict) -> str:  # a new change each time, that applies to any train.py of the run
        n = next(counter)
        return reply(f"variant {n}", "# --- summary", f"# --- summary\n# variant {n}")

    fake.set_script([answer])
    timed = TimedJobs(executor)
    here = os.getcwd()  # back there before the workspace goes: Ray resolves the current folder when it joins
    with tempfile.TemporaryDirectory() as tmp:
        root = make_workspace(Path(tmp) / "ws")
        os.chdir(root)
        clock = SlotClock()
        loop = Session(Workspace.find(), LLMAgent(model="fake-model", base_url=fake.base_url, request_timeout=60),
                            clock, executor=timed)
        try:
            loop.start(RunOptions(tag="bench", max_experiments=experiments + 1, noise_runs=0, confirm_runs=0,
                                  sandbox="on", slots=1, draft_ahead=False,
                                  executor="ray" if type(executor).__name__ == "RayExecutor" else "local"))
            numbers = [row["number"] for row in loop.ledger.experiments("bench") if row["number"] > 0]
        finally:
            loop.close()
            fake.close()
            os.chdir(here)
    return {"experiment": statistics.median(clock.closed[n] - clock.opened[n] for n in numbers),
            "training": statistics.median(timed.seconds["training"][1:]),  # the baseline's first one left out
            "evaluation": statistics.median(timed.seconds["evaluation"][1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10)
    args = parser.parse_args()
    local = measure(args.experiments, LocalExecutor())
    ray = start_ray()
    from autoresearch.execution.ray import RayExecutor

    through_ray = measure(args.experiments, RayExecutor())
    ray.shutdown()
    print(f"{args.experiments} experiments after the baseline, one slot, serial, sandbox on, {os.cpu_count()} cores "
          f"(medians)")
    print(f"{'':22}{'local':>10}{'ray':>10}{'ray - local':>14}{'ray / local':>13}")
    for name, label in (("experiment", "experiment (wall)"), ("training", "training job"),
                        ("evaluation", "evaluation job")):
        print(f"{label:22}{local[name]:9.3f}s{through_ray[name]:9.3f}s{through_ray[name] - local[name]:+13.3f}s"
              f"{through_ray[name] / local[name]:12.2f}x")


if __name__ == "__main__":
    main()
