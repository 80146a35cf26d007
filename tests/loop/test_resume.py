"""kill -9 at random moments, over and over: after each resume the run is consistent.

The CLI runs as a real process against the fake endpoint, which proposes random changes (some slow
to train, some crashing) after a random delay, so the kills land while proposing, committing,
training, deciding, writing the ledger or starting up. After each kill (sometimes of the tool
alone, sometimes of its whole job with the git it was running), a resume that runs no experiment
puts the run straight, and the invariants are checked (on one slot and on two, drafting ahead, so
that some kills find two trainings and a draft in flight):
- every experiment the tool said it started has a row, numbered without gaps, none left `running`;
- the branch and the worktree are at the best kept commit (the run's own pointer), with nothing
  uncommitted, and every kept commit is in its history;
- every commit an experiment recorded is reachable under refs/autoresearch/<tag>/<n> (a baseline's
  is the base commit itself);
- no process of the run is alive.
The whole test is bounded in time (about a minute).
"""

from __future__ import annotations

import pytest

import random
import re
import time
from pathlib import Path

from conftest import git, reply  # noqa: E402
from faultkit import RUN_FLAGS, TAG, ToolProcess, best_kept, run_processes, tool_env  # noqa: E402

from autoresearch.ledger import Ledger, best_row  # noqa: E402

SECONDS = 50
MIN_CYCLES = 8
STARTED = re.compile(r"experiment (\d+): started")


def random_proposer(seed: int):
    """Answers each request with a random change to the current train.py, after a random delay."""
    rng = random.Random(seed)

    def propose(request: dict) -> dict:
        prompt = request["messages"][1]["content"].split("# Current train.py", 1)[1]
        learning_rate = re.search(r"^LEARNING_RATE = (\S+)$", prompt, re.MULTILINE).group(1)
        sleep = re.search(r"^SLEEP_SECONDS = (\S+)$", prompt, re.MULTILINE).group(1)
        new_rate = f"{rng.uniform(0.05, 0.95):.3f}"
        roll = rng.random()
        if roll < 0.15:
            answer = reply("crash on purpose", "save_model(LEARNING_RATE, WIDTH)", "loss = 1 / 0")
        elif roll < 0.5:
            answer = reply(f"lr {new_rate}, slower", f"LEARNING_RATE = {learning_rate}\nWIDTH = 4\n"
                           f"SLEEP_SECONDS = {sleep}", f"LEARNING_RATE = {new_rate}\nWIDTH = 4\n"
                           f"SLEEP_SECONDS = {rng.choice(['0.2', '0.5', '0.8'])}")
        else:
            answer = reply(f"lr {new_rate}", f"LEARNING_RATE = {learning_rate}", f"LEARNING_RATE = {new_rate}")
        return {"content": answer, "delay": rng.uniform(0, 0.4)}

    return propose


def check_invariants(workspace: Path, started: set[int]) -> list[dict]:
    ledger = Ledger(workspace / "runs/ledger.db")
    try:
        assert ledger._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        run = ledger.run(TAG)
        rows = ledger.experiments(TAG)
    finally:
        ledger.close()
    numbers = [row["number"] for row in rows]
    assert numbers == list(range(len(rows))), numbers
    assert started <= set(numbers), f"started {sorted(started - set(numbers))} without a row"
    assert all(row["outcome"] != "running" for row in rows)
    best = best_kept(workspace, rows)["commit_sha"] if any(row["outcome"] == "keep" for row in rows) \
        else run["base_commit"]
    assert git(workspace, "rev-parse", f"autoresearch/{TAG}") == best
    worktree = workspace / "runs" / TAG / "worktree"
    assert git(worktree, "rev-parse", "HEAD") == best
    assert git(worktree, "status", "--porcelain", "--untracked-files=no") == ""
    for row in rows:  # a baseline (run again if it was interrupted) is the base commit itself
        if row["commit_sha"] and row["commit_sha"] != run["base_commit"]:
            assert git(workspace, "rev-parse", f"refs/autoresearch/{TAG}/{row['number']}") == row["commit_sha"]
    assert run_processes(workspace) == []
    return rows


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_keeps_every_invariant(workspace, fake_llm, run_loop):
    rng = random.Random(20240611)
    fake_llm.set_script([random_proposer(seed=7)])
    env = tool_env(fake_llm)
    started: set[int] = set()
    deadline = time.monotonic() + SECONDS
    cycles = 0
    while time.monotonic() < deadline or cycles < MIN_CYCLES:
        args = ("run", "--tag", TAG) if cycles == 0 else ("run", "--resume", TAG)
        # one slot or two, drafting ahead: the kills land with several experiments in flight too
        tool = ToolProcess(workspace, *args, *RUN_FLAGS, "--slots", str(1 + cycles % 2), "--draft-ahead",
                           env=env)
        time.sleep(rng.uniform(0.3, 4.5))  # the tool takes a second or two to start
        tool.kill(whole_group=rng.random() < 0.3)
        tool.wait(10)
        started |= {int(n) for n in STARTED.findall(tool.stderr())}
        if not (workspace / "runs/ledger.db").exists():
            continue  # killed before the ledger existed: nothing to check yet
        # a resume that runs nothing puts the run straight; then the invariants must hold
        loop = run_loop.make([random_proposer(seed=cycles)], small=True)
        try:
            worktree, run = loop.put_straight(TAG)
            best = best_row(run, loop.ledger.experiments(TAG, outcome="keep"))
            worktree.reset_hard(best["commit_sha"] if best else run["base_commit"])
        finally:
            loop.close()
            loop.ledger.close()
        rows = check_invariants(workspace, started)
        cycles += 1
    assert cycles >= MIN_CYCLES
    assert any(row["outcome"] == "interrupted" for row in rows), "some kills landed mid-experiment"
    # and it still runs to the end when left alone, going on with the next numbers
    fake_llm.set_script([random_proposer(seed=99)])
    counted = sum(row["outcome"] != "interrupted" for row in rows)  # what --max-experiments counts on resume
    final = ToolProcess(workspace, "run", "--resume", TAG, "--max-experiments", str(counted + 2), *RUN_FLAGS, env=env)
    assert final.wait(60) == 0, final.stderr()
    assert len(check_invariants(workspace, started)) == len(rows) + 2
