"""The morning review on a ledger made by real runs: log, runs, show, plot, report, and the live view.

One module-wide workspace holds two runs made through the real loop against the fake endpoint
(reporting fixed token usage, so costs are exact): `night` tries one change of every outcome
(keep, discard, crash, invalid, timeout, keep) with gpt-5-mini, and `local` runs a model with no
price and is stopped by Ctrl-C in its third experiment. Only the clock is pinned afterwards (the
timestamps and durations in the ledger), so that text output can be compared whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SYNTH_TRAIN, LoopRunner, make_workspace, reply
from fake_llm import FakeLLM
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.console import Reporter
from autoresearch.ledger import Ledger
from autoresearch.plot import MAX_LABELS, labelled_experiments

runner = CliRunner()
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
CALL_COST = (1000 * 0.25 + 200 * 2.0) / 1e6  # gpt-5-mini's default price, per call
NIGHT_SCRIPT = [
    reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3"),
    reply("halve the width", "WIDTH = 4", "WIDTH = 2"),
    reply("divide by zero", "save_model(LEARNING_RATE, WIDTH)", "loss = 1 / 0"),
    reply("edit the evaluation", "    return (learning_rate - 0.3) ** 2 + 1.0 / width", "    return 0.0",
          filename="prepare.py"),
    reply("sleep past the budget", "SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 30.0"),
    reply("double the width", "WIDTH = 4", "WIDTH = 8"),
]


class CtrlCAtExperiment(Reporter):
    """Raises KeyboardInterrupt when an experiment starts proposing, as Ctrl-C would at that moment."""

    def __init__(self, number: int):
        self.number = self.current = number

    def experiment_started(self, number):
        self.current = number

    def phase(self, name, description=None, budget=None, grace=None, slot=None, number=None):
        if self.current == self.number:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """The workspace with runs `night` and `local`; yields its root (tests chdir there)."""
    root = tmp_path_factory.mktemp("review") / "ws"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AUTORESEARCH_MODEL"):
            patch.delenv(name, raising=False)
        patch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        make_workspace(root)
        patch.chdir(root)
        fake = FakeLLM()
        try:
            fake.set_script([{"content": text, "usage": USAGE} for text in NIGHT_SCRIPT])
            patch.setenv("OPENAI_BASE_URL", fake.base_url)
            result = runner.invoke(app, ["run", "--tag", "night", "--max-experiments", "7", "--model", "gpt-5-mini",
                                         "--budget", "1", "--no-draft-ahead"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            fake.set_script([{"content": NIGHT_SCRIPT[0], "usage": USAGE}])
            run_loop = LoopRunner(root.parent, patch, request=None)  # the run_loop fixture's, for the whole module
            with pytest.raises(KeyboardInterrupt):
                run_loop(endpoint=fake, agent_options={"model": "llama-local"}, reporter=CtrlCAtExperiment(2),
                         tag="local", max_experiments=5, budget_seconds=1, draft_ahead=False)
        finally:
            fake.close()
        pin_clock(root / "runs" / "ledger.db")
    return root


def pin_clock(path: Path) -> None:
    """Fixed timestamps and durations in place of the real ones (nothing else is touched)."""
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET started_at = '2026-11-23T01:00:00+00:00', finished_at = '2026-11-23T01:42:05+00:00'"
               " WHERE tag = 'night'")
    db.execute("UPDATE runs SET started_at = '2026-11-23T03:00:00+00:00', finished_at = '2026-11-23T03:12:00+00:00'"
               " WHERE tag = 'local'")
    db.execute("UPDATE runs SET slot_seconds = 2525 WHERE tag = 'night'")  # one slot, 42m05s
    db.execute("UPDATE runs SET slot_seconds = 720 WHERE tag = 'local'")
    db.execute("UPDATE experiments SET started_at = '2026-11-23T01:00:00+00:00', finished_at = '2026-11-23T01:05:00+00:00',"
               " propose_seconds = CASE WHEN propose_seconds IS NULL THEN NULL ELSE 12.5 END,"
               " train_seconds = CASE WHEN train_seconds IS NULL THEN NULL ELSE 60.0 + number END,"
               " total_seconds = CASE WHEN total_seconds IS NULL THEN NULL ELSE 75.0 + number END")
    db.execute("UPDATE training_runs SET seconds = 60.0 + experiment WHERE seconds IS NOT NULL")
    db.execute("UPDATE training_runs SET evaluation_seconds = 0.5 WHERE evaluation_seconds IS NOT NULL")
    db.execute("UPDATE training_runs SET sandbox = 'bubblewrap'")  # whatever this machine has
    db.execute("UPDATE runs SET sandbox = 'bubblewrap'")
    db.commit()
    db.close()


@pytest.fixture
def in_night(night, monkeypatch):
    monkeypatch.chdir(night)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield night
    monkeypatch.undo()
    time.tzset()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def ledger_rows(root: Path, tag: str) -> list[dict]:
    return Ledger(root / "runs" / "ledger.db").experiments(tag)


# --- log

def test_log_prints_every_experiment_with_its_cost(in_night):
    rows = ledger_rows(in_night, "night")
    shas = [(row["commit_sha"] or "-")[:7] for row in rows]
    result = invoke("log", "--tag", "night")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"""\
