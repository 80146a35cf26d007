"""What a new user trips over (issue 23, items 1 to 13): each with the behaviour that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import nvidia_smi_on_path, reply
from typer.testing import CliRunner

from autoresearch.cli import app

from autoresearch.agents import LLMAgent
from autoresearch.errors import InvalidSetting
from autoresearch.ledger import Ledger
from autoresearch.settings import check_gpus

CRASH = reply("break it", "save_model(LEARNING_RATE, WIDTH)", "loss = 1 / 0")


# --- 1. results.tsv: no metric is an empty cell, never 0.000000


def test_results_tsv_leaves_the_metric_of_a_failed_row_empty(workspace, run_loop):
    rows = run_loop([CRASH], draft_ahead=False).rows
    assert rows[1]["outcome"] == "crash"
    lines = (workspace / "runs/t/results.tsv").read_text().splitlines()
    assert lines[2].split("\t")[1:4] == ["", "0.0", "crash"]
    assert lines[1].split("\t")[1] == "0.290000"


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# --- 2. --gpus is checked against the machine's GPUs


def test_gpus_on_a_machine_without_gpus_is_refused_before_anything_is_made(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", None))
    result = invoke("run", "--agent", "mutate", "--gpus", "0,1")
    assert result.exit_code == 1
    assert "--gpus names GPUs (0,1), but this machine has none that nvidia-smi shows" in result.output
    assert not (workspace / "runs" / "ledger.db").exists()


def test_gpus_that_are_not_the_machines_are_refused(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", "0, GPU-aaaa-1111\n1, GPU-bbbb-2222\n"))
    result = invoke("run", "--agent", "mutate", "--gpus", "x")
    assert result.exit_code == 1
    assert "--gpus names x, not a GPU of this machine (its GPUs: 0, 1" in result.output
    result = invoke("run", "--agent", "mutate", "--gpus", "1,2")
    assert "--gpus names 2, not a GPU of this machine" in result.output


def test_gpus_by_index_or_uuid_pass():
    present = [("0", "GPU-aaaa-1111"), ("1", "GPU-bbbb-2222")]
    check_gpus("0,1", present)
    check_gpus("GPU-bbbb-2222, 0", present)
    check_gpus("GPU-aaaa", present)  # the start of a UUID, as CUDA takes it
    with pytest.raises(InvalidSetting, match="names GPU-cccc"):
        check_gpus("GPU-cccc", present)


# --- 3. a closed stderr (`2>&1 | head`, a dead tee) stops the lines, not the run

CLI = "from autoresearch.cli import app; app()"


def test_a_run_whose_stderr_reader_went_away_goes_on_to_its_end(workspace):
    import subprocess
    import sys

    from autoresearch.ledger import Ledger

    process = subprocess.Popen([sys.executable, "-c", CLI, "run", "--agent", "mutate", "--tag", "p",
                                "--max-experiments", "4", "--noise-runs", "1"],
                               cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    first = process.stderr.readline()  # the reader reads one line (as `head -1` would) and goes away
    process.stderr.close()
    assert process.wait(timeout=120) == 0
    assert b"run p" in first
    rows = Ledger(workspace / "runs" / "ledger.db").experiments("p")
    assert len(rows) == 4 and all(row["outcome"] != "running" for row in rows)


# --- 4. nothing listening at a loopback endpoint is said at once; the resume hint carries --base-url

def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens at."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nothing_listening_at_a_local_endpoint_stops_the_start_at_once_with_the_flag(workspace):
    import time

    from autoresearch.ledger import Ledger

    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    result = invoke("run", "--tag", "t", "--base-url", url, "--model", "m", "--max-agent-failures", "3",
                    "--agent-backoff", "2", "--noise-runs", "0")
    assert result.exit_code == 1
    assert time.monotonic() - started < 2  # no backoff waited: one try
    assert result.output.strip().splitlines()[-1] == (
        f"error: run t stopped: nothing listens at {url} (connection refused): start the server there, or give the "
        "URL it listens at; after fixing it, go on with: autoresearch run --resume t --base-url BASE_URL")
    assert len(Ledger(workspace / "runs/ledger.db").llm_calls("t", 0)) == 1


def test_nothing_listening_during_the_night_is_retried_and_the_stop_names_the_url():
    from autoresearch.errors import StopRun
    from autoresearch.proposer import Proposer

    agent = LLMAgent(model="m", base_url=f"http://127.0.0.1:{closed_port()}/v1", request_timeout=5)
    notes: list[str] = []
    proposer = Proposer(agent, 2, backoff_seconds=0.01, note=notes.append)
    with pytest.raises(StopRun) as stopped:
        proposer.ask("experiment 4", lambda: agent.check(lambda call: None))
    assert len(notes) == 1 and "nothing listens at" in notes[0] and "trying again in 0.01s" in notes[0]
    assert str(stopped.value).startswith("the LLM endpoint failed 2 times in a row (last: nothing listens at")
    assert stopped.value.remedy.setting == "base_url"


# --- 5. the help says what it means, once

def test_run_help_keeps_the_ray_extra_and_says_the_resume_rule_once():
    import re

    from autoresearch.settings import RAY_EXTRA_HINT

    text = re.sub(r"[\s│]+", " ", invoke("run", "--help").output)  # the panel's borders and wrapping out
    assert RAY_EXTRA_HINT.replace("'", "") in text.replace("'", "")  # [ray] not eaten as markup
    assert "[ray]" in text
    assert text.count("run's own") == 1


def test_log_help_says_gain():
    text = invoke("log", "--help").output
    assert "gain" in text and "delta" not in text


# --- 7. a plain git folder is not written into; init says what it committed

@pytest.mark.parametrize("command", [("log",), ("runs",), ("report",), ("verify",), ("run", "--agent", "mutate"),
                                     ("rm", "x", "--yes")])
def test_a_refused_command_in_a_plain_git_folder_writes_nothing_there(tmp_path, monkeypatch, command):
    from conftest import git

    plain = tmp_path / "repo"
    plain.mkdir()
    (plain / "notes.txt").write_text("the person's own work\n")
    git(plain, "init", "-q")
    git(plain, "add", "notes.txt")
    git(plain, "commit", "-qm", "mine")
    monkeypatch.chdir(plain)
    result = invoke(*command)
    assert result.exit_code == 1
    assert "program.md is missing" in result.output and "autoresearch init" in result.output
    assert sorted(path.name for path in plain.iterdir()) == [".git", "notes.txt"]


def test_init_in_a_folder_with_its_own_uncommitted_program_says_it_was_kept(tmp_path, monkeypatch):
    from conftest import git

    folder = tmp_path / "repo"
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / "program.md").write_text("My own direction.\n")
    monkeypatch.chdir(folder)
    result = invoke("init", ".")
    assert result.exit_code == 0, result.output
    assert "program.md, committed" not in result.output
    assert "your program.md kept as it was" in result.output
    assert git(folder, "status", "--porcelain", "program.md") == "?? program.md"  # still the person's, uncommitted
    assert (folder / "program.md").read_text() == "My own direction.\n"


# --- 8. the counters count alike: what --max-experiments counts, and keeps over the baseline

def test_the_last_line_counts_what_max_experiments_counts_and_keeps_over_the_baseline(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    from conftest import SYNTH_TRAIN, make_workspace

    root = make_workspace(tmp_path / "ws", train=SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.0"))
    monkeypatch.chdir(root)
    process = subprocess.Popen([sys.executable, "-c", CLI, "run", "--agent", "mutate", "--tag", "c", "--noise-runs",
                                "0", "--max-experiments", "5"], cwd=root, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:  # Ctrl-C while experiment 1 trains: it is interrupted, and does not count
        seen.append(line)
        if "experiment 1: training" in line:
            process.send_signal(signal.SIGINT)
            break
    process.stderr.read()
    assert process.wait(timeout=60) == 130, seen
    assert any("experiment 1: started; 1 of 5 finished" in line for line in seen), seen  # not "experiment 2 of 5"
    result = invoke("run", "--resume", "c", "--max-experiments", "3")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert "(reached --max-experiments 3): 4 experiments (3 that count, 1 interrupted), " in last
    kept = sum(row["outcome"] == "keep" for row in Ledger(root / "runs/ledger.db").experiments("c"))
    assert f"{kept - 1} change{'' if kept == 2 else 's'} kept over the baseline" in last


# --- 9. the report shows the noise floor and the keep margin

def test_the_report_shows_the_noise_floor_and_the_keep_margin(tmp_path, monkeypatch):
    from noisy_recipe import make_noisy_workspace

    from autoresearch.review import run_keep_margin

    root = make_noisy_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    assert invoke("run", "--agent", "mutate", "--tag", "n", "--max-experiments", "1", "--noise-runs", "2").exit_code == 0
    ledger = Ledger(root / "runs/ledger.db")
    run = ledger.run("n")
    assert run["noise_std"] > 0
    margin = run_keep_margin(run, ledger.experiment("n", 0))
    assert margin is not None and margin > 0
    result = invoke("report", "--tag", "n")
    assert result.exit_code == 0, result.output
    page = (root / "runs/n/report.html").read_text()
    assert f"±{run['noise_std']:.3g} (std over 3 seeded runs)" in page and "noise floor" in page
    assert f"{margin:.3g}" in page and "keep margin" in page


# --- 10. the data preparation says how it goes, and a prepare that hangs or fails stops in bounded time

PREPARING = '''
if __name__ == "__main__" and sys.argv[1:] == []:
    import time
    for n in range(1, 4):
        print(f"downloading shard {n} of 3\\x1b[2K", flush=True)
        time.sleep(0.7)
    print("show: /nonexistent/train", flush=True)
    if os.environ.get("PREPARE_MODE") == "hang":
        print("waiting for the network", flush=True)
        time.sleep(600)
    if os.environ.get("PREPARE_MODE") == "fail":
        print("shard 4: gave up after 6 attempts: no network", flush=True)
        sys.exit(2)
'''


def preparing_workspace(tmp_path, monkeypatch, mode: str):
    from conftest import SYNTH_PREPARE, SYNTH_RECIPE, make_workspace

    recipe = SYNTH_RECIPE + "prepare: python prepare.py\nprepare_seconds: 4\nenv: [PREPARE_MODE]\n"
    root = make_workspace(tmp_path / "ws", prepare=SYNTH_PREPARE + PREPARING, recipe_yaml=recipe)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PREPARE_MODE", mode)
    return root


def test_the_prepare_steps_progress_is_shown_as_it_goes(tmp_path, monkeypatch):
    preparing_workspace(tmp_path, monkeypatch, "ok")
    result = invoke("run", "--agent", "mutate", "--tag", "p", "--max-experiments", "1", "--noise-runs", "0")
    assert result.exit_code == 0, result.output
    told = [line.split("prepare: ", 1)[1] for line in result.output.splitlines() if "run p: prepare: " in line]
    assert told and told[0] == "downloading shard 1 of 3"  # at once, and without the terminal's control bytes
    assert all(not line.startswith("show:") for line in told)
    assert len(told) <= 2  # at most one line every few seconds


@pytest.mark.parametrize("mode, said", [
    ("hang", "still running after 4s, the recipe's prepare_seconds: waiting for the network"),
    ("fail", "exit code 2: shard 4: gave up after 6 attempts: no network"),
])
def test_a_prepare_that_hangs_or_fails_stops_the_run_in_bounded_time_with_its_last_line(tmp_path, monkeypatch,
                                                                                         mode, said):
    import time

    preparing_workspace(tmp_path, monkeypatch, mode)
    started = time.monotonic()
    result = invoke("run", "--agent", "mutate", "--tag", "p", "--max-experiments", "1", "--noise-runs", "0")
    assert result.exit_code == 1
    assert time.monotonic() - started < 30
    assert f"the recipe's prepare step failed ({said}); see " in result.output


# --- 11. "the latest run" is the one most recently active

def test_after_resuming_an_older_run_log_and_report_pick_it(workspace):  # verify picks by the same pick_tag
    import json
    import time

    from autoresearch.review import pick_tag

    for tag in ("older", "newer"):
        assert invoke("run", "--agent", "mutate", "--tag", tag, "--max-experiments", "1",
                      "--noise-runs", "0").exit_code == 0
        time.sleep(1.1)  # the ledger's times are to the second
    assert pick_tag(Ledger(workspace / "runs/ledger.db"), None) == "newer"
    assert invoke("run", "--resume", "older", "--max-experiments", "2").exit_code == 0
    assert pick_tag(Ledger(workspace / "runs/ledger.db"), None) == "older"
    assert {row["tag"] for row in json.loads(invoke("log", "--json").stdout)} == {"older"}
    assert invoke("report").stdout.strip().endswith("runs/older/report.html")


# --- 12. taking a result home: the run's last lines say the git commands, and they work

def test_a_run_that_kept_a_change_says_how_to_take_it_home(workspace, fake_llm):
    import re
    import shlex

    from conftest import git

    fake_llm.set_script([reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")])
    result = invoke("run", "--tag", "t", "--base-url", fake_llm.base_url, "--model", "fake-model",
                    "--max-experiments", "2", "--noise-runs", "0")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("take it home: the best is on branch autoresearch/t;")
    commands = re.findall(r"`(git [^`]+)`", last)
    assert commands == ["git diff HEAD...autoresearch/t", "git merge autoresearch/t",
                        "git cherry-pick HEAD..autoresearch/t"]
    assert "+LEARNING_RATE = 0.3" in git(workspace, *shlex.split(commands[0])[1:])
    git(workspace, *shlex.split(commands[1])[1:])
    assert "LEARNING_RATE = 0.3" in (workspace / "recipes/synth/train.py").read_text()


def test_a_run_that_kept_nothing_has_nothing_to_take_home(workspace):
    result = invoke("run", "--agent", "mutate", "--tag", "m", "--max-experiments", "1", "--noise-runs", "0")
    assert result.exit_code == 0 and "take it home" not in result.output


# --- 6. the README tells a new user what is true: how to install, how long, which port

REPOSITORY = Path(__file__).resolve().parents[2]


def test_no_document_tells_to_install_an_unpublished_package_by_name():
    import re

    from autoresearch.settings import RAY_EXTRA_HINT

    texts = {path: path.read_text() for pattern in ("README.md", "docs/*.md", "recipes/*/README.md", "recipes/*/*.py",
                                                    "benchmarks/*.py") for path in REPOSITORY.glob(pattern)}
    texts["settings.RAY_EXTRA_HINT"] = RAY_EXTRA_HINT
    by_name = re.compile(r"pip install '?autoresearch\[")
    assert [where for where, text in texts.items() if by_name.search(text)] == []
    assert "-e '.[ray]'" in RAY_EXTRA_HINT and "clone" in RAY_EXTRA_HINT
    readme = (REPOSITORY / "README.md").read_text()
    assert "not published on PyPI" in readme and "pip install -e '.[ray]'" in readme


def test_the_readme_says_what_set_up_and_the_tests_take_and_where_local_servers_listen():
    readme = (REPOSITORY / "README.md").read_text()
    assert "Ollama http://localhost:11434/v1" in readme and "8000/v1 for vLLM/Ollama" not in readme
    assert "`.venv` takes 1.4 GB" in readme and "apt-get" in readme and "about 20 minutes" in readme
    assert "init ~/gpt-ws --recipe nanogpt" in readme and "~1.6 GB" in readme  # the GPU flow and its download
    assert "bits per byte" in readme and "docs/recipe-contract.md" in readme  # another metric: how it plugs in
