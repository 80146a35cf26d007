"""The loop end to end against the fake endpoint, in real git repositories with real subprocesses."""

from __future__ import annotations

import os
import time

import pytest
from conftest import git, reply

from autoresearch.agents import MutateAgent
from autoresearch.ledger import Ledger
from autoresearch.errors import StopRun

# Runs here are serial (draft_ahead=False): the tests read what each prompt holds of the experiments before it.
BETTER = reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")
WORSE = reply("raise the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.9")


def branch_head(root) -> str:
    return git(root, "rev-parse", "autoresearch/t")


def test_first_experiment_is_the_unmodified_baseline(workspace, fake_llm, run_loop):
    _, rows, summary = run_loop(draft_ahead=False, script=[BETTER], max_experiments=1)
    assert [r["outcome"] for r in rows] == ["keep"]
    assert rows[0]["description"].startswith("baseline")
    assert rows[0]["commit_sha"] == git(workspace, "rev-parse", "HEAD")
    assert rows[0]["metric"] == pytest.approx(0.04 + 0.25)
    assert fake_llm.requests == []


def test_better_change_is_kept_and_branch_moves_to_it(workspace, fake_llm, run_loop):
    _, rows, summary = run_loop(draft_ahead=False, script=[BETTER])
    assert [r["outcome"] for r in rows] == ["keep", "keep"]
    assert rows[1]["metric"] == pytest.approx(0.25)
    assert branch_head(workspace) == rows[1]["commit_sha"]
    assert git(workspace, "log", "-1", "--format=%s", "autoresearch/t") == "lower the learning rate"
    assert summary.best_metric == pytest.approx(0.25)
    # the person's checkout is untouched
    assert "LEARNING_RATE = 0.5" in (workspace / "recipes/synth/train.py").read_text()


