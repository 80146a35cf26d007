"""What a run may be called, through the tool: refused in one line by every command before anything is written,
and quoted where a hint prints it (the rules themselves: unit/test_workspace.py)."""

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
from autoresearch.settings import RunOptions

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


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


def test_the_loop_checks_the_tag_for_callers_other_than_the_cli(workspace, run_loop):
    loop = run_loop.make(proposer=MutateAgent())
    for call in (lambda: loop.start(RunOptions(tag="x y")), lambda: loop.resume("a/b", RunOptions())):
        with pytest.raises(UserError, match="cannot be a run's tag"):
            call()
    assert loop.ledger.runs() == [] and not (workspace / "runs" / "x y").exists()
