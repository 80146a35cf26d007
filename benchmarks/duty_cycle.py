"""How much of the night the slots spend training: the serial loop against drafting ahead, on 1 and 4 slots.

A synthetic recipe whose training sleeps its whole budget (so two cores can stand in for four GPUs)
and a scripted chat-completions endpoint on 127.0.0.1 that answers each proposal after a delay of
20% of the budget. Each configuration runs a baseline and then N experiments (default 20) in a
fresh workspace, in one run of this script, and reports:
- duty cycle: training seconds summed over the slots / (slots x wall seconds), over the experiments
  after the baseline (wall: from the baseline's decision to the last experiment's end; drafts made
  while the baseline trained are hidden in its training, which used the slots); the run's own
  figure from the ledger, as `autoresearch runs` shows it, beside it: the whole run, the baseline
  and its noise runs (one per extra slot, side by side, as a run on N GPUs would have) included;
- experiments per hour, and the ratio of 4 slots to 1;
- the scheduler's own time per training on a slot: from one training's start on a slot to the next
  one's, less the first's training and evaluation (the gap a slot waits between two trainings).
Targets: duty cycle at least 0.95 with drafting ahead on 1 and on 4 slots; 4 slots at least 3.6x
the experiments per hour of 1; the loop's own time per experiment at most 0.25 s median.

`--executor ray` runs the same through Ray (execution/ray.py): against RAY_ADDRESS if set, else a local
head this script starts with four logical GPUs and stops; `--slots 4` runs only the 4-slot rows.

    .venv/bin/python benchmarks/duty_cycle.py [--experiments 20] [--budget 10] [--executor ray] [--slots 4]
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

from conftest import SYNTH_TRAIN, make_workspace, reply  # noqa: E402
from fake_llm import FakeLLM  # noqa: E402

from autoresearch.agents import LLMAgent  # noqa: E402
from autoresearch.console import Reporter  # noqa: E402
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.review import run_summary  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402

SLEEPING_TRAIN = SYNTH_TRAIN.replace("time.sleep(SLEEP_SECONDS)",
                                     'time.sleep(float(os.environ["AUTORESEARCH_TIME_BUDGET"]))')
CONFIGURATIONS = [("serial (today's loop), 1 slot", 1, False), ("drafting ahead, 1 slot", 1, True),
                  ("serial, 4 slots", 4, False), ("drafting ahead, 4 slots", 4, True)]


class SlotClock(Reporter):
    """When each training started, per slot, and when each experiment started and ended (the loop's
    own events, on the monotonic clock)."""

    def __init__(self):
        self.starts: dict[int, list[tuple[float, int]]] = {}
        self.opened: dict[int, float] = {}
        self.closed: dict[int, float] = {}

    def experiment_started(self, number):
        self.opened.setdefault(number, time.monotonic())

    def experiment_finished(self, row, best, baseline):
        self.closed[row["number"]] = time.monotonic()

    def phase(self, name, description=None, budget=None, grace=None, slot=None, number=None):
        if name == "training":
            self.starts.setdefault(slot or 0, []).append((time.monotonic(), number))


def proposals(delay: float):
    """Each request answered after `delay` with a new change that applies to any train.py of the run."""
    counter = iter(range(1_000_000))

    def answer(request: dict) -> dict:
        n = next(counter)
        return {"content": reply(f"variant {n}", "# --- summary", f"# --- summary\n# variant {n}"),
                "delay": delay}

    return answer


def make_executor(name: str):
    """None (the loop's own local executor), or a Ray executor on the cluster start_ray joined."""
    if name == "local":
        return None
    from autoresearch.execution.ray import RayExecutor

    return RayExecutor()


def start_ray(gpus: int = 4):
    """Join RAY_ADDRESS, or start a local head with logical GPUs (stopped by ray.shutdown at the end)."""
    import logging

    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace="autoresearch", logging_level=logging.ERROR,
                 log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=gpus, num_gpus=gpus, include_dashboard=False, namespace="autoresearch",
                 _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"), logging_level=logging.ERROR,
                 log_to_driver=False)
    return ray