run night · recipes/synth · val_loss (lower is better) · agent llm (gpt-5-mini) · sandbox bubblewrap · finished
#  commit   parent  outcome  val_loss    gain   time  tokens     cost  description
0  {shas[0]}       -  keep         0.29          1m15s       -        -  baseline: the unmodified recipe
1  {shas[1]}       0  keep         0.25   +0.04  1m16s    1.2k  $0.0006  lower the learning rate
2  {shas[2]}       1  discard       0.5   -0.25  1m17s    1.2k  $0.0006  halve the width
3  {shas[3]}       1  crash           -          1m18s    1.2k  $0.0006  divide by zero — exit code 1: ZeroDivisionError: division by zero
4  -             1  invalid         -          1m19s    1.2k  $0.0006  edit the evaluation — touched prepare.py
5  {shas[5]}       1  timeout         -          1m20s    1.2k  $0.0006  sleep past the budget — {rows[5]['reason']}
6  {shas[6]}       1  keep        0.125  +0.125  1m21s    1.2k  $0.0006  double the width
7 experiments, 3 kept, 1 discarded, 2 crashed or timed out, 1 invalid; best val_loss 0.125, gain over baseline +0.165; \
tokens 7.2k, cost $0.0039; noise floor 0 (the same value under 3 seeds)
"""


def test_log_filters_by_outcome_and_last(in_night):
    kept = invoke("log", "--tag", "night", "--outcome", "keep", "--last", "2").stdout.splitlines()
    assert [line.split()[0] for line in kept[2:-1]] == ["1", "6"]
    assert kept[-1].startswith("7 experiments (showing 2), 3 kept")
    crashes = json.loads(invoke("log", "--tag", "night", "--outcome", "crash", "--json").stdout)
    assert [row["number"] for row in crashes] == [3]
    assert [row["number"] for row in json.loads(invoke("log", "--tag", "night", "--last", "3", "--json").stdout)] == [4, 5, 6]
    interrupted = json.loads(invoke("log", "--tag", "local", "--outcome", "interrupted", "--json").stdout)
    assert [(row["number"], row["reason"]) for row in interrupted] == [(2, "stopped by the person (Ctrl-C)")]


@pytest.mark.parametrize("args, message", [
    (("--outcome", "kept"), "--outcome must be one of keep, discard, crash, timeout, invalid, interrupted"),
    (("--last", "0"), "--last must be at least 1"),
    (("--json", "--tsv"), "choose one of --json and --tsv"),
    (("--tag", "nope"), "no run tagged 'nope'"),
])
def test_log_refuses_bad_options_in_one_line(in_night, args, message):
    result = invoke("log", *args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {message}" + result.output.strip().split(message, 1)[1]]


def test_log_json_tsv_and_show_json_share_one_row_shape(in_night):
    rows = json.loads(invoke("log", "--tag", "night", "--json").stdout)
    tsv = list(csv.DictReader(io.StringIO(invoke("log", "--tag", "night", "--tsv").stdout), delimiter="\t"))
    assert [row["number"] for row in rows] == list(range(7))
    assert list(tsv[0]) == list(rows[0])
    for row, line in zip(rows, tsv):
        for key, value in row.items():
            if isinstance(value, (dict, list)):
                assert json.loads(line[key]) == value
            elif value is None:
                assert line[key] == ""
            else:
                assert type(value)(line[key]) == value, key
    assert rows[1]["cost_usd"] == pytest.approx(CALL_COST)
    assert rows[1]["prompt_tokens"] == 1000 and rows[1]["completion_tokens"] == 200
    assert rows[0]["evaluation"]["val_loss"] == pytest.approx(0.29)
    detail = json.loads(invoke("show", "2", "--tag", "night", "--json").stdout)
    assert {key: detail[key] for key in rows[2]} == rows[2]
    assert "WIDTH = 2" in detail["diff"]


def test_json_stays_valid_when_a_training_printed_nan(workspace, fake_llm, monkeypatch):
    fake_llm.set_script([reply("make it nan", "save_model(LEARNING_RATE, WIDTH)", "save_model(float('nan'), WIDTH)")])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    assert invoke("run", "--tag", "nan", "--max-experiments", "2", "--noise-runs", "0").exit_code == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    rows = json.loads(invoke("log", "--json").stdout, parse_constant=refuse)
    assert rows[1]["outcome"] == "crash" and rows[1]["reason"] == "nan" and rows[1]["evaluation"]["val_loss"] is None
    assert json.loads(invoke("show", "1", "--json").stdout, parse_constant=refuse)["evaluation"]["val_loss"] is None


def test_review_commands_without_runs(workspace):
    result = invoke("runs")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no runs yet" in result.output
    for command in ("log", "show", "plot", "report"):
        args = [command, "0"] if command == "show" else [command]
        result = invoke(*args)
        assert result.exit_code == 1, command
        assert result.output.strip() == "error: no runs yet in this workspace; start one with `autoresearch run`"


# --- runs

def test_runs_lists_every_run(in_night):
    result = invoke("runs")
    assert result.exit_code == 0, result.output
    training = dict(sqlite3.connect(in_night / "runs/ledger.db").execute(
        "SELECT tag, SUM(seconds) FROM training_runs GROUP BY tag"))  # pinned: 60 s plus the experiment's number
    night, local = f"{training['night'] / 2525:.0%}", f"{training['local'] / 720:.0%}"
    assert result.stdout == f"""\
