"""What a run may be called: git's rules for a branch name, no `/`, no leading `-`, not the ledger's files;
refused in one line by every command before anything is written, and quoted where a hint prints it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git
from typer.testing import CliRunner

from autoresearch.agents import MutateAgent
from autoresearch.cli import app
from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.run.session import Session
from autoresearch.settings import RunOptions
from autoresearch.workspace import Workspace, check_tag

runner = CliRunner()
ACCEPTED = ["dec01", "dec01-2", "a_b", "v1.2", "x+y", "a,b", "é", "a@b", "@", "n#1", "a&b", "A" * 100]
REFUSED_BY_GIT = ["x y", "..", ".", "a..b", ".hidden", "a.", "a.lock", "a~1", "a^", "a:b", "a?", "a*", "a[",
                  "a\\b", "a@{b", "tab\there", "del\x7f", ""]
REFUSED_HERE_ONLY = ["dec01/x", "-x", "--", "ledger.db", "ledger.db-wal", "Ledger.DB", "A" * 101]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def git_accepts(tag: str) -> bool:
    return subprocess.run(["git", "check-ref-format", f"refs/heads/autoresearch/{tag}"]).returncode == 0


def refused(tag: str) -> bool:
    try:
        check_tag(tag)
    except UserError:
        return True
    return False


def test_check_tag_follows_git_and_refuses_slashes_options_and_the_ledgers_files():
    assert [t for t in ACCEPTED if refused(t) or not git_accepts(t)] == []
    assert [t for t in REFUSED_BY_GIT if not refused(t) or git_accepts(t)] == []
    assert [t for t in REFUSED_HERE_ONLY if not refused(t) or not git_accepts(t)] == []


@pytest.mark.parametrize("command", [
    ["run", "--agent", "mutate", "--tag"], ["run", "--agent", "mutate", "--resume"], ["log", "--tag"],
    ["show", "0", "--tag"], ["plot", "--tag"], ["report", "--tag"], ["verify", "--tag"], ["rm", "--yes"]])
@pytest.mark.parametrize("tag", ["x y", "..", "ledger.db"])
def test_every_command_refuses_a_bad_tag_in_one_line_before_writing_anything(workspace, command, tag):
    result = invoke(*command, tag)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: {tag!r} cannot be a run's tag")
    assert not (workspace / "runs").exists()


def test_a_tag_with_a_slash_next_to_a_run_leaves_that_run_alone(workspace):
    assert invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "dec01").exit_code == 0
    result = invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "dec01/x")
    assert result.exit_code == 1 and "may not contain '/'" in result.output
    assert [run["tag"] for run in Ledger(workspace / "runs" / "ledger.db").runs()] == ["dec01"]
    assert "x" not in {p.name for p in (workspace / "runs" / "dec01").iterdir()}  # nothing of the refused run
    assert git(workspace, "for-each-ref", "--format=%(refname)", "refs/heads/autoresearch/").split() == [
        "refs/heads/autoresearch/dec01"]


def test_hints_quote_the_tag_so_that_they_can_be_pasted(workspace):
    result = invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "a&b")
    assert result.exit_code == 0, result.output
    hint = result.output.strip().rsplit("See: ", 1)[1]
    assert hint == "autoresearch log --tag 'a&b'"
    cli = Path(sys.executable).parent
    pasted = subprocess.run(["bash", "-c", hint], cwd=workspace, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{cli}{os.pathsep}{os.environ['PATH']}"})
    assert pasted.returncode == 0 and "run a&b" in pasted.stdout
    again = invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "a&b")
    assert "resume it with --resume 'a&b'" in again.output


def test_the_loop_checks_the_tag_for_callers_other_than_the_cli(workspace):
    loop = Session(Workspace.find(), MutateAgent())
    for call in (lambda: loop.start(RunOptions(tag="x y")), lambda: loop.resume("a/b", RunOptions())):
        with pytest.raises(UserError, match="cannot be a run's tag"):
            call()
    assert loop.ledger.runs() == [] and not (workspace / "runs" / "x y").exists()
