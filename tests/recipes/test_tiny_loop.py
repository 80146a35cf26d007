"""End to end: a new workspace with the real tiny recipe, the loop run on it for a few seconds of budget."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tinykit import init_tiny

from autoresearch.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_init_then_run_the_tiny_recipe_then_log(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    workspace = tmp_path / "ws"
    init_tiny(workspace, runner)  # a grace no busy machine reaches: the test is of the loop, not of the machine
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


@pytest.mark.slow
def test_a_tiny_model_that_looks_ahead_is_refused_through_the_loop(tmp_path, fake_llm, monkeypatch):
    """The agent turns the attention's causal mask off: the model trains to read the next byte, and the
    harness's evaluation refuses it (`invalid`) instead of keeping its near-zero loss."""
    from conftest import reply

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    workspace = tmp_path / "ws"
    init_tiny(workspace, runner)  # a grace no busy machine reaches: the test is of the loop, not of the machine
    monkeypatch.chdir(workspace)
    line = "        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)"
    # Its output projections not zeroed as well: the model reads ahead from its first step, however few steps a
    # busy machine allows (zeroed, a model of two steps leaks less than the check's tolerance: it is near causal)
    zeroed = "        for block in self.blocks:\n            nn.init.zeros_(block.attn.proj.weight)\n"
    fake_llm.set_script([reply("attend both ways", line, line.replace("is_causal=True", "is_causal=False"))
                         + "train.py\n<<<<<<< SEARCH\n" + zeroed + "=======\n        for block in self.blocks:\n"
                         "            pass\n>>>>>>> REPLACE\n"
                         + "train.py\n<<<<<<< SEARCH\n        nn.init.zeros_(self.lm_head.weight)\n=======\n"
                         "        pass\n>>>>>>> REPLACE\n"])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    result = runner.invoke(app, ["run", "--budget", "3", "--max-experiments", "2", "--noise-runs", "0",
                                 "--tag", "ahead"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(runner.invoke(app, ["log", "--json"]).stdout)
    assert rows[0]["outcome"] == "keep"
    assert rows[1]["outcome"] == "invalid" and "causal" in rows[1]["reason"], rows[1]["reason"]
    assert rows[1]["metric"] is None