tag    started           duration  experiments  kept  crashes  metric     best    gain     cost  duty  agent              sandbox     status       verify
night  2026-11-23 01:00    42m05s            7     3        2  val_loss  0.125  +0.165  $0.0039  {night:>4}  llm (gpt-5-mini)   bubblewrap  finished     -
local  2026-11-23 03:00    12m00s            3     2        0  val_loss   0.25   +0.04        -  {local:>4}  llm (llama-local)  bubblewrap  interrupted  -
"""
    summaries = json.loads(invoke("runs", "--json").stdout)
    assert [(s["tag"], s["status"], s["experiments"], s["interrupted"]) for s in summaries] == [
        ("night", "finished", 7, 0), ("local", "interrupted", 3, 1)]
    assert summaries[0]["cost_usd"] == pytest.approx(6 * CALL_COST)
    assert summaries[1]["cost_usd"] is None and summaries[1]["prompt_tokens"] == 1000


def test_runs_prices_a_local_model_from_the_workspace_config(in_night):
    (in_night / "autoresearch.yaml").write_text("prices:\n  llama-local: {input: 1.0, output: 1.0}\n")
    try:
        local = json.loads(invoke("runs", "--json").stdout)[1]
        assert local["cost_usd"] == pytest.approx(1200 / 1e6)
        assert "$0.0012   33%  llm (llama-local)  bubblewrap  interrupted" in invoke("runs").stdout.splitlines()[2]
    finally:
        (in_night / "autoresearch.yaml").unlink()


def test_a_run_killed_outright_shows_as_interrupted(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", train=SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 60.0"))
    monkeypatch.chdir(root)
    cli = Path(sys.executable).parent / "autoresearch"
    process = subprocess.Popen([str(cli), "run", "--agent", "mutate", "--tag", "killed", "--budget", "100"], cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (root / "runs" / "killed" / "0.log").exists():  # training has started
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        assert invoke("runs").stdout.split()[-2:] == ["running", "-"]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the tool and its training, with no chance to record anything
        process.wait()
    assert Ledger(root / "runs" / "ledger.db").run("killed")["status"] == "running"
    line = invoke("runs").stdout.splitlines()[1].split()
    assert (line[0], line[3], line[-2]) == ("killed", "-", "interrupted")
    assert invoke("log").stdout.splitlines()[0].endswith("· interrupted")


# --- show

def test_show_a_discarded_experiment_whole(in_night):
    rows = ledger_rows(in_night, "night")
    result = invoke("show", "2", "--tag", "night")
    assert result.exit_code == 0, result.output
    def rule(title: str) -> str:  # a section's rule: 100 wide where the output is no terminal
        return f"── {title} " + "─" * (100 - len(title) - 4)

    assert result.stdout == f"""\
