"""How much of each proposal's prompt a server's prefix cache can reuse: tokens re-read per experiment.

Runs N experiments (default 30) through the real loop, with the LLM agent, against the scripted
chat-completions server of the tests (tests/fake_llm.py) acting as a server with a prefix cache:
it reports `cached_tokens` as the tokens of the longest common prefix of each prompt and the one
before it (what llama.cpp's slot cache keeps, and what OpenAI's prompt caching bills as cached
when it is past 1,024 tokens). The scripted model proposes new values of the synthetic recipe's
constants, read from the prompt's current train.py, so the run has keeps and discards like a real
night. The prompt is sized like a real one: the repository's program.md, and the synthetic
train.py carries the tiny recipe's train.py as a string (about 12 kB), so the file part of the
prompt weighs what it does on `tiny`. Reported: prompt tokens, cached tokens and re-read tokens (prompt - cached) of each
experiment's first request, for the experiments after a keep and after a discard, and the mean.

    .venv/bin/python benchmarks/prompt_cache.py [--experiments 30]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import SYNTH_TRAIN, make_workspace, reply  # noqa: E402
from fake_llm import FakeLLM  # noqa: E402

from autoresearch.agents import LLMAgent  # noqa: E402
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.repo import Repo  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONSTANT = re.compile(r"^(LEARNING_RATE|WIDTH) = (\S+)$", re.MULTILINE)


def scripted_model(seed: int):
    """A model that changes one constant of the train.py it is shown to a new value."""
    rng = random.Random(seed)

    def answer(request: dict) -> str:
        prompt = "\n".join(m["content"] for m in request["messages"])
        current = dict(CONSTANT.findall(prompt))
        name = rng.choice(sorted(current))
        value = current[name]
        new = str(rng.choice([2, 3, 4, 5, 6, 8])) if name == "WIDTH" else f"{rng.uniform(0.05, 0.9):.3f}"
        if new == value:
            new = str(int(value) + 1) if name == "WIDTH" else f"{float(value) / 2:.3f}"
        return reply(f"try another value of {name.lower()}", f"{name} = {value}", f"{name} = {new}")

    return answer


def measure(experiments: int, seed: int) -> dict:
    fake = FakeLLM(prefix_cache=True)
    try:
        fake.set_script([scripted_model(seed)])
        with tempfile.TemporaryDirectory() as tmp:
            train = SYNTH_TRAIN + "\n_TINY_RECIPE = r'''" + (ROOT / "recipes/tiny/train.py").read_text() + "'''\n"
            root = make_workspace(Path(tmp) / "ws", train=train, commit=False)
            (root / "program.md").write_text((ROOT / "program.md").read_text())
            Repo.init(root).commit_all("workspace")
            os.chdir(root)
            agent = LLMAgent(model="fake-model", base_url=fake.base_url, request_timeout=30)
            loop = Session(Workspace.find(), agent)
            loop.start(RunOptions(tag="bench", max_experiments=experiments + 1, noise_runs=0, confirm_runs=0,
                                  sandbox="off"))
            rows = loop.ledger.experiments("bench")
            calls = [call for call in loop.ledger.llm_calls("bench") if call["attempt"] == 1]
            os.chdir("/")
    finally:
        fake.close()
    outcome = {row["number"]: row["outcome"] for row in rows}
    firsts = [index for index, request in enumerate(fake.requests)
              if not any(m["role"] == "assistant" for m in request["messages"])]
    prompt_sizes = [call["prompt_tokens"] for call in calls]
    samples = []
    for order, index in enumerate(firsts[1:], start=1):  # the first prompt has nothing before it to reuse
        number = calls[order]["experiment"]
        samples.append({"after": outcome.get(number - 1), "prompt": prompt_sizes[order], "cached": fake.cached[index],
                        "reread": prompt_sizes[order] - fake.cached[index]})
    return {"rows": rows, "samples": samples}


def summarise(samples: list[dict], label: str) -> str:
    if not samples:
        return f"| {label} | 0 | - | - | - |"
    mean = lambda key: statistics.mean(s[key] for s in samples)  # noqa: E731
    return (f"| {label} | {len(samples)} | {mean('prompt'):,.0f} | {mean('cached'):,.0f} | {mean('reread'):,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(args.experiments, args.seed)
    counts: dict[str, int] = {}
    for row in result["rows"]:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    print(f"{args.experiments} experiments: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print("| experiments | n | prompt tokens | cached tokens | re-read tokens |")
    print("|---|---|---|---|---|")
    samples = result["samples"]
    print(summarise([s for s in samples if s["after"] == "keep"], "after a keep"))
    print(summarise([s for s in samples if s["after"] != "keep"], "after a discard or invalid"))
    print(summarise(samples, "all"))


if __name__ == "__main__":
    main()
