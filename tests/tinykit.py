"""The real tiny recipe in a new workspace, for the end-to-end tests that train it at a small budget.

Those tests check what the loop does with a real training (its outcomes, its summary, the evaluation's
refusals), not how fast the machine is. At `--budget 3` the recipe's own grace (15 s for start-up and
saving the model) is most of the time a training may take, and on a busy machine (a load average of 4
to 7 on 2 cores: other tests, other work) start-up and `torch.export` alone ran past it: the baseline
was a `timeout` and the test failed for the machine's sake. The test's own copy of the recipe gets a
grace no load reaches; the training still stops at its budget by its own clock, and every assertion
stays as it was.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import git
from typer.testing import CliRunner

from autoresearch.cli import app

TEST_GRACE_SECONDS = 300


def init_tiny(workspace: Path, runner: CliRunner | None = None) -> Path:
    """`autoresearch init WORKSPACE --recipe tiny`, with the recipe's grace raised (and committed)."""
    runner = runner or CliRunner()
    assert runner.invoke(app, ["init", str(workspace), "--recipe", "tiny"]).exit_code == 0
    spec = workspace / "recipes" / "tiny" / "recipe.yaml"
    text, count = re.subn(r"^grace_seconds: .*$", f"grace_seconds: {TEST_GRACE_SECONDS}", spec.read_text(),
                          flags=re.MULTILINE)
    assert count == 1, "the tiny recipe's grace_seconds line moved: raise its grace for the tests another way"
    spec.write_text(text)
    git(workspace, "commit", "-qam", "tests: a grace that a busy machine cannot exhaust")
    return workspace