experiment 2 of run night · recipes/synth
description  halve the width
outcome      discard: val_loss 0.5 is not better than the best before it, 0.25 (lower is better)
metric       val_loss 0.5 (gain -0.25 over the best before it, 0.25)
decision     discard, gain -0.25, margin 0, runs: 0.5 (best commit: 1 run)
commit       {rows[2]['commit_sha']} (parent {rows[1]['commit_sha'][:12]}, experiment 1)
slot         0
timings      proposing 12s, training 1m02s, in all 1m17s; started 2026-11-23 01:00
tokens       1000 prompt + 200 completion in 1 LLM call; cost $0.0006
agent        llm (gpt-5-mini)
seed         0
{rule("the harness's evaluation of its model")}
val_loss  0.5
{rule('what the training printed (information, not the metric)')}
peak_memory_mb  512
seed            0
{rule('training runs')}
attempt  kind   seed  slot  outcome  metric  training  evaluation  machine         sandbox     reason
      0  first     0  0     ok          0.5     1m02s        0.5s  others 0% (0s)  bubblewrap
{rule('diff against its parent')}
--- a/train.py
+++ b/train.py
@@ -5,7 +5,7 @@
 from prepare import save_model
 
 LEARNING_RATE = 0.3
-WIDTH = 4
+WIDTH = 2
 SLEEP_SECONDS = 0.0
 
 # --- training
{rule(f'log tail ({rows[2]["log_path"]})')}
---
peak_memory_mb: 512.0
seed: 0
"""


def test_show_a_crash_gives_its_reason_and_log_tail(in_night):
    out = invoke("show", "3", "--tag", "night").stdout
    assert "outcome      crash: exit code 1: ZeroDivisionError: division by zero" in out
    assert "loss = 1 / 0" in out.split("log tail", 1)[1] and "+loss = 1 / 0" in out


def test_show_prompt_prints_the_exact_prompt_and_reply(in_night):
    calls = Ledger(in_night / "runs" / "ledger.db").llm_calls("night", 4)
    out = invoke("show", "4", "--tag", "night", "--prompt").stdout
    assert "outcome      invalid: touched prepare.py" in out
    assert "+    return 0.0" in out  # the diff of an invalid proposal is kept too
    for message in calls[0]["messages"]:
        assert message["content"] in out
    assert calls[0]["reply"] in out
    assert "LLM call 1 (attempt 1) · gpt-5-mini · 1000+200 tokens · " in out
    assert f"{calls[0]['latency_seconds']:.1f}s · stop" in out  # its latency and why the model stopped


def test_show_the_baseline_lists_its_noise_runs(in_night):
    out = invoke("show", "0", "--tag", "night").stdout
    assert "none: the baseline is the unmodified recipe" in out
    runs = out.split("training runs", 1)[1].split("── diff against", 1)[0].strip().splitlines()[1:]
    assert [line.split()[1] for line in runs[1:]] == ["first", "noise", "noise"]


def test_show_an_unknown_experiment_is_one_line(in_night):
    result = invoke("show", "42", "--tag", "night")
    assert result.exit_code == 1
    assert result.output.strip() == "error: run night has no experiment 42 (it has 0 to 6)"


# --- plot

def test_plot_writes_a_png_of_the_run(in_night, tmp_path):
    target = tmp_path / "night.png"
    result = invoke("plot", "--tag", "night", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target)
    width, height = png_size(target)
    assert (width, height) == (1200, 650)
    assert 10_000 < target.stat().st_size < 300_000
    pixels = read_png(target)
    assert has_colour(pixels, (0x1f, 0x9e, 0x48))  # the kept points and the running best
    assert has_colour(pixels, (0xd9, 0x30, 0x25))  # the crash marked on the axis


def test_plot_defaults_to_the_run_folder(in_night):
    result = invoke("plot")
    assert Path(result.stdout.strip()) == in_night / "runs" / "local" / "progress.png"
    assert png_size(Path(result.stdout.strip())) == (1200, 650)


def test_plot_labels_every_kept_experiment_up_to_a_limit():
    kept, metric = [], 2.0
    for number in range(60):  # every 7th kept experiment gains five times as much as the others
        metric -= 0.05 if number and number % 7 == 0 else 0.01
        kept.append({"number": number, "metric": metric})
    chosen = labelled_experiments(kept, "lower")
    assert len(chosen) == MAX_LABELS and chosen[0] is kept[0]
    assert {7, 14, 21, 28, 35, 42, 49, 56} <= {r["number"] for r in chosen}
    assert labelled_experiments(kept[:5], "lower") == kept[:5]


# --- report

def test_report_is_one_self_contained_page(in_night, tmp_path):
    target = tmp_path / "night.html"
    result = invoke("report", "--tag", "night", "-o", str(target))
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert page.count("<details") == 7 and page.count("<tr class=") == 7
    assert "data:image/png;base64," in page
    for needle in ("http://", "https://", "<script", "<link", "@import"):
        assert needle not in page
    assert "halve the width" in page and "+WIDTH = 2" in page and "ZeroDivisionError" in page
    assert "&lt;" not in page.split("<body>", 1)[0]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(in_night, tmp_path):
    page = tmp_path / "night.html"
    invoke("report", "--tag", "night", "-o", str(page))
    shot = tmp_path / "night.png"
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--window-size=1280,1800", f"--screenshot={shot}", page.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    assert png_size(shot) == (1280, 1800)
    pixels = read_png(shot)
    assert has_colour(pixels, (0x1f, 0x9e, 0x48))  # the plot was decoded and drawn from its data: URI
    assert has_colour(pixels, (0xfc, 0xe8, 0xe6))  # the diff of the opened best experiment, its removed line
    dom = subprocess.run([*command[:-2], "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.count("<details") == 7 and "<details id=\"experiment-6\" open=\"\">" in dom


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def read_png(path: Path):
    from matplotlib.image import imread

    return imread(path)


def has_colour(pixels, rgb: tuple[int, int, int], tolerance: int = 6) -> bool:
    import numpy

    target = numpy.array(rgb) / 255
    distance = numpy.abs(pixels[..., :3] - target).max(axis=-1)
    return bool((distance <= tolerance / 255).sum() >= 20)


# --- the live view (the reporters alone: unit/test_console.py)

def test_the_loop_reports_tokens_and_cost_of_each_call(workspace, fake_llm, run_loop):
    class Tokens(Reporter):
        def __init__(self):
            self.calls = []

        def tokens_used(self, prompt_tokens, completion_tokens, cost, cached_tokens=0, number=None):
            self.calls.append((prompt_tokens, completion_tokens, cost))

    fake_llm.set_script([{"content": NIGHT_SCRIPT[0], "usage": USAGE}])
    fake_llm.set_check_script([{"content": "ok", "usage": {"prompt_tokens": 10, "completion_tokens": 1}}])
    reporter = Tokens()
    run_loop(max_experiments=2, noise_runs=0, reporter=reporter, agent_options={"model": "gpt-5-mini"})
    check_cost = (10 * 0.25 + 1 * 2.0) / 1e6
    assert reporter.calls == [(10, 1, pytest.approx(check_cost)), (1000, 200, pytest.approx(CALL_COST))]


def test_nothing_a_pipe_or_a_file_gets_is_wrapped(workspace, fake_llm, monkeypatch):
    """`show N | cat` keeps a diff line whole, `show --prompt > file` every prompt line (COLUMNS is 200 here)."""
    long_value = "0.5  # " + "why " * 120
    (workspace / "program.md").write_text("Lower the loss; " + "a long line of direction " * 20 + "\n")
    fake_llm.set_script([reply("a long comment", "LEARNING_RATE = 0.5", f"LEARNING_RATE = {long_value}")])
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    assert invoke("run", "--tag", "w", "--max-experiments", "2", "--noise-runs", "0").exit_code == 0
    shown = invoke("show", "1").stdout.splitlines()
    assert f"+LEARNING_RATE = {long_value}" in shown
    prompt_lines = invoke("show", "1", "--prompt").stdout.splitlines()
    sent = Ledger(workspace / "runs/ledger.db").llm_calls("w", 1)[0]["messages"][1]["content"]
    longest = max(sent.splitlines(), key=len)
    assert len(longest) > 200 and longest in prompt_lines
