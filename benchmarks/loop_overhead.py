"""The tool's own time per experiment, outside the agent and the training process.

Runs N experiments (default 50) with the offline mutate agent on a synthetic recipe whose
training script finishes at once, in a fresh temporary workspace, and reports per experiment
`total - training - proposing + prompt building`: git, the guard, the ledger, the lineage and the
prompt, results.tsv.
Target on the 2-core reference machine: at most 0.25 s median.

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
from autoresearch.loop import ResearchLoop, RunOptions  # noqa: E402
from autoresearch.prompts import build_messages  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402


class PromptBuildingMutateAgent(MutateAgent):
    """The mutate agent, but it also builds the LLM prompt, so that cost is measured too."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.prompt_seconds: list[float] = []

    def propose(self, context, record_call):
        started = time.perf_counter()
        build_messages(context)
        self.prompt_seconds.append(time.perf_counter() - started)
        return super().propose(context, record_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_workspace(Path(tmp) / "ws")
        os.chdir(root)
        agent = PromptBuildingMutateAgent(seed=0)
        loop = ResearchLoop(Workspace.find(), agent)
        loop.start(RunOptions(tag="bench", max_experiments=args.experiments + 1))
        rows = [r for r in loop.ledger.experiments("bench") if r["number"] > 0]
    # The prompt is built inside proposing; it is the tool's work, so it is added back.
    overhead = [r["total_seconds"] - (r["train_seconds"] or 0) - (r["propose_seconds"] or 0) + prompt
                for r, prompt in zip(rows, agent.prompt_seconds)]
    training = [r["train_seconds"] or 0 for r in rows]
    overhead.sort()
    print(f"experiments: {len(rows)}")
    print(f"overhead_median_s: {statistics.median(overhead):.4f}")
    print(f"overhead_p90_s: {overhead[int(0.9 * (len(overhead) - 1))]:.4f}")
    print(f"overhead_max_s: {overhead[-1]:.4f}")
    print(f"training_process_median_s: {statistics.median(training):.4f}")


if __name__ == "__main__":
    main()
