"""`autoresearch verify`: the run's baseline and best commits on new seeds, on validation and on test."""

from __future__ import annotations

import json

import pytest
from conftest import git, reply
from noisy_recipe import make_noisy_workspace, val_noise
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.review import run_summaries, run_summary
from autoresearch.verify import verify_run
from autoresearch.workspace import Workspace

REAL_GAIN = reply("double the width", "WIDTH = 4", "WIDTH = 8")  # val and test loss 0.125 lower: 12 sd
VAL_ONLY_GAIN = reply("memorize the validation set", "MEMORIZE = 0.0", "MEMORIZE = 1.0")
WORSE = reply("raise the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.9")


@pytest.fixture
def noisy(run_loop):
    return run_loop.workspace(make_noisy_workspace)


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_a_real_gain_holds_on_test(noisy, fake_llm, run_loop):
    run_loop([REAL_GAIN])
    result = invoke("verify", "--seeds", "3")
    assert result.exit_code == 0, result.output
    assert "verdict: holds" in result.stdout
    assert "validation val_loss: gain +0.1" in result.stdout and "test       test_loss: gain +0.1" in result.stdout
    ledger = Ledger(noisy / "runs/ledger.db")
    [verification] = ledger.verifications("t")
    assert verification["verdict"] == "holds"
    assert verification["val_gain"] == pytest.approx(0.125, abs=0.02)
    assert verification["test_low"] > 0
    rows = ledger.experiments("t")
    assert verification["baseline_commit"] == rows[0]["commit_sha"]
    assert verification["best_commit"] == rows[1]["commit_sha"]
    own, runs = verification["runs"][:2], verification["runs"][2:]
    assert [r["role"] for r in own] == ["own baseline", "own best"]  # the run's own saved models, on test
    assert own[1]["test_metric"] == pytest.approx(0.125 + 0.04, abs=0.05)
    assert own[1]["metric"] == ledger.training_runs("t", 1)[0]["metric"]
    assert "the run's own models on the test split: baseline" in result.stdout
    assert [r["role"] for r in runs] == ["baseline", "best"] * 3  # alternating, seed by seed
    used = {r["seed"] for r in ledger.training_runs("t")}
    assert len(set(verification["seeds"])) == 3 and not used & set(verification["seeds"])
    assert all(r["outcome"] == "ok" and r["test_metric"] is not None for r in runs)
    # no worktree was made, the person's checkout is untouched
    assert git(noisy, "worktree", "list").count("\n") == 1
    assert "WIDTH = 4" in (noisy / "recipes/synth/train.py").read_text()
    # runs and run summaries carry the verdict
    assert run_summary(ledger, "t")["verification"]["verdict"] == "holds"
    assert run_summaries(ledger)[0]["verification"]["verdict"] == "holds"


def test_a_gain_on_validation_only_looks_like_overfitting(noisy, fake_llm, run_loop):
    run_loop([VAL_ONLY_GAIN])
    assert Ledger(noisy / "runs/ledger.db").experiments("t")[1]["outcome"] == "keep"
    result = invoke("verify", "--seeds", "4", "--json")
    assert result.exit_code == 0, result.output
    verification = json.loads(result.stdout)
    assert verification["verdict"] == "overfit"
    assert "overfitting to validation" in verification["message"]
    assert verification["val_low"] > 0 and verification["test_low"] <= 0


def test_a_lucky_keep_of_the_naive_rule_does_not_survive_verify(noisy, fake_llm, run_loop):
    # A change with no real effect, picked so that it looks better under the run's seed.
    value = next(f"0.500000{i}" for i in range(1, 100) if val_noise(0, float(f"0.500000{i}")) < val_noise(0) - 0.005)
    lucky = reply("a better learning rate", "LEARNING_RATE = 0.5", f"LEARNING_RATE = {value}")
    run_loop([lucky], max_experiments=2, noise_runs=0)
    assert Ledger(noisy / "runs/ledger.db").experiments("t")[1]["outcome"] == "keep"  # the naive rule kept it
    result = invoke("verify", "--seeds", "5")
    assert result.exit_code == 0, result.output
    assert "verdict: noise" in result.stdout or "verdict: unconfirmed" in result.stdout


def test_verify_again_uses_new_seeds(noisy, fake_llm, run_loop):
    run_loop([REAL_GAIN])
    ledger = Ledger(noisy / "runs/ledger.db")
    first = verify_run(Workspace.find(), ledger, "t", seeds=2)
    second = verify_run(Workspace.find(), ledger, "t", seeds=2)
    assert not set(first.seeds) & set(second.seeds)
    assert [v["id"] for v in ledger.verifications("t")] == [first.id, second.id]


def test_verify_needs_a_kept_change_and_a_test_metric(noisy, fake_llm, run_loop):
    run_loop([WORSE])
    result = invoke("verify")
    assert result.exit_code == 1 and "kept no change" in result.output
    with pytest.raises(UserError, match="at least 2"):
        verify_run(Workspace.find(), Ledger(noisy / "runs/ledger.db"), "t", seeds=1)


def test_verify_says_when_the_recipe_has_no_test_metric(workspace, fake_llm, run_loop):
    run_loop([reply("lower lr", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")])
    result = invoke("verify")
    assert result.exit_code == 1 and "test_metric" in result.output
    assert not (workspace / "runs/t/verify-worktree").exists()


def test_verify_holds_the_runs_lock(noisy, fake_llm, run_loop):
    from autoresearch.runlock import RunLock

    run_loop([REAL_GAIN])
    held = RunLock(noisy / "runs/t", "t").acquire()
    try:
        with pytest.raises(UserError, match="going on in another process"):
            verify_run(Workspace.find(), Ledger(noisy / "runs/ledger.db"), "t", seeds=2)
    finally:
        held.release()


def test_verify_stops_what_a_killed_verify_left_running(noisy, fake_llm, run_loop):
    """Its trainings carry the run's marker, so a leftover is found; a verify killed mid-training leaves one."""
    import os
    import subprocess
    import sys

    from autoresearch.recovery import run_marker

    run_loop([REAL_GAIN])
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                                env={**os.environ, "AUTORESEARCH_RUN": run_marker(noisy / "runs/t")})
    try:
        verify_run(Workspace.find(), Ledger(noisy / "runs/ledger.db"), "t", seeds=2)
        assert leftover.wait(timeout=10) is not None
    finally:
        leftover.kill()
