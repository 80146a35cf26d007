"""A run's settings: refused when they cannot work, kept across resumes, overridden only when given again."""

from __future__ import annotations

import json

import pytest
from conftest import SYNTH_RECIPE, git, make_workspace, reply
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.ledger import Ledger

BETTER = reply("lower lr", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def experiments(root, tag="t"):
    return Ledger(root / "runs/ledger.db").experiments(tag)


# --- nonsense numbers: one line, exit 1, nothing made

@pytest.mark.parametrize("flag, value, words", [
    ("--max-experiments", "-1", "--max-experiments must be at least 1, not -1"),
    ("--max-experiments", "0", "--max-experiments must be at least 1, not 0"),
    ("--hours", "0", "--hours must be more than zero, not 0"),
    ("--hours", "-1", "--hours must be more than zero, not -1"),
    ("--min-delta", "-5", "--min-delta must be zero or more, not -5"),
    ("--max-cost", "-1", "--max-cost must be more than zero, not -1"),
    ("--max-tokens", "0", "--max-tokens must be at least 1, not 0"),
    ("--budget", "-3", "--budget must be more than zero, not -3"),
    ("--budget", "nan", "--budget must be more than zero, not nan"),
    ("--llm-timeout", "0", "--llm-timeout must be more than zero, not 0"),
    ("--agent-backoff", "-1", "--agent-backoff must be zero or more, not -1"),
    ("--noise-runs", "-1", "--noise-runs must be at least 0, not -1"),
    ("--noise-multiple", "inf", "--noise-multiple must be zero or more, not inf"),
    ("--max-agent-failures", "0", "--max-agent-failures must be at least 1, not 0"),
    ("--agent", "gpt", "--agent must be llm or mutate, not 'gpt'"),
    ("--reply-tokens", "0", "--reply-tokens must be at least 1, not 0"),
    ("--context-tokens", "1", "--context-tokens must be at least 2, not 1"),
])
def test_a_setting_that_cannot_work_is_one_line_and_nothing_is_made(workspace, flag, value, words):
    result = invoke("run", "--agent", "mutate", flag, value)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {words}"
    assert not (workspace / "runs").exists()
    assert git(workspace, "branch", "--list", "autoresearch/*") == ""


def test_a_completion_limit_that_fills_the_context_is_refused(workspace):
    result = invoke("run", "--agent", "mutate", "--context-tokens", "4096", "--reply-tokens", "4096")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --reply-tokens must be less than the model's context (4,096 tokens), not 4,096"


# --- resume goes on with the run's own settings

def test_resume_keeps_every_setting_the_run_was_started_with(workspace):
    started = invoke("run", "--agent", "mutate", "--tag", "t", "--max-experiments", "2", "--seed", "7",
                     "--min-delta", "0.001", "--noise-runs", "0", "--confirm-runs", "1", "--hours", "5",
                     "--budget", "3", "--max-tokens", "1000", "--noise-multiple", "1.5", "--reply-tokens", "2000",
                     "--context-tokens", "8192")
    assert started.exit_code == 0, started.output
    config = Ledger(workspace / "runs/ledger.db").run("t")["config"]
    again = invoke("run", "--resume", "t")
    assert again.exit_code == 0, again.output
    assert "reached --max-experiments 2" in again.output
    assert len(experiments(workspace)) == 2  # before the fix: the default, no limit at all
    run = Ledger(workspace / "runs/ledger.db").run("t")
    assert {key: run["config"][key] for key in config} == config
    assert (config["seed"], config["min_delta"], config["noise_runs"], config["confirm_runs"], config["hours"],
            config["budget_seconds"], config["max_tokens"], config["agent"]) == (7, 0.001, 0, 1, 5, 3, 1000, "mutate")
    assert (config["reply_tokens"], config["context_tokens"]) == (2000, 8192)


def test_a_flag_given_on_resume_overrides_that_setting_says_so_and_is_recorded(workspace):
    invoke("run", "--agent", "mutate", "--tag", "t", "--max-experiments", "2", "--noise-runs", "0", "--seed", "3")
    again = invoke("run", "--resume", "t", "--max-experiments", "4")
    assert again.exit_code == 0, again.output
    assert "run t: --max-experiments 4 overrides the run's 2" in again.output
    rows = experiments(workspace)
    assert len(rows) == 4 and {row["seed"] for row in rows} == {3}
    [override] = Ledger(workspace / "runs/ledger.db").run("t")["config"]["overrides"]
    assert (override["setting"], override["before"], override["after"]) == ("max_experiments", 2, 4)


def test_resume_talks_to_the_runs_own_endpoint(workspace, fake_llm, monkeypatch):
    """A resume without --base-url (and without OPENAI_BASE_URL now) must not fall back to the hosted endpoint."""
    fake_llm.set_script([BETTER])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    first = invoke("run", "--tag", "t", "--max-experiments", "2", "--model", "local-model", "--noise-runs", "0")
    assert first.exit_code == 0, first.output
    monkeypatch.delenv("OPENAI_BASE_URL")
    fake_llm.set_script([reply("wider", "WIDTH = 4", "WIDTH = 8")])
    again = invoke("run", "--resume", "t", "--max-experiments", "3")
    assert again.exit_code == 0, again.output
    assert [request["model"] for request in fake_llm.requests][-1] == "local-model"
    assert experiments(workspace)[-1]["description"] == "wider"


def test_log_runs_and_show_say_which_agent_made_each_experiment(workspace, fake_llm, monkeypatch):
    invoke("run", "--agent", "mutate", "--tag", "t", "--max-experiments", "2", "--noise-runs", "0")
    fake_llm.set_script([BETTER])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    again = invoke("run", "--resume", "t", "--agent", "llm", "--model", "fake-model", "--max-experiments", "3")
    assert again.exit_code == 0, again.output
    rows = json.loads(invoke("log", "--json").stdout)
    assert [(row["agent"], row["model"]) for row in rows] == [("mutate", None), ("mutate", None),
                                                               ("llm", "fake-model")]
    assert "agents mutate for 0-1, llm (fake-model) for 2" in invoke("log").stdout
    assert "mutate, llm (fake-model)" in invoke("runs").stdout
    assert "agent        llm (fake-model)" in invoke("show", "2").stdout


def test_hours_count_the_time_the_run_has_been_going_across_resumes(workspace):
    invoke("run", "--agent", "mutate", "--tag", "t", "--max-experiments", "2", "--noise-runs", "0")
    ledger = Ledger(workspace / "runs/ledger.db")
    assert ledger.run("t")["active_seconds"] > 0
    ledger.add_active_seconds("t", 3600)  # as if the run had been going for an hour before it was stopped
    again = invoke("run", "--resume", "t", "--max-experiments", "10", "--hours", "1")
    assert again.exit_code == 0, again.output
    assert "reached --hours 1" in again.output and len(experiments(workspace)) == 2


# --- a broken recipe, fixed and resumed

def test_a_fixed_recipe_is_what_the_resume_trains(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", recipe_yaml=SYNTH_RECIPE.replace("metric: val_loss", "metric: val_bpb"))
    monkeypatch.chdir(root)
    failed = invoke("run", "--agent", "mutate", "--tag", "t", "--noise-runs", "0", "--max-experiments", "2")
    assert failed.exit_code == 1
    assert "the evaluation printed no val_bpb line (it printed: val_loss)" in failed.output
    assert "fix the recipe and commit the fix, then `autoresearch run --resume t`" in failed.output
    recipe = root / "recipes/synth/recipe.yaml"
    recipe.write_text(SYNTH_RECIPE)
    pending = invoke("run", "--resume", "t")
    assert pending.exit_code == 1 and "commit or stash" in pending.output
    git(root, "commit", "-qam", "the metric is val_loss")
    fixed = invoke("run", "--resume", "t")
    assert fixed.exit_code == 0, fixed.output
    assert "starts again from the workspace's last commit" in fixed.output
    rows = experiments(root)
    assert [row["outcome"] for row in rows] == ["crash", "keep"]
    assert rows[1]["commit_sha"] == git(root, "rev-parse", "HEAD")
    assert Ledger(root / "runs/ledger.db").run("t")["base_commit"] == git(root, "rev-parse", "HEAD")


# --- the executor: Ray only with its extra, and never imported without it

WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from autoresearch.cli import app; app()"  # as if not installed


def tool_without_ray(root, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], cwd=root, capture_output=True, text=True,
                          timeout=120)


def test_ray_without_its_extra_is_one_line_naming_the_extra(workspace):
    result = tool_without_ray(workspace, "run", "--agent", "mutate", "--executor", "ray", "--max-experiments", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: --executor is ray, but Ray is not installed here: "
                                     "pip install -e '.[ray]' in the autoresearch clone (or EXTRAS=ray bash "
                                     "scripts/setup.sh)")
    assert not (workspace / "runs").exists()


def test_a_local_run_never_imports_ray(workspace):
    # Ray cannot be imported in that process: a run that tried would fail.
    result = tool_without_ray(workspace, "run", "--agent", "mutate", "--max-experiments", "2", "--noise-runs", "0",
                              "--budget", "2", "--tag", "t")
    assert result.returncode == 0, result.stderr
    assert [row["outcome"] for row in experiments(workspace)][0] == "keep"
    assert Ledger(workspace / "runs/ledger.db").training_runs("t")[0]["job"].startswith("local:")


@pytest.mark.parametrize("args, words", [
    (("--executor", "slurm"), "--executor must be local or ray, not 'slurm'"),
    (("--executor", "ray", "--gpus", "0,1"), "--gpus names GPUs of this machine; on Ray the cluster gives each "
                                             "training its own (--slots caps how many at once)"),
])
def test_executor_settings_that_cannot_work_are_refused(workspace, args, words):
    pytest.importorskip("ray")
    result = invoke("run", "--agent", "mutate", *args)
    assert result.exit_code == 1
    assert words in result.stderr
