"""`autoresearch rm TAG`: a run removed whole (worktrees, branch, experiment refs, ledger rows, runs/<tag>),
also when only part of it is left, and nothing else; refused while the run goes on, and asked on a terminal."""

from __future__ import annotations

import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import git, reply
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.ledger import RUN_TABLES, Ledger
from autoresearch.repo import Repo
from autoresearch.runlock import RunLock

runner = CliRunner()
CLI = "from autoresearch.cli import app; app()"
FAST = ("--noise-runs", "0", "--confirm-runs", "0")


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def start_run(tag: str, experiments: int = 2) -> None:
    result = invoke("run", "--agent", "mutate", "--tag", tag, "--max-experiments", str(experiments), *FAST)
    assert result.exit_code == 0, result.output


def rows_per_table(workspace: Path, tag: str) -> dict[str, int]:
    db = sqlite3.connect(workspace / "runs" / "ledger.db")
    try:
        return {table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE tag = ?", (tag,)).fetchone()[0]
                for table in RUN_TABLES}
    finally:
        db.close()


def refs(workspace: Path, prefix: str) -> list[str]:
    return git(workspace, "for-each-ref", "--format=%(refname)", prefix).split()


def worktrees(workspace: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(workspace, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def checkout_state(workspace: Path) -> tuple[str, str, str]:
    return (git(workspace, "rev-parse", "HEAD"), git(workspace, "branch", "--show-current"),
            git(workspace, "status", "--porcelain", "--untracked-files=all"))


def add_verification(workspace: Path, tag: str) -> None:
    ledger = Ledger(workspace / "runs" / "ledger.db")
    head = git(workspace, "rev-parse", "HEAD")
    ledger.record_verification(tag, baseline_commit=head, best_commit=head, metric="val_loss",
                               test_metric="test_val_loss", confidence=0.95, seeds=[1, 2], runs=[],
                               verdict="noise", message="-")
    ledger.close()


def test_rm_removes_the_run_whole_and_nothing_else(workspace, fake_llm, monkeypatch):
    fake_llm.set_script([reply("lower lr", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3"),
                         reply("wider", "WIDTH = 4", "WIDTH = 8")])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    result = invoke("run", "--tag", "r", "--max-experiments", "3", "--model", "fake-model", *FAST)
    assert result.exit_code == 0, result.output
    start_run("r-2", 3)
    add_verification(workspace, "r")
    add_verification(workspace, "r-2")
    Repo(workspace).add_detached_worktree(workspace / "runs" / "r" / "verify-worktree", "HEAD")  # a killed verify's
    git(workspace, "branch", "autoresearch-notes")  # the person's, next to the tool's names
    assert all(rows_per_table(workspace, "r").values()) and refs(workspace, "refs/autoresearch/r/")
    other_rows, other_refs = rows_per_table(workspace, "r-2"), refs(workspace, "refs/autoresearch/r-2/")
    before = checkout_state(workspace)

    result = invoke("rm", "r", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("removed run r: 3 experiment(s)")
    assert rows_per_table(workspace, "r") == dict.fromkeys(RUN_TABLES, 0)
    assert rows_per_table(workspace, "r-2") == other_rows
    assert refs(workspace, "refs/autoresearch/") == other_refs
    assert refs(workspace, "refs/heads/") == ["refs/heads/autoresearch-notes", "refs/heads/autoresearch/r-2",
                                              "refs/heads/main"]
    assert worktrees(workspace) == [str(workspace), str(workspace / "runs" / "r-2" / "worktree")]
    assert not (workspace / "runs" / "r").exists() and (workspace / "runs" / "r-2" / "results.tsv").is_file()
    assert checkout_state(workspace) == before
    start_run("r", 1)  # the name is free again


def test_rm_after_the_runs_folder_was_deleted_by_hand(workspace):
    start_run("r")
    shutil.rmtree(workspace / "runs")
    refused = invoke("run", "--agent", "mutate", "--tag", "r", "--max-experiments", "1")
    assert refused.exit_code == 1 and refused.output.strip().endswith("remove them with: autoresearch rm r")
    result = invoke("rm", "r", "--yes")
    assert result.exit_code == 0, result.output
    assert worktrees(workspace) == [str(workspace)]
    assert refs(workspace, "refs/heads/autoresearch/") == [] and refs(workspace, "refs/autoresearch/") == []
    assert not (workspace / "runs" / "r").exists()
    start_run("r", 1)


def test_rm_refuses_while_the_run_is_going_on(workspace):
    start_run("r")
    lock = RunLock(workspace / "runs" / "r", "r").acquire()  # held as a running `run` holds it
    try:
        result = invoke("rm", "r", "--yes")
    finally:
        lock.release()
    assert result.exit_code == 1
    assert result.output.strip() == f"error: run r is going on in another process (pid {os.getpid()}); stop it " \
                                    "first, or wait for it to finish"
    assert refs(workspace, "refs/heads/autoresearch/") == ["refs/heads/autoresearch/r"]
    assert (workspace / "runs" / "r" / "worktree").is_dir() and rows_per_table(workspace, "r")["runs"] == 1


def test_rm_off_a_terminal_needs_yes(workspace):
    start_run("r")
    result = invoke("rm", "r")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: stdin is not a terminal, so rm cannot ask: pass --yes to "
                                                  "remove run r (autoresearch rm r --yes)"]
    assert (workspace / "runs" / "r" / "worktree").is_dir() and rows_per_table(workspace, "r")["runs"] == 1


def on_a_terminal(workspace: Path, args: list[str], answer: str) -> tuple[int, str]:
    """The CLI in a real process on a pseudo-terminal; answers its question with `answer`."""
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=workspace, stdin=slave, stdout=slave,
                               stderr=slave, start_new_session=True)
    os.close(slave)
    output, answered, deadline = b"", False, time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not answered and b"[y/N]" in output:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the other end closed: the process is done
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(10), output.decode(errors="replace")
    finally:
        os.close(master)


def test_rm_asks_on_a_terminal(workspace):
    start_run("r")
    code, output = on_a_terminal(workspace, ["rm", "r"], "n")
    assert code == 1 and "remove run r: 2 experiment(s)" in output and "run r not removed" in output
    assert (workspace / "runs" / "r").is_dir()
    code, output = on_a_terminal(workspace, ["rm", "r"], "y")
    assert code == 0, output
    assert "removed run r" in output and not (workspace / "runs" / "r").exists()


def test_rm_leaves_a_branch_the_person_checked_out(workspace):
    start_run("r")
    shutil.rmtree(workspace / "runs" / "r")
    git(workspace, "worktree", "prune")
    git(workspace, "checkout", "-q", "autoresearch/r")
    result = invoke("rm", "r", "--yes")
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: branch autoresearch/r is checked out in {workspace}; switch that "
                                     "checkout to another branch first (the run's branch is removed with the run)")
    assert git(workspace, "branch", "--show-current") == "autoresearch/r"
    assert rows_per_table(workspace, "r")["runs"] == 1


def test_rm_of_an_unknown_run_is_one_line(workspace):
    result = invoke("rm", "nope", "--yes")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "no run tagged 'nope' here" in result.output
    assert not (workspace / "runs").exists()  # rm makes no ledger where there is none


def test_rm_removes_an_old_run_whose_tag_is_now_refused(workspace):
    """Rows an older version left for tags it could not use; the folder goes only when it is runs/<tag> itself."""
    ledger = Ledger(workspace / "runs" / "ledger.db")
    for tag in ("x y", ".."):
        ledger.create_run(tag, recipe="recipes/synth", branch=f"autoresearch/{tag}", worktree="-", base_commit="-",
                          agent="mutate", metric="val_loss", direction="lower", budget_seconds=5)
    ledger.close()
    (workspace / "runs" / "x y").mkdir()
    (workspace / "runs" / "x y" / "lock").write_text("1\n")
    assert invoke("rm", "x y", "--yes").exit_code == 0
    assert not (workspace / "runs" / "x y").exists() and rows_per_table(workspace, "x y")["runs"] == 0
    assert invoke("rm", "..", "--yes").exit_code == 0
    assert rows_per_table(workspace, "..")["runs"] == 0
    assert (workspace / "program.md").is_file() and (workspace / "recipes" / "synth").is_dir()


def test_rm_stops_a_training_that_outlived_its_tool(workspace):
    start_run("r")
    marker = str((workspace / "runs" / "r").resolve())
    stray = subprocess.Popen(["sleep", "300"], env={**os.environ, "AUTORESEARCH_RUN": marker},
                             start_new_session=True)
    try:
        assert invoke("rm", "r", "--yes").exit_code == 0
        assert stray.wait(5) is not None
    finally:
        stray.kill()


def test_rm_removes_a_run_folder_that_is_a_link_and_keeps_what_it_points_to(workspace, tmp_path):
    elsewhere = tmp_path / "bigdisk" / "r"
    elsewhere.mkdir(parents=True)
    (elsewhere / "0.log").write_text("kept\n")
    (workspace / "runs").mkdir()
    (workspace / "runs" / "r").symlink_to(elsewhere)
    assert invoke("rm", "r", "--yes").exit_code == 0
    assert not (workspace / "runs" / "r").is_symlink() and (elsewhere / "0.log").read_text() == "kept\n"
