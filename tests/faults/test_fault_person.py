"""Faults on the person's side: Ctrl-C once and twice, kill -9, a run already going on, a checkout or
a tag in the way, program.md gone; and the states a kill can leave that a resume must put straight.

Ctrl-C and kill -9 are real signals to the real CLI in its own process, as from a terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SMALL_OPTIONS, git, reply
from faultkit import (BETTER, RUN_FLAGS, TAG, ToolProcess, assert_consistent, inject, pids_with_cmdline,
                      resume_with, run_processes, tool_env, wait_until)

from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.settings import RunOptions

HANG = inject("wait for the data", "while True:\n    time.sleep(0.1)")
STUBBORN = inject("stubborn", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              "import subprocess\nsubprocess.Popen('setsid sleep 987611 &', shell=True)\n"
                              "while True:\n    time.sleep(0.1)")


def ledger_rows(workspace: Path) -> list[dict]:
    ledger = Ledger(workspace / "runs/ledger.db")
    try:
        return ledger.experiments(TAG)
    finally:
        ledger.close()


def start_tool_training(workspace: Path, fake_llm, proposal: str, *flags: str) -> ToolProcess:
    """The CLI, run from a shell, busy training experiment 1 (the proposal) after its baseline; serial,
    so that nothing but that training is in flight (test_concurrency has the loop with more)."""
    fake_llm.set_script([proposal])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, "--no-draft-ahead", *flags,
                       env=tool_env(fake_llm))
    assert tool.wait_for("experiment 1: training"), tool.stderr()
    return tool


# --- Ctrl-C

def test_ctrl_c_once_stops_training_records_interrupted_and_says_how_to_resume(workspace, fake_llm, run_loop):
    tool = start_tool_training(workspace, fake_llm, HANG)
    time.sleep(0.3)
    tool.interrupt()
    assert tool.wait(10) == 130
    last = tool.stderr().strip().splitlines()[-1]
    assert last == "interrupted; the branch is at the best commit. Resume with: autoresearch run --resume t"
    rows = ledger_rows(workspace)
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("interrupted", "stopped by the person (Ctrl-C)")
    assert Ledger(workspace / "runs/ledger.db").run(TAG)["status"] == "interrupted"
    assert_consistent(workspace, rows)
    # and the run goes on with the next number
    _, rows = resume_with(run_loop, [BETTER])
    assert [(r["number"], r["outcome"]) for r in rows] == [(0, "keep"), (1, "interrupted"), (2, "keep")]
    assert_consistent(workspace, rows)


def test_ctrl_c_twice_exits_at_once_and_the_next_start_is_consistent(workspace, fake_llm, run_loop):
    """The first Ctrl-C waits for a training that ignores SIGTERM; the second does not wait.

    Without the sandbox: in it, the training's PID namespace ends with its first process, so the
    first Ctrl-C is done before a second one could come, and nothing is left for a resume."""
    tool = start_tool_training(workspace, fake_llm, STUBBORN, "--sandbox", "off")
    time.sleep(0.5)
    tool.interrupt()
    time.sleep(0.3)
    second = time.monotonic()
    tool.interrupt()
    assert tool.wait(10) == 130
    assert time.monotonic() - second < 1.0
    assert "interrupted again: stopped at once. `autoresearch run --resume t`" in tool.stderr()
    # the launcher saw the tool die (PR_SET_PDEATHSIG) and stopped every process of the training by its
    # marker, the setsid'd child too
    assert wait_until(lambda: run_processes(workspace) == [], 3)
    assert pids_with_cmdline("987611") == []
    # what escaped it (a launcher killed with -9 by something else) is stopped by the resume
    leftover = subprocess.Popen(["sleep", "987612"], start_new_session=True,
                                env={**os.environ, "AUTORESEARCH_RUN": str((workspace / "runs" / "t").resolve())})
    loop, rows = resume_with(run_loop, [BETTER], sandbox="off")
    assert leftover.wait(5) != 0 and pids_with_cmdline("987612") == []
    assert rows[1]["outcome"] == "interrupted" and rows[2]["outcome"] == "keep"
    assert any("leftover training process" in note for note in loop.reporter.notes)
    assert_consistent(workspace, rows)


def test_sigterm_to_the_tool_is_a_clean_stop_like_ctrl_c(workspace, fake_llm):
    tool = start_tool_training(workspace, fake_llm, HANG)
    time.sleep(0.3)
    tool.process.terminate()
    assert tool.wait(10) == 130
    rows = ledger_rows(workspace)
    assert rows[1]["outcome"] == "interrupted"
    assert_consistent(workspace, rows)


# --- kill -9

def test_kill_9_during_training_then_resume(workspace, fake_llm):
    """The tool dies; its training dies with it; the resume records the loss and trains the same change."""
    flag = workspace.parent / "second-time"
    slow_then_fast = inject("lower lr, slowly", f"import os\nif not os.path.exists({str(flag)!r}):\n"
                                                f"    time.sleep(60)\nLEARNING_RATE = 0.3")
    tool = start_tool_training(workspace, fake_llm, slow_then_fast, "--sandbox", "off")  # the flag file is in /tmp
    time.sleep(0.3)
    tool.kill()
    tool.wait(10)
    assert wait_until(lambda: run_processes(workspace) == [], 3), "the training outlived the tool"
    assert ledger_rows(workspace)[1]["outcome"] == "running"  # as the kill left it
    flag.write_text("")
    # one more: --max-experiments counts the run's experiments, the interrupted one not
    resumed = ToolProcess(workspace, "run", "--resume", TAG, "--max-experiments", "2", *RUN_FLAGS, "--sandbox", "off",
                          env=tool_env(fake_llm))
    assert resumed.wait(30) == 0, resumed.stderr()
    assert "run t: experiment 1 recorded as interrupted" in resumed.stderr()
    rows = ledger_rows(workspace)
    assert rows[1]["outcome"] == "interrupted" and rows[1]["reason"] == "tool stopped"
    # the same change again is not a duplicate: the interrupted one never got a result
    assert (rows[2]["outcome"], rows[2]["description"]) == ("keep", "lower lr, slowly")
    assert_consistent(workspace, rows)


def test_a_second_process_on_the_same_run_is_refused(workspace, fake_llm, run_loop):
    tool = start_tool_training(workspace, fake_llm, HANG)
    with pytest.raises(UserError, match=rf"run t is going on in another process \(pid {tool.pid}\)"):
        run_loop.small([BETTER], resume=True, tag=TAG, max_experiments=1)
    tool.kill()
    tool.wait(10)
    _, rows = resume_with(run_loop, [BETTER])  # the kernel released the dead tool's lock
    assert rows[-1]["outcome"] == "keep"
    assert_consistent(workspace, rows)


def test_a_second_run_in_the_same_workspace_is_refused_while_one_trains(workspace, fake_llm, monkeypatch):
    """Two tags would train at once and fight for the machine; the second is told which run holds it."""
    from typer.testing import CliRunner

    from autoresearch.cli import app

    tool = start_tool_training(workspace, fake_llm, HANG)
    try:
        refused = CliRunner().invoke(app, ["run", "--agent", "mutate", "--tag", "other", "--max-experiments", "1"])
        assert refused.exit_code == 1
        assert f"run t (pid {tool.pid}) is training in this workspace" in refused.output
        assert "--allow-concurrent" in refused.output and len(refused.output.strip().splitlines()) == 1
        assert Ledger(workspace / "runs/ledger.db").run("other") is None
        allowed = CliRunner().invoke(app, ["run", "--agent", "mutate", "--tag", "other", "--max-experiments", "1",
                                           "--noise-runs", "0", "--allow-concurrent"])
        assert allowed.exit_code == 0, allowed.output
    finally:
        tool.interrupt()
        tool.wait(10)
    after = CliRunner().invoke(app, ["run", "--agent", "mutate", "--tag", "third", "--max-experiments", "1",
                                     "--noise-runs", "0"])
    assert after.exit_code == 0, after.output  # the lock went with the first run


# --- what a kill can leave behind, put straight by the resume

def test_commit_made_but_not_recorded_is_kept_reachable(workspace, fake_llm, run_loop):
    """Killed between `git commit` and the ledger update: the commit is found and recorded."""
    loop, rows, _ = run_loop.small([], max_experiments=1)
    worktree = workspace / "runs/t/worktree"
    loop.ledger.start_experiment(TAG, 1, parent_sha=rows[0]["commit_sha"], description="lost one")
    (worktree / "recipes/synth/train.py").write_text("LEARNING_RATE = 0.4\n")
    git(worktree, "commit", "-qam", "lost one")
    lost = git(worktree, "rev-parse", "HEAD")
    loop, rows = resume_with(run_loop, [BETTER])
    assert (rows[1]["outcome"], rows[1]["commit_sha"]) == ("interrupted", lost)
    assert git(workspace, "rev-parse", "refs/autoresearch/t/1") == lost
    assert any("1 unrecorded commit(s) kept reachable" in note for note in loop.reporter.notes)
    assert_consistent(workspace, rows)


def test_commit_of_someone_else_is_not_taken_for_a_lost_experiment(workspace, fake_llm, run_loop):
    loop, rows, _ = run_loop.small([], max_experiments=1)
    worktree = workspace / "runs/t/worktree"
    loop.ledger.start_experiment(TAG, 1, parent_sha=rows[0]["commit_sha"])
    git(worktree, "-c", "user.name=p", "-c", "user.email=p@example.com", "commit", "-q", "--allow-empty",
        "--author", "p <p@example.com>", "-m", "a person's commit")
    _, rows = resume_with(run_loop, [BETTER])
    assert rows[1]["outcome"] == "interrupted" and rows[1]["commit_sha"] is None
    assert_consistent(workspace, rows)


def test_stale_git_lock_in_the_worktree_is_removed(workspace, fake_llm, run_loop):
    run_loop.small([], max_experiments=1)
    git_dir = Path(git(workspace / "runs/t/worktree", "rev-parse", "--absolute-git-dir"))
    (git_dir / "index.lock").write_text("")
    _, rows = resume_with(run_loop, [BETTER])
    assert not (git_dir / "index.lock").exists()
    assert rows[1]["outcome"] == "keep"
    assert_consistent(workspace, rows)


def test_worktree_left_half_made_is_made_again(workspace, fake_llm, run_loop):
    run_loop.small([], max_experiments=1)
    (workspace / "runs/t/worktree/.git").unlink()  # as if killed inside `git worktree add`
    _, rows = resume_with(run_loop, [BETTER])
    assert rows[1]["outcome"] == "keep"
    assert_consistent(workspace, rows)


def test_run_killed_before_its_branch_existed_can_be_resumed(workspace, fake_llm, run_loop):
    """The ledger row is written before the worktree and branch: a kill in between is resumable."""
    loop = run_loop.make([], small=True)
    loop._new_run(RunOptions(**SMALL_OPTIONS, tag=TAG))  # the row and the worktree, then the tool dies
    loop.close()
    git(workspace, "worktree", "remove", "--force", "runs/t/worktree")
    git(workspace, "branch", "-D", "autoresearch/t")
    _, rows = resume_with(run_loop, [BETTER], max_experiments=2)
    assert [r["outcome"] for r in rows] == ["keep", "keep"]
    assert rows[0]["commit_sha"] == git(workspace, "rev-parse", "HEAD")
    assert_consistent(workspace, rows)


# --- what is in the way at the start

def test_uncommitted_changes_in_the_checkout_are_refused_and_nothing_is_made(workspace, fake_llm, run_loop):
    (workspace / "recipes/synth/train.py").write_text("LEARNING_RATE = 0.1\n")
    with pytest.raises(UserError, match="recipes/synth has uncommitted changes .*commit or stash them"):
        run_loop.small([BETTER])
    assert not (workspace / "runs/t").exists()
    assert git(workspace, "branch", "--list", "autoresearch/*") == ""
    assert (workspace / "recipes/synth/train.py").read_text() == "LEARNING_RATE = 0.1\n"


def test_existing_run_tag_is_refused_with_the_resume_command(workspace, fake_llm, run_loop):
    run_loop.small([], max_experiments=1)
    with pytest.raises(UserError, match="a run tagged 't' already exists; resume it with --resume t"):
        run_loop.small([BETTER])
    assert len(ledger_rows(workspace)) == 1


def test_branch_that_exists_without_a_run_is_refused_and_left_alone(workspace, fake_llm, run_loop):
    git(workspace, "branch", "autoresearch/t")
    head = git(workspace, "rev-parse", "autoresearch/t")
    with pytest.raises(UserError, match=r"branch autoresearch/t .* already exists but no run of this ledger made it"):
        run_loop.small([BETTER])
    assert git(workspace, "rev-parse", "autoresearch/t") == head
    assert Ledger(workspace / "runs/ledger.db").run(TAG) is None


@pytest.mark.parametrize("content", [None, "  \n"], ids=["missing", "empty"])
def test_program_md_missing_or_empty_at_the_start(workspace, fake_llm, content, run_loop):
    program = workspace / "program.md"
    program.unlink() if content is None else program.write_text(content)
    with pytest.raises(UserError, match="program.md is (missing|empty): write the research direction there"):
        run_loop.small([BETTER])
    assert not (workspace / "runs/t").exists()


def test_program_md_removed_mid_run_the_last_version_serves(workspace, fake_llm, run_loop):
    def remove_program_then_propose(request):
        (workspace / "program.md").unlink()
        return BETTER

    loop, rows, _ = run_loop.small([remove_program_then_propose, reply_worse()], max_experiments=3)
    assert [r["outcome"] for r in rows] == ["keep", "keep", "discard"]
    assert "Lower the validation loss." in fake_llm.requests[1]["messages"][1]["content"]
    assert any("program.md is missing" in note for note in loop.reporter.notes)
    # a resume needs it back, and says so without touching anything
    with pytest.raises(UserError, match="program.md is missing"):
        resume_with(run_loop, [BETTER])
    assert ledger_rows(workspace) == rows


def reply_worse() -> str:
    return reply("raise the learning rate", "LEARNING_RATE = 0.3", "LEARNING_RATE = 0.9")


def test_sighup_is_left_ignored_under_nohup(workspace, fake_llm):
    """`nohup autoresearch run` must survive its terminal closing (SIGHUP)."""
    fake_llm.set_script([HANG])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, env=tool_env(fake_llm), ignore_sighup=True)
    assert tool.wait_for("experiment 1: training"), tool.stderr()
    tool.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert tool.process.poll() is None, tool.stderr()
    tool.interrupt()
    assert tool.wait(10) == 130


def test_a_half_saved_price_table_does_not_end_the_run(workspace, fake_llm, run_loop):
    """autoresearch.yaml is read before every LLM call; a broken save mid-run keeps the last good table."""
    config = workspace / "autoresearch.yaml"
    config.write_text("prices:\n  fake-model: {input: 1.0, output: 2.0}\n")

    def save_half_then_answer(request):
        config.write_text("prices:\n  fake-model: {input: 1.0, outp")  # the editor was caught mid-save
        return BETTER

    loop, rows, _ = run_loop.small([save_half_then_answer, BETTER], max_experiments=3)
    assert [row["outcome"] for row in rows][:2] == ["keep", "keep"] and len(rows) == 3
    assert loop.ledger.run(TAG)["status"] == "finished"
    broken = [note for note in loop.reporter.notes if "autoresearch.yaml" in note]
    assert len(broken) == 1 and "the last good price table serves" in broken[0]


def test_the_last_line_of_a_run_is_whole_in_a_nohup_log(workspace):
    """stderr into a file on a narrow terminal: the line a person greps for in the morning is not wrapped."""
    tool = ToolProcess(workspace, "run", "--agent", "mutate", "--tag", TAG, "--max-experiments", "2",
                       "--noise-runs", "0", env={"COLUMNS": "40"})
    assert tool.wait(60) == 0, tool.stderr()
    last = tool.stderr().strip().splitlines()[-1]
    assert last.startswith("run t done (reached --max-experiments 2): 2 experiments") and last.endswith("--tag t")
