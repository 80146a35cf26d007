"""Each edit format through the real loop (an experiment trained in each), auto's choice said at the start, every
call of a stopped run recorded, and a local model server that does not starve the training."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import SYNTH_RECIPE, SYNTH_TRAIN, RecordingReporter, make_workspace, nvidia_smi_on_path, reply
from faultkit import BETTER, TAG

TUNABLE = SYNTH_RECIPE + "tunable:\n  LEARNING_RATE: [0.1, 0.9]\n  WIDTH: {choices: [2, 4, 8]}\n"
SLOW_TRAIN = SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.0")


def tunable_workspace(root: Path, train: str = SYNTH_TRAIN) -> Path:
    return make_workspace(root, train=train, recipe_yaml=TUNABLE)


def outcomes(rows: list[dict]) -> list[tuple[int, str]]:
    return [(row["number"], row["outcome"]) for row in rows]


def test_knobs_trains_an_experiment_from_name_value_lines(run_loop, fake_llm):
    _, rows, _ = run_loop.small(["DESCRIPTION: a lower learning rate\nLEARNING_RATE = 0.3\n"], max_experiments=2,
                                files=tunable_workspace, agent_options={"edit_format": "knobs"})
    assert outcomes(rows) == [(0, "keep"), (1, "keep")]
    assert rows[1]["description"] == "a lower learning rate"
    assert "-LEARNING_RATE = 0.5\n+LEARNING_RATE = 0.3\n" in rows[1]["diff"]
    assert "save_model(" not in fake_llm.requests[0]["messages"][1]["content"]  # no file: the constants only


def test_whole_trains_an_experiment_from_the_file_written_back(run_loop, fake_llm):
    written = SYNTH_TRAIN.replace("WIDTH = 4", "WIDTH = 8")
    _, rows, _ = run_loop.small([f"DESCRIPTION: wider\n```python train.py\n{written}```\n"], max_experiments=2,
                                files=tunable_workspace, agent_options={"edit_format": "whole"})
    assert outcomes(rows) == [(0, "keep"), (1, "keep")]
    assert "-WIDTH = 4\n+WIDTH = 8\n" in rows[1]["diff"]
    assert "save_model(" in fake_llm.requests[0]["messages"][1]["content"]  # the whole file is shown


def test_search_replace_trains_an_experiment_from_a_block_that_skips_lines(run_loop, fake_llm):
    elided = reply("lower and wider", "LEARNING_RATE = 0.5\n...\nSLEEP_SECONDS = 0.0",
                   "LEARNING_RATE = 0.3\n...\nSLEEP_SECONDS = 0.0")
    _, rows, _ = run_loop.small([elided], max_experiments=2, files=tunable_workspace,
                                agent_options={"edit_format": "search-replace"})
    assert outcomes(rows) == [(0, "keep"), (1, "keep")]
    assert "WIDTH = 4" in rows[1]["diff"]  # the skipped line is kept as it was


def test_auto_gives_a_small_model_knobs_and_says_so_at_the_start(run_loop, fake_llm):
    reporter = RecordingReporter()
    loop, rows, _ = run_loop.small(["DESCRIPTION: lower\nLEARNING_RATE = 0.3\n"], max_experiments=2,
                                   files=tunable_workspace, reporter=reporter,
                                   agent_options={"model": "Qwen2.5-Coder-1.5B-Instruct"})
    assert outcomes(rows) == [(0, "keep"), (1, "keep")]
    said = [note for note in reporter.notes if "edit format" in note]
    assert said and "edit format knobs" in said[0] and "1.5B parameters, by the model's name" in said[0]
    assert loop.ledger.run(TAG)["config"]["edit_format"] == "auto"
    assert loop.ledger.run(TAG)["config"]["temperature"] == 0.2


def test_a_refused_reply_keeps_its_description_for_the_lineage(run_loop, fake_llm):
    no_block = "DESCRIPTION: lower the learning rate\nNOTES: then the width\nI would lower it.\n"
    _, rows, _ = run_loop.small([no_block] * 3 + [BETTER], max_experiments=3, files=tunable_workspace,
                                agent_options={"edit_format": "search-replace"})
    assert rows[1]["outcome"] == "invalid" and rows[1]["description"] == "lower the learning rate"
    assert rows[1]["notes"].startswith("then the width") and rows[1]["propose_seconds"] is not None
    assert "| 1 | invalid: " in fake_llm.requests[-1]["messages"][-1]["content"]
    assert "| lower the learning rate |" in fake_llm.requests[-1]["messages"][-1]["content"]


def test_a_call_under_way_at_ctrl_c_is_recorded_with_the_time_proposed(run_loop, fake_llm):
    loop = run_loop.make([{"content": BETTER, "delay": 30}], small=True, files=tunable_workspace)

    def interrupt_when_asked():
        deadline = time.monotonic() + 20
        while not fake_llm.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_asked, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_loop(loop=loop, small=True, max_experiments=3)
    row = loop.ledger.experiment(TAG, 1)
    assert row["outcome"] == "interrupted" and row["propose_seconds"] >= 0.3
    calls = loop.ledger.llm_calls(TAG, 1)
    assert len(calls) == 1 and "run stopped" in calls[0]["error"] and calls[0]["prompt_tokens"] > 100


@pytest.mark.parametrize("gpus,said", [(None, "uses its CPU, as the trainings do"),
                                       ("0", "uses GPU 0, as the trainings do")])
def test_a_model_server_on_this_machine_is_not_asked_while_a_training_on_what_it_uses_runs(
        run_loop, fake_llm, tmp_path, monkeypatch, gpus, said):
    # the scripted server listens in this process; the nvidia-smi on PATH shows this process on GPU 0
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", {
        "--query-gpu=index,uuid": "0, GPU-aaaa\n", "--query-compute-apps=pid,gpu_uuid": f"{os.getpid()}, GPU-aaaa\n"}))
    asked_while_training = []

    def answer(request):
        db = sqlite3.connect(f"file:{Path.cwd() / 'runs/ledger.db'}?mode=ro", uri=True, timeout=30)
        try:
            asked_while_training.append(db.execute("SELECT COUNT(*) FROM training_runs WHERE outcome = 'running'")
                                        .fetchone()[0])
        finally:
            db.close()
        return reply("wider", "WIDTH = 4", "WIDTH = 8") if len(asked_while_training) > 1 else BETTER

    reporter = RecordingReporter()
    _, rows, _ = run_loop([answer], max_experiments=3, sandbox="on", noise_runs=0, confirm_runs=0, reporter=reporter,
                          gpus=gpus, files=lambda root: tunable_workspace(root, SLOW_TRAIN))
    assert outcomes(rows) == [(0, "keep"), (1, "keep"), (2, "keep")]
    assert asked_while_training == [0, 0]  # never while a training ran: no draft ahead
    notes = [note for note in reporter.notes if "is on this machine" in note]
    assert notes and said in notes[0] and "--draft-ahead" in notes[0]


def test_a_model_server_on_another_gpu_than_the_trainings_drafts_ahead(run_loop, fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nvidia_smi_on_path(tmp_path / "bin", {
        "--query-gpu=index,uuid": "0, GPU-aaaa\n1, GPU-bbbb\n",
        "--query-compute-apps=pid,gpu_uuid": f"{os.getpid()}, GPU-bbbb\n"}))
    reporter = RecordingReporter()
    run_loop([BETTER, reply("wider", "WIDTH = 4", "WIDTH = 8")], max_experiments=3, sandbox="on", noise_runs=0,
             confirm_runs=0, gpus="0", reporter=reporter, files=lambda root: tunable_workspace(root, SLOW_TRAIN))
    assert not [note for note in reporter.notes if "is on this machine" in note]
    assert "# Training now" in fake_llm.requests[1]["messages"][-1]["content"]


def test_forcing_draft_ahead_drafts_beside_a_cpu_training(run_loop, fake_llm):
    reporter = RecordingReporter()
    _, rows, _ = run_loop([BETTER, reply("wider", "WIDTH = 4", "WIDTH = 8")], max_experiments=3, sandbox="on",
                          noise_runs=0, confirm_runs=0, draft_ahead=True, reporter=reporter,
                          files=lambda root: tunable_workspace(root, SLOW_TRAIN))
    assert not [note for note in reporter.notes if "is on this machine" in note]
    assert "# Training now" in fake_llm.requests[1]["messages"][-1]["content"]


# the first baseline (experiment 0) hangs past its budget, as one did beside a local model's prefill; its re-run not
HANGS_FIRST = SYNTH_TRAIN.replace("# --- training\n", "# --- training\nif os.path.basename(os.environ['AUTORESEARCH_"
                                  "OUTPUT_DIR'].rstrip('/')) == '0':\n    time.sleep(30)\n")


def test_a_baseline_that_timed_out_beside_the_tools_own_draft_is_trained_again_not_blamed(run_loop, fake_llm):
    reporter = RecordingReporter()
    _, rows, summary = run_loop([BETTER], max_experiments=3, sandbox="on", noise_runs=0, confirm_runs=0,
                                draft_ahead=True, budget_seconds=2, reporter=reporter,
                                files=lambda root: tunable_workspace(root, HANGS_FIRST))
    assert rows[0]["outcome"] == "timeout"
    baselines = [row for row in rows if row["description"].startswith("baseline") and row["outcome"] == "keep"]
    assert baselines and baselines[0]["number"] > 0
    assert any("timed out while the tool drafted a proposal beside it" in note for note in reporter.notes)
    assert summary.baseline_metric is not None


@pytest.mark.parametrize("flags,said", [(["--edit-format", "diff"], "--edit-format must be auto, search-replace, "
                                                                     "whole, knobs, not 'diff'"),
                                        (["--temperature", "3"], "--temperature must be from 0 to 2, not 3")])
def test_the_cli_refuses_an_unknown_edit_format_or_temperature_in_one_line(workspace, flags, said):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    result = CliRunner().invoke(app, ["run", *flags])
    assert result.exit_code == 1 and said in result.output
