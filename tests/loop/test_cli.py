"""The command line as a person uses it: init, run, log, recipes; errors as one line and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, make_workspace, reply
from typer.testing import CliRunner

import autoresearch
from autoresearch.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def make_repository(folder: Path, files: dict[str, str]) -> Path:
    """A person's own git repository with files committed."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q", "-b", "main")
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "mine")
    return folder


@pytest.mark.parametrize("form", ["ws", "./ws", ".", "absolute", "through-a-symlink", "new/parent/ws"])
def test_init_makes_a_committed_workspace_from_any_path_form(tmp_path, monkeypatch, form):
    """The path as a person types it, from the folder they are in (the README's own command first)."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "ws"
    argument = {"absolute": str(target), ".": ".", "through-a-symlink": "link/ws"}.get(form, form)
    if form == ".":
        target.mkdir()
        monkeypatch.chdir(target)
    elif form == "through-a-symlink":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
        target = tmp_path / "elsewhere" / "ws"
    elif form == "new/parent/ws":
        target = tmp_path / "new/parent/ws"
    result = invoke("init", argument, "--recipe", "tiny")
    assert result.exit_code == 0, result.output
    assert (target / "program.md").read_text().strip()
    assert (target / "recipes/tiny/train.py").is_file() and (target / "recipes/tiny/recipe.yaml").is_file()
    assert "runs/" in (target / ".gitignore").read_text()
    assert git(target, "status", "--porcelain") == ""
    assert "recipes/tiny/train.py" in git(target, "ls-files")
    assert "autoresearch run" in result.output and "Traceback" not in result.output


def test_init_dot_in_a_repository_without_a_recipe_as_run_suggests(tmp_path, monkeypatch):
    repo = make_repository(tmp_path / "project", {"README": "mine\n", "program.md": "Make it learn faster.\n"})
    monkeypatch.chdir(repo)
    suggestion = invoke("run", "--agent", "mutate").output.strip().split("add one with `", 1)[1].rstrip("`")
    assert suggestion == "autoresearch init . --recipe tiny"
    result = invoke(*suggestion.split()[1:])
    assert result.exit_code == 0, result.output
    assert git(repo, "status", "--porcelain") == "" and "recipes/tiny/train.py" in git(repo, "ls-files")
    assert git(repo, "log", "--format=%s").splitlines() == ["autoresearch init: recipe tiny", "mine"]
    assert (repo / "program.md").read_text() == "Make it learn faster.\n"  # the person's is kept


def test_init_into_a_folder_inside_a_git_repository_makes_that_folder_the_workspace(tmp_path, monkeypatch):
    """A monorepo: the workspace is the sub-folder; run, log and runs work from inside it."""
    monorepo = make_repository(tmp_path / "mono", {"service/app.py": "print('mine')\n"})
    (monorepo / "notes.txt").write_text("staged, not mine to commit\n")
    git(monorepo, "add", "notes.txt")
    monkeypatch.chdir(monorepo)
    result = invoke("init", "ml", "--recipe", "tiny")
    assert result.exit_code == 0, result.output
    assert not (monorepo / "ml" / ".git").exists()
    assert git(monorepo, "show", "--name-only", "--format=", "HEAD").split() == [
        "ml/.gitignore", "ml/program.md", "ml/recipes/tiny/prepare.py", "ml/recipes/tiny/recipe.yaml",
        "ml/recipes/tiny/train.py"]
    assert git(monorepo, "status", "--porcelain") == "A  notes.txt"  # the person's index is as it was
    make_workspace(monorepo / "ml", commit=False)  # a fast recipe next to tiny
    git(monorepo, "add", "ml")
    git(monorepo, "commit", "-q", "-m", "the synthetic recipe", "--", "ml")
    monkeypatch.chdir(monorepo / "ml")
    result = invoke("run", "--agent", "mutate", "--recipe", "recipes/synth", "--max-experiments", "2", "--tag", "m")
    assert result.exit_code == 0, result.output
    assert (monorepo / "ml" / "runs" / "ledger.db").is_file() and not (monorepo / "runs").exists()
    assert [row["number"] for row in json.loads(invoke("log", "--json").stdout)] == [0, 1]
    monkeypatch.chdir(monorepo / "ml" / "runs" / "m" / "worktree" / "ml" / "recipes")
    assert [row["tag"] for row in json.loads(invoke("runs", "--json").stdout)] == ["m"]
    assert git(monorepo, "status", "--porcelain") == "A  notes.txt"


def test_init_that_fails_in_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    """git cannot write its index (a real failure, at the last step): every folder init made goes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "no" / "such" / "index"))
    result = invoke("init", "new/ws", "--recipe", "tiny")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "nothing of it was left behind" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_init_that_fails_in_a_plain_folder_removes_only_what_it_made(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2\n")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "no" / "such" / "index"))
    result = invoke("init", ".", "--recipe", "tiny")
    assert result.exit_code == 1
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv"]  # no .git, recipes, program.md or .gitignore


def test_init_that_fails_in_a_repository_puts_it_back_as_it_was(tmp_path, monkeypatch):
    """The commit fails after `git add` (the branch is locked): the index, .gitignore and files are as before."""
    repo = make_repository(tmp_path / "repo", {".gitignore": "*.tmp\n"})
    (repo / ".git" / "refs" / "heads" / "main.lock").write_text("")
    monkeypatch.chdir(repo)
    result = invoke("init", ".", "--recipe", "tiny")
    assert result.exit_code == 1
    assert "nothing of it was left behind" in result.output and len(result.output.strip().splitlines()) == 1
    assert (repo / ".gitignore").read_text() == "*.tmp\n"
    assert sorted(p.name for p in repo.iterdir()) == [".git", ".gitignore"]
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / ".git" / "refs" / "heads" / "main.lock").exists()  # the lock is not init's to remove