def test_worse_change_is_discarded_but_stays_reachable(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop(draft_ahead=False, script=[WORSE])
    assert [r["outcome"] for r in rows] == ["keep", "discard"]
    discarded = rows[1]["commit_sha"]
    assert branch_head(workspace) == rows[0]["commit_sha"]
    assert git(workspace, "rev-parse", "refs/autoresearch/t/1") == discarded
    assert "LEARNING_RATE = 0.9" in git(workspace, "show", discarded)
    assert "LEARNING_RATE = 0.9" in rows[1]["diff"]
    worktree = workspace / "runs/t/worktree/recipes/synth/train.py"
    assert "LEARNING_RATE = 0.5" in worktree.read_text()


def test_min_delta_discards_small_gains(workspace, fake_llm, run_loop):
    small = reply("nudge", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.49")
    _, rows, _ = run_loop(draft_ahead=False, script=[small], min_delta=0.01)
    assert rows[1]["outcome"] == "discard"


def test_crash_is_recorded_with_its_reason(workspace, fake_llm, run_loop):
    crash = reply("break it", "save_model(LEARNING_RATE, WIDTH)", "loss = 1 / 0")
    _, rows, _ = run_loop(draft_ahead=False, script=[crash])
    assert rows[1]["outcome"] == "crash"
    assert "ZeroDivisionError" in rows[1]["reason"]
    assert "ZeroDivisionError" in rows[1]["log_tail"]
    assert branch_head(workspace) == rows[0]["commit_sha"]


def test_a_model_the_evaluation_scores_nan_is_a_crash(workspace, fake_llm, run_loop):
    nan = reply("nan", "save_model(LEARNING_RATE, WIDTH)", "save_model(float('nan'), WIDTH)")
    _, rows, _ = run_loop(draft_ahead=False, script=[nan])
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("crash", "nan")


def test_a_training_that_saves_no_model_is_a_crash(workspace, fake_llm, run_loop):
    silent = reply("silence", "save_model(LEARNING_RATE, WIDTH)", 'print("val_loss: 0.001")')
    _, rows, _ = run_loop(draft_ahead=False, script=[silent])
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("crash", "it saved no model (nothing in AUTORESEARCH_OUTPUT_DIR)")
    assert rows[1]["metric"] is None  # what it printed is not a metric


def test_a_model_the_evaluation_cannot_read_is_a_crash_with_the_evaluations_reason(workspace, fake_llm, run_loop):
    broken = reply("write a bad model", "save_model(LEARNING_RATE, WIDTH)",
                   'open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "model.json"), "w").write("{not json")')
    _, rows, _ = run_loop(draft_ahead=False, script=[broken])
    assert rows[1]["outcome"] == "crash"
    assert rows[1]["reason"].startswith("evaluation failed (exit code 1): json.decoder.JSONDecodeError")
    assert "[the harness's evaluation of the saved model]" in rows[1]["log_tail"]


def pids_running(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def test_training_that_never_ends_is_killed_as_timeout(workspace, fake_llm, run_loop):
    hang = reply("hang", "SLEEP_SECONDS = 0.0",
                 "SLEEP_SECONDS = 0.0\nimport subprocess\nsubprocess.Popen(['sleep', '987654'])\n"
                 "while True:\n    time.sleep(1)")
    started = time.monotonic()
    _, rows, _ = run_loop(draft_ahead=False, script=[hang], budget_seconds=1)
    assert rows[1]["outcome"] == "timeout"
    assert time.monotonic() - started < 15
    assert pids_running("987654") == []
    assert branch_head(workspace) == rows[0]["commit_sha"]


def test_edit_to_a_fixed_file_is_invalid_and_never_run(workspace, fake_llm, run_loop):
    cheat = reply("better eval", "    return (learning_rate - 0.3) ** 2 + 1.0 / width", "    return 0.0",
                  filename="prepare.py")
    _, rows, _ = run_loop(draft_ahead=False, script=[cheat])
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("invalid", "touched prepare.py")
    assert rows[1]["commit_sha"] is None
    assert not (workspace / "runs/t/1.log").exists()
    assert branch_head(workspace) == rows[0]["commit_sha"]


def test_reply_that_does_not_apply_is_repaired(workspace, fake_llm, run_loop):
    wrong = reply("lower lr", "LEARNING_RATE = 0.55", "LEARNING_RATE = 0.3")
    _, rows, _ = run_loop(draft_ahead=False, script=[wrong, BETTER])
    assert rows[1]["outcome"] == "keep"
    assert len(fake_llm.requests) == 2
    feedback = fake_llm.requests[1]["messages"][-1]["content"]
    assert "not in the file" in feedback and "LEARNING_RATE = 0.5" in feedback
    calls = Ledger(workspace / "runs/ledger.db").llm_calls("t", 1)
    assert [c["attempt"] for c in calls] == [1, 2]
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)


def test_reply_that_never_applies_is_invalid_after_three_tries(workspace, fake_llm, run_loop):
    wrong = reply("lower lr", "LEARNING_RATE = 0.55", "LEARNING_RATE = 0.3")
    _, rows, _ = run_loop(draft_ahead=False, script=[wrong])
    assert rows[1]["outcome"] == "invalid"
    assert rows[1]["reason"].startswith("edit did not apply")
    assert len(fake_llm.requests) == 3


def test_prompt_carries_program_recipe_file_and_lineage(workspace, fake_llm, run_loop):
    (workspace / "program.md").write_text("Try smaller learning rates first.\n")
    _, _, _ = run_loop(draft_ahead=False, script=[WORSE, BETTER], max_experiments=3)
    prompt = fake_llm.requests[1]["messages"][1]["content"]
    assert "Try smaller learning rates first." in prompt
    assert "val_loss (lower is better)" in prompt
    assert "LEARNING_RATE = 0.5" in prompt
    assert "| 1 | discard |" in prompt and "raise the learning rate" in prompt


def test_duplicate_proposal_is_invalid_without_training(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop(draft_ahead=False, script=[WORSE, WORSE], max_experiments=3)
    assert rows[2]["outcome"] == "invalid"
    # the agent is told at once, in a repair turn, and refuses it when it keeps proposing it
    assert rows[2]["reason"].startswith("edit did not apply: this change was tried already in this run (the last "
                                        "results say how it went): propose another")
    assert not (workspace / "runs/t/2.log").exists()
    assert len(fake_llm.requests) == 1 + 3  # experiment 1, then three tries of experiment 2


def test_seed_is_handed_to_training_and_recorded(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop(draft_ahead=False, script=[BETTER], max_experiments=1, seed=7)
    assert rows[0]["seed"] == 7
    assert rows[0]["summary"]["seed"] == 7


def test_results_tsv_has_the_familiar_columns(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop(draft_ahead=False, script=[WORSE])
    lines = (workspace / "runs/t/results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "val_loss", "memory_gb", "status", "description"]
    assert lines[2].split("\t") == [rows[1]["commit_sha"][:7], "0.610000", "0.5", "discard", "raise the learning rate"]


def test_mutate_agent_runs_the_same_path(workspace, run_loop):
    rows = run_loop(proposer=MutateAgent(seed=3), max_experiments=4).rows
    assert len(rows) == 4
    for row in rows[1:]:
        assert row["outcome"] in ("keep", "discard", "crash")
        assert " -> " in row["description"]
        assert row["commit_sha"]


def test_baseline_failure_stops_the_run_with_one_line(workspace, fake_llm, run_loop):
    (workspace / "recipes/synth/train.py").write_text("raise SystemExit(3)\n")
    git(workspace, "commit", "-qam", "broken")
    with pytest.raises(StopRun, match="baseline"):
        run_loop(draft_ahead=False, script=[BETTER])
    rows = Ledger(workspace / "runs/ledger.db").experiments("t")
    assert rows[0]["outcome"] == "crash"


def test_run_tag_that_exists_is_refused(workspace, fake_llm, run_loop):
    run_loop(draft_ahead=False, script=[BETTER], max_experiments=1)
    from autoresearch.errors import UserError
    with pytest.raises(UserError, match="--resume t"):
        run_loop(draft_ahead=False, script=[BETTER], max_experiments=1)


def test_mutate_never_proposes_what_the_run_already_trained(run_loop):
    """The agent and the loop use one digest: with three values of one knob, no experiment is wasted as a duplicate."""
    from conftest import SYNTH_RECIPE, make_workspace

    tunable = SYNTH_RECIPE + "tunable:\n  WIDTH: {choices: [2, 4, 8]}\n"
    rows = run_loop(files=lambda root: make_workspace(root, recipe_yaml=tunable), proposer=MutateAgent(seed=0),
                    max_experiments=5, noise_runs=0, confirm_runs=0).rows
    reasons = [row["reason"] or "" for row in rows]
    assert not any(reason.startswith("duplicate of experiment") for reason in reasons), reasons
    trained = [row["files_hash"] for row in rows if row["outcome"] in ("keep", "discard")]
    assert len(trained) == len(set(trained)) == 3  # the baseline's WIDTH 4, then 2 and 8
    assert rows[-1]["reason"] == "duplicate: every mutation tried was already run"
