"""End to end: a new workspace with the real tiny recipe, the loop run on it for a few seconds of budget."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_init_then_run_the_tiny_recipe_then_log(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    workspace = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(workspace), "--recipe", "tiny"]).exit_code == 0
    monkeypatch.chdir(workspace)
    result = runner.invoke(app, ["run", "--agent", "mutate", "--budget", "3", "--max-experiments", "2",
                                 "--noise-runs", "0", "--tag", "e2e"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(runner.invoke(app, ["log", "--json"]).stdout)
    assert [row["number"] for row in rows] == [0, 1]
    baseline = rows[0]
    assert baseline["outcome"] == "keep"
    assert math.isfinite(baseline["metric"]) and 0.5 < baseline["metric"] < 9
    for name in ("training_seconds", "total_seconds", "peak_memory_mb", "num_steps", "num_params_M"):
        assert name in baseline["summary"]
    assert rows[1]["outcome"] in ("keep", "discard", "crash")
    assert " -> " in rows[1]["description"]
    assert (workspace / "runs/e2e/0.log").read_text().strip()