def test_init_with_the_gpu_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "gpu"
    result = invoke("init", "gpu", "--recipe", "nanogpt")
    assert result.exit_code == 0, result.output
    assert "recipes/nanogpt/train.py" in git(target, "ls-files")


def test_init_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "ws"
    invoke("init", "ws", "--recipe", "tiny")
    (target / "recipes/tiny/train.py").write_text("mine\n")
    result = invoke("init", "ws", "--recipe", "tiny")
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (target / "recipes/tiny/train.py").read_text() == "mine\n"


def test_init_unknown_recipe_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "ws", "--recipe", "nope")
    assert result.exit_code == 1
    assert "tiny" in result.output
    assert not (tmp_path / "ws").exists()


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
    assert {"commit", "outcome", "reason", "metric", "gain", "duration_seconds", "description"} <= set(rows[0])


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
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: --budget must be more than zero, not -3"]


def test_every_gain_has_the_same_sign(workspace, fake_llm, monkeypatch):
    """run's last line, log's column and totals, runs and show agree: a lower val_loss is a positive gain."""
    fake_llm.set_script([reply("lower lr", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    done = invoke("run", "--max-experiments", "2", "--tag", "g", "--noise-runs", "0")
    assert done.exit_code == 0, done.output
    assert "gain +0.04 over the baseline" in done.output
    rows = json.loads(invoke("log", "--json").stdout)
    assert rows[1]["gain"] == pytest.approx(0.04)
    assert "gain over baseline +0.04" in invoke("log").stdout
    assert json.loads(invoke("runs", "--json").stdout)[0]["gain"] == pytest.approx(0.04)
    assert "gain +0.04 over the best before it" in invoke("show", "1").stdout


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"autoresearch {autoresearch.__version__}\n"


def test_run_takes_a_recipe_by_its_bare_name_or_lists_the_recipes(workspace):
    assert invoke("run", "--agent", "mutate", "--recipe", "synth", "--max-experiments", "1").exit_code == 0
    result = invoke("run", "--agent", "mutate", "--recipe", "tiny", "--max-experiments", "1")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: tiny is not a recipe folder (it has no recipe.yaml); "
                                     "the recipes here: recipes/synth")


def test_review_commands_from_inside_a_runs_worktree_find_the_workspace(workspace, monkeypatch):
    assert invoke("run", "--agent", "mutate", "--max-experiments", "2", "--tag", "w").exit_code == 0
    monkeypatch.chdir(workspace / "runs" / "w" / "worktree" / "recipes" / "synth")
    assert [row["tag"] for row in json.loads(invoke("runs", "--json").stdout)] == ["w"]
    assert [row["number"] for row in json.loads(invoke("log", "--json").stdout)] == [0, 1]
    assert "run w done" in invoke("run", "--agent", "mutate", "--resume", "w", "--max-experiments", "1").output


def test_log_finds_the_workspace_of_a_worktree_without_loading_gitpython(workspace):
    """The review commands stay fast: the worktree's owner is read from git's files, not asked of git."""
    assert invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "w").exit_code == 0
    probe = ("import sys; from autoresearch.cli import app\n"
             "try:\n    app(['log', '--tag', 'w', '--json'])\nexcept SystemExit:\n    pass\n"
             "print('git' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=workspace / "runs" / "w" / "worktree",
                          capture_output=True, text=True)
    assert json.loads(done.stdout)[0]["tag"] == "w"
    assert done.stderr.strip() == "False"


def test_a_count_of_one_reads_in_the_singular(workspace):
    result = invoke("run", "--agent", "mutate", "--max-experiments", "1", "--tag", "one", "--noise-runs", "0")
    assert result.exit_code == 0, result.output
    assert "(reached --max-experiments 1): 1 experiment, 0 changes kept over the baseline" in result.output
    assert invoke("log").stdout.splitlines()[-1].startswith("1 experiment, 1 kept")


def test_bad_prompt_tokens_is_one_line(workspace):
    result = invoke("run", "--agent", "mutate", "--prompt-tokens", "0")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --prompt-tokens must be at least 1, not 0"
