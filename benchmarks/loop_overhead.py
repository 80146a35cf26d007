"""The tool's own time per experiment, outside the agent and the training process.

Runs N experiments (default 50) with the offline mutate agent on a synthetic recipe whose
training script finishes at once, in a fresh temporary workspace, and reports per experiment
`total - training process - evaluation process - proposing + prompt building`: git (the commit,
the fresh copy of it the training runs in, the fixed files the evaluation runs), the guard, the
ledger, the lineage and the prompt, results.tsv. The training and evaluation processes (the
recipe's own work, and the sandbox around them) are reported beside it, once with the sandbox and
once without, in the same run of the benchmark.
The loop runs serially here (drafting ahead and slots are benchmarks/duty_cycle.py's).
Target on the 2-core reference machine: the loop's own time at most 0.25 s median.

    .venv/bin/python benchmarks/loop_overhead.py [--experiments 50]
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

from conftest import make_workspace  # noqa: E402

from autoresearch.agents import MutateAgent  # noqa: E402
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.prompts import build_messages  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402


class PromptBuildingMutateAgent(MutateAgent):
    """The mutate agent, but it also builds the LLM prompt, so that cost is measured too."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.prompt_seconds: list[float] = []

    def propose(self, context, record_call, on_writing=None):
        started = time.perf_counter()
        build_messages(context)
        self.prompt_seconds.append(time.perf_counter() - started)
        return super().propose(context, record_call, on_writing)


def measure(experiments: int, sandbox: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_workspace(Path(tmp) / "ws")
        os.chdir(root)
        agent = PromptBuildingMutateAgent(seed=0)
        loop = Session(Workspace.find(), agent)
        loop.start(RunOptions(tag="bench", max_experiments=experiments + 1, sandbox=sandbox, draft_ahead=False))
        rows = [r for r in loop.ledger.experiments("bench") if r["number"] > 0]
        evaluation = {run["experiment"]: 0.0 for run in loop.ledger.training_runs("bench")}
        for run in loop.ledger.training_runs("bench"):
            evaluation[run["experiment"]] += run["evaluation_seconds"] or 0.0
        level = loop.ledger.run("bench")["sandbox"]
        os.chdir(tmp)
    # The prompt is built inside proposing; it is the tool's work, so it is added back.
    overhead = sorted(r["total_seconds"] - (r["train_seconds"] or 0) - evaluation[r["number"]]
                      - (r["propose_seconds"] or 0) + prompt for r, prompt in zip(rows, agent.prompt_seconds))
    trained = sum(r["outcome"] in ("keep", "discard") for r in rows)
    return {"sandbox": level, "experiments": len(rows), "trained_and_decided": trained, "overhead_median_s": statistics.median(overhead),
            "overhead_p90_s": overhead[int(0.9 * (len(overhead) - 1))], "overhead_max_s": overhead[-1],
            "training_process_median_s": statistics.median(r["train_seconds"] or 0 for r in rows),
            "evaluation_process_median_s": statistics.median(evaluation[r["number"]] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=50)
    args = parser.parse_args()
    for sandbox in ("on", "off"):
        for name, value in measure(args.experiments, sandbox).items():
            print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
        print()


if __name__ == "__main__":
    main()
