"""The command line as a person uses it: init, run, log, recipes; errors as one line and exit 1."""

from __future__ import annotations

import json

from conftest import git, reply
from typer.testing import CliRunner

from autoresearch.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_init_makes_a_committed_workspace(tmp_path):
    target = tmp_path / "ws"
    result = invoke("init", str(target), "--recipe", "tiny")
    assert result.exit_code == 0, result.output
    assert (target / "program.md").read_text().strip()
    assert (target / "recipes/tiny/train.py").is_file() and (target / "recipes/tiny/recipe.yaml").is_file()
    assert "runs/" in (target / ".gitignore").read_text()
    assert git(target, "status", "--porcelain") == ""
    assert "recipes/tiny/train.py" in git(target, "ls-files")


def test_init_with_the_gpu_recipe(tmp_path):
    target = tmp_path / "gpu"
    result = invoke("init", str(target), "--recipe", "nanogpt")
    assert result.exit_code == 0, result.output
    assert "recipes/nanogpt/train.py" in git(target, "ls-files")


def test_init_refuses_to_overwrite(tmp_path):
    target = tmp_path / "ws"
    invoke("init", str(target), "--recipe", "tiny")
    (target / "recipes/tiny/train.py").write_text("mine\n")
    result = invoke("init", str(target), "--recipe", "tiny")
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (target / "recipes/tiny/train.py").read_text() == "mine\n"


def test_init_unknown_recipe_lists_the_known_ones(tmp_path):
    result = invoke("init", str(tmp_path / "ws"), "--recipe", "nope")
    assert result.exit_code == 1
    assert "tiny" in result.output


def test_recipes_lists_each_with_a_line():
    result = invoke("recipes")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert names == ["nanogpt", "tiny"]


def test_run_without_key_or_base_url_says_what_to_set(workspace):
    result = invoke("run", "--max-experiments", "1")
    assert result.exit_code == 1
    assert "OPENAI_API_KEY" in result.output and "--agent mutate" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_run_with_mutate_then_log_and_log_json(workspace):
    result = invoke("run", "--agent", "mutate", "--max-experiments", "3", "--tag", "m1")
    assert result.exit_code == 0, result.output
    assert "run m1 done" in result.output
    table = invoke("log")
    assert table.exit_code == 0
    assert "baseline: the unmodified recipe" in table.output
    assert "3 experiments" in table.output and "gain over baseline" in table.output
    rows = json.loads(invoke("log", "--tag", "m1", "--json").stdout)
    assert [row["number"] for row in rows] == [0, 1, 2]
    assert rows[0]["outcome"] == "keep" and rows[0]["metric"] > 0
    assert {"commit", "outcome", "reason", "metric", "delta", "duration_seconds", "description"} <= set(rows[0])


def test_run_through_the_cli_with_an_endpoint(workspace, fake_llm, monkeypatch):
    fake_llm.set_script([reply("lower lr", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    result = invoke("run", "--max-experiments", "2", "--tag", "llm1", "--model", "my-model")
    assert result.exit_code == 0, result.output
    assert fake_llm.requests[0]["model"] == "my-model"
    rows = json.loads(invoke("log", "--json").stdout)
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    assert rows[1]["prompt_tokens"] > 0


def test_log_without_runs_is_one_line(workspace):
    result = invoke("log")
    assert result.exit_code == 1
    assert "no runs yet" in result.output


def test_bad_budget_is_one_line(workspace):
    result = invoke("run", "--agent", "mutate", "--budget", "-3")
    assert result.exit_code == 1 and "--budget" in result.output


def test_a_count_of_one_reads_in_the_singular(workspace):
    result = invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "one", "--noise-runs", "0")
    assert result.exit_code == 0, result.output
    assert "(reached --max-experiments 1): 1 experiment, 1 kept" in result.output
    assert invoke("log").stdout.splitlines()[-1].startswith("1 experiment, 1 kept")


def test_bad_prompt_tokens_is_one_line(workspace):
    result = invoke("run", "--agent", "mutate", "--prompt-tokens", "0")
    assert result.exit_code == 1 and "--prompt-tokens must be positive" in result.output