def measure(experiments: int, budget: float, slots: int, draft_ahead: bool, executor: str = "local") -> dict:
    fake = FakeLLM()
    here = os.getcwd()  # back there before the workspace goes: Ray resolves the current folder when it joins
    with tempfile.TemporaryDirectory() as tmp:
        root = make_workspace(Path(tmp) / "ws", train=SLEEPING_TRAIN)
        os.chdir(root)
        fake.set_script([proposals(0.2 * budget)])
        clock = SlotClock()
        agent = LLMAgent(model="fake-model", base_url=fake.base_url, request_timeout=60)
        loop = Session(Workspace.find(), agent, clock, executor=make_executor(executor))
        try:
            loop.start(RunOptions(tag="bench", budget_seconds=budget, max_experiments=experiments + 1,
                                  noise_runs=slots - 1, confirm_runs=0, sandbox="on", slots=slots,
                                  draft_ahead=draft_ahead, executor=executor))
            rows = [row for row in loop.ledger.experiments("bench") if row["number"] > 0]
            runs = {(run["experiment"], run["attempt"]): run for run in loop.ledger.training_runs("bench")}
            summary = run_summary(loop.ledger, "bench")
        finally:
            loop.close()
            fake.close()
            os.chdir(here)
    wall = max(clock.closed[row["number"]] for row in rows) - clock.closed[0]
    training = sum(runs[(row["number"], 0)]["seconds"] or 0.0 for row in rows)
    gaps = []
    for starts in clock.starts.values():
        for (at, number), (next_at, _) in zip(starts, starts[1:]):
            run = runs[(number, 0)]
            gaps.append(next_at - at - (run["seconds"] or 0.0) - (run["evaluation_seconds"] or 0.0))
    return {"experiments": len(rows), "duty": training / (slots * wall), "ledger_duty": summary["duty_cycle"],
            "per_hour": len(rows) / wall * 3600, "wall": wall, "gap": statistics.median(gaps) if gaps else 0.0,
            "evaluation": statistics.median(runs[(row["number"], 0)]["evaluation_seconds"] or 0.0 for row in rows),
            "outcomes": sorted({row["outcome"] for row in rows})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds each training sleeps")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--slots", type=int, default=None, help="only the configurations of this many slots")
    args = parser.parse_args()
    ray = start_ray() if args.executor == "ray" else None
    print(f"{args.experiments} experiments after the baseline, a budget of {args.budget:g} s, the endpoint "
          f"answering after {0.2 * args.budget:g} s, on {os.cpu_count()} cores, executor {args.executor}")
    results = {}
    for name, slots, ahead in CONFIGURATIONS:
        if args.slots is not None and slots != args.slots:
            continue
        results[(slots, ahead)] = result = measure(args.experiments, args.budget, slots, ahead, args.executor)
        print(f"{name:32} duty cycle {result['duty']:.3f} (ledger {result['ledger_duty']:.3f})  "
              f"{result['per_hour']:7.1f} experiments/hour  wall {result['wall']:6.1f} s  "
              f"slot gap {result['gap']:.3f} s median  evaluation {result['evaluation']:.2f} s median  "
              f"outcomes {', '.join(result['outcomes'])}")
    if (4, True) in results and (1, True) in results:
        ratio = results[(4, True)]["per_hour"] / results[(1, True)]["per_hour"]
        print(f"4 slots against 1, drafting ahead: {ratio:.2f}x the experiments per hour (target at least 3.6x)")
    if (1, True) in results and (1, False) in results:
        serial = results[(1, True)]["per_hour"] / results[(1, False)]["per_hour"]
        print(f"drafting ahead against serial, 1 slot: {serial:.2f}x the experiments per hour")
    if ray is not None:
        ray.shutdown()


if __name__ == "__main__":
    main()
