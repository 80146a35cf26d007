"""Experiments on a Ray cluster: a real local cluster started here (127.0.0.1, four logical GPUs), then stopped.

The synthetic recipe runs through `--executor ray` as a person would run it: each training and each
evaluation is a job on a slot's Ray actor, with its files sent as archives and its model brought
back. What is checked: the device each job was given (by the script's own account, and in the
ledger), the harness's deadline, Ctrl-C, a worker killed mid-training, `kill -9` of the tool and a
resume, the tiny recipe end to end, and that no actor and no process of a run is left afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import RAY_GPUS, make_workspace, processes_mentioning, reply
from faultkit import (BETTER, KILL_WAIT, RUN_FLAGS, TAG, ToolProcess, assert_consistent, inject, run_processes,
                      tool_env, wait_until)
from test_concurrency import DEVICE_TRAIN, ledger_query

from autoresearch.run.session import Session
from autoresearch.settings import resumed_options

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from autoresearch.execution.ray import NAMESPACE, RayExecutor  # noqa: E402

GPUS = RAY_GPUS
WORKER_TITLE = "ray::SlotWorker"  # the process title Ray gives a slot's actor


def slot_workers() -> list[int]:
    """Live processes of slot actors (of any run): none may outlast the run that made them."""
    return processes_mentioning(WORKER_TITLE)


def actors_alive(refs: list[str]) -> list[str]:
    """Which of the ledger's job refs (ray:<actor>:<job>) still name a live actor."""
    alive = []
    for ref in refs:
        name = ref.split(":")[1]
        try:  # a dead actor's name is still found while a handle to it lives (its class may not load): ask it
            ray.get(ray.get_actor(name, namespace=NAMESPACE).running.remote(), timeout=10)
        except Exception:
            continue
        alive.append(name)
    return alive


def run_on_ray(run_loop, script: list, **options) -> tuple[Session, list[dict]]:
    """A small run `t` on the cluster, in the sandbox, drafting ahead; returns (loop, its experiment rows)."""
    executor = RayExecutor(kill_wait_seconds=KILL_WAIT, require_sandbox=True)
    loop, rows, _ = run_loop.small(script, executor_object=executor, tag=TAG, sandbox="on", draft_ahead=True,
                                   executor="ray", **options)
    return loop, rows


def training_runs(root: Path) -> list[dict]:
    names = ("experiment", "attempt", "slot", "device", "summary", "started", "finished", "job", "sandbox", "outcome",
             "reason", "seconds")
    return [dict(zip(names, row)) for row in ledger_query(
        root, "SELECT experiment, attempt, slot, device, summary_json, started_at, finished_at, job, sandbox, outcome, "
              "reason, seconds FROM training_runs WHERE tag = ? ORDER BY id", TAG)]


def trainings_running(root: Path, experiment_from: int = 1) -> int:
    """How many training runs of experiments from `experiment_from` on the ledger shows running (0 before it exists)."""
    try:
        return ledger_query(root, "SELECT COUNT(*) FROM training_runs WHERE outcome = 'running' AND experiment >= ?",
                            experiment_from)[0][0]
    except sqlite3.OperationalError:  # the tool has not made the ledger yet
        return 0


def assert_nothing_left(root: Path) -> None:
    # Ray notices a dead driver and ends its actors within seconds on a quiet machine; a busy one takes longer
    refs = [run["job"] for run in training_runs(root)]
    assert wait_until(lambda: not actors_alive(refs), 30), actors_alive(refs)
    assert wait_until(lambda: not slot_workers(), 30), slot_workers()
    assert wait_until(lambda: run_processes(root) == [], 30), run_processes(root)


# --- slots: one GPU each

@pytest.mark.parametrize("slots", [2, 4])
def test_each_training_gets_its_own_gpu_of_the_cluster(ray_cluster, tmp_path, monkeypatch, fake_llm, slots, run_loop):
    root = make_workspace(tmp_path / "ws", train=DEVICE_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.5"))
    monkeypatch.chdir(root)
    script = [reply(f"variant {n}", "# --- summary", f"# --- summary\n# variant {n}") for n in range(8)]
    # four slots: what the cluster offers, not given; two: given, a cap below it
    _, rows = run_on_ray(run_loop, script, slots=None if slots == GPUS else slots, noise_runs=slots - 1,
                         max_experiments=slots + 1)
    assert all(row["outcome"] in ("keep", "discard") for row in rows), [row["reason"] for row in rows]
    runs = training_runs(root)
    for run in runs:  # the device Ray gave each job, by the script's own account, is the one recorded
        assert str(json.loads(run["summary"])["device"]).removesuffix(".0") == run["device"]
        assert run["job"].startswith("ray:") and run["sandbox"] == "bubblewrap"
    baseline = [run for run in runs if run["experiment"] == 0]
    assert len(baseline) == slots and {run["slot"] for run in baseline} == set(range(slots))
    assert len({run["device"] for run in baseline}) == slots  # side by side, each on a GPU of its own
    assert max(run["started"] for run in baseline) < min(run["finished"] for run in baseline)
    assert {run["slot"] for run in runs} == set(range(slots))
    for one in runs:  # never two jobs on one device at once
        for other in runs:
            if one is not other and one["device"] == other["device"]:
                assert one["finished"] <= other["started"] or other["finished"] <= one["started"]
    assert_consistent(root, rows)
    assert_nothing_left(root)


# --- the harness's limits

def test_a_training_past_its_deadline_is_stopped_by_the_harness_clock(ray_cluster, workspace, fake_llm, run_loop):
    # It ignores SIGTERM; the worker's runner has no deadline of its own: only the driver's clock stops it.
    stubborn = inject("wait for the data", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                           "time.sleep(60)")
    _, rows = run_on_ray(run_loop, [stubborn, BETTER], budget_seconds=2, max_experiments=3, slots=1)
    assert [(row["number"], row["outcome"]) for row in rows] == [(0, "keep"), (1, "timeout"), (2, "keep")]
    timed_out = next(run for run in training_runs(workspace) if run["experiment"] == 1)
    # budget 2 s, grace 1 s, then SIGTERM and SIGKILL after the kill wait; far from the 60 s it asked for
    assert 3 <= timed_out["seconds"] < 3 + KILL_WAIT + 3, timed_out
    assert_consistent(workspace, rows)
    assert_nothing_left(workspace)


def test_a_worker_killed_mid_training_is_a_crash_and_the_run_goes_on(ray_cluster, workspace, fake_llm, run_loop):
    killed = {}

    def kill_the_worker() -> None:
        def training_worker():
            for pid in run_processes(workspace):
                try:
                    for parent in psutil.Process(pid).parents():
                        if WORKER_TITLE in " ".join(parent.cmdline()):
                            return parent.pid
                except psutil.Error:
                    continue
            return None

        assert wait_until(lambda: trainings_running(workspace) == 1 and training_worker() is not None, 60)
        killed["pid"] = training_worker()
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    _, rows = run_on_ray(run_loop, [inject("wait for the data", "time.sleep(30)"), BETTER], max_experiments=3,
                         slots=1)
    killer.join(1)
    assert "pid" in killed
    assert [(row["number"], row["outcome"], row["reason"]) for row in rows][1:] == [
        (1, "crash", "worker lost"), (2, "keep", None)]
    lost = next(run for run in training_runs(workspace) if run["experiment"] == 1)
    assert (lost["outcome"], lost["reason"]) == ("crash", "worker lost")
    assert "the Ray worker running it was lost" in (workspace / "runs" / TAG / "1.log").read_text()
    assert_consistent(workspace, rows)
    assert_nothing_left(workspace)


def test_ctrl_c_cancels_every_job_of_the_run(ray_cluster, workspace, fake_llm):
    hang = [inject(f"wait for the data {n}", f"time.sleep({60 + n})") for n in (1, 2)]
    fake_llm.set_script([*hang, {"content": BETTER, "delay": 60}])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, "--slots", "2", "--sandbox", "on", "--draft-ahead",
                       "--executor", "ray", env=tool_env(fake_llm))
    assert wait_until(lambda: trainings_running(workspace) == 2, 60), tool.stderr()
    assert wait_until(lambda: len(run_processes(workspace)) >= 2, 20)
    started = time.monotonic()
    tool.interrupt()
    assert tool.wait(30) == 130, tool.stderr()
    assert time.monotonic() - started < 15
    rows = ledger_query(workspace, "SELECT number, outcome, reason FROM experiments WHERE tag = ? ORDER BY number", TAG)
    assert rows[1:3] == [(n, "interrupted", "stopped by the person (Ctrl-C)") for n in (1, 2)]
    assert_nothing_left(workspace)


def test_kill_9_of_the_tool_ends_its_jobs_and_a_resume_says_which_were_in_flight(ray_cluster, workspace, fake_llm):
    fake_llm.set_script([inject("wait for the data", "time.sleep(60)"), BETTER])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, "--executor", "ray", "--slots", "1",
                       env=tool_env(fake_llm))
    assert wait_until(lambda: trainings_running(workspace) == 1 and run_processes(workspace), 60), tool.stderr()
    tool.kill(whole_group=True)
    tool.wait(10)
    # The actors belong to the tool's Ray driver: Ray ends them, and their trainings die with them.
    assert_nothing_left(workspace)
    (job,) = [run["job"] for run in training_runs(workspace) if run["experiment"] == 1]
    resumed = ToolProcess(workspace, "run", "--resume", TAG, "--max-experiments", "2", env=tool_env(fake_llm))
    assert resumed.wait(120) == 0, resumed.stderr()
    assert f"in flight when the tool stopped: experiment 1 run 0 ({job}: gone with the tool); recorded as " \
           "interrupted" in resumed.stderr()
    rows = ledger_query(workspace, "SELECT number, outcome FROM experiments WHERE tag = ? ORDER BY number", TAG)
    assert rows == [(0, "keep"), (1, "interrupted"), (2, "keep")]
    assert next(run for run in training_runs(workspace) if run["job"] == job)["outcome"] == "interrupted"
    assert all(run["job"].startswith("ray:") for run in training_runs(workspace))  # the resume went on with Ray
    assert_nothing_left(workspace)


# --- the real tiny recipe

def test_the_tiny_recipe_end_to_end_through_ray(ray_cluster, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    from tinykit import init_tiny

    runner = CliRunner()
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    workspace = tmp_path / "ws"
    init_tiny(workspace, runner)  # a grace no busy machine reaches: the test is of Ray, not of the machine
    monkeypatch.chdir(workspace)
    result = runner.invoke(app, ["run", "--agent", "mutate", "--budget", "3", "--max-experiments", "2",
                                 "--noise-runs", "0", "--tag", "e2e", "--executor", "ray", "--slots", "1"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(runner.invoke(app, ["log", "--json"]).stdout)
    baseline = rows[0]
    assert baseline["outcome"] == "keep" and 0.5 < baseline["metric"] < 9
    assert "num_steps" in baseline["summary"]
    assert rows[1]["outcome"] in ("keep", "discard", "crash")
    run = ledger_query(workspace, "SELECT job, model_bytes, evaluation_json FROM training_runs WHERE experiment = 0")
    job, model_bytes, evaluation = run[0]
    assert job.startswith("ray:") and model_bytes > 0  # the model came back to the harness
    assert json.loads(evaluation)["val_bpb"] == pytest.approx(baseline["metric"])
    assert (workspace / "runs/e2e/0.log").read_text().strip()
    assert wait_until(lambda: not slot_workers(), 10)


# --- the run's settings

def test_the_executor_and_the_address_are_the_runs_own_settings(ray_cluster, workspace, fake_llm, run_loop):
    loop, _ = run_on_ray(run_loop, [BETTER], max_experiments=2, ray_address=ray_cluster)
    config = loop.ledger.run(TAG)["config"]
    assert (config["executor"], config["ray_address"]) == ("ray", ray_cluster)
    options = resumed_options(loop.ledger.run(TAG), {"executor": "local"})
    assert [(o.setting, o.before, o.after) for o in options.overrides] == [("executor", "ray", "local")]


# --- the log streams back, bounded as locally

def test_a_flood_of_output_comes_back_bounded_with_its_summary(ray_cluster, tmp_path):
    from autoresearch.execution.jobs import TrainingJob

    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "flood.py").write_text("import sys\nfor i in range(200_000):\n    print('x' * 50, i)\n"
                                     "print('steps: 200000')\n")
    executor = RayExecutor(kill_wait_seconds=KILL_WAIT, log_head_bytes=10_000, log_tail_bytes=10_000)
    try:
        result = executor.run(TrainingJob(command="python flood.py", cwd=folder, log_path=tmp_path / "flood.log",
                                          budget_seconds=60, grace_seconds=5, slot=0))
    finally:
        executor.close()
    assert result.exit_code == 0 and result.summary == {"steps": 200000.0}
    log = (tmp_path / "flood.log").read_bytes()
    assert result.log_bytes > 10_000_000  # what it printed
    assert len(log) < 10_000 + 10_000 + 200  # what came back and was kept: the head, the tail, one line between
    assert log.startswith(b"x" * 50 + b" 0\n") and log.endswith(b"steps: 200000\n")
    assert b"bytes of output left out here]" in log
    assert wait_until(lambda: not slot_workers(), 10)


def test_a_hostile_model_folder_is_refused_on_the_node_before_it_is_packed(ray_cluster, tmp_path):
    from autoresearch.execution.jobs import OUTPUT_DIR_ENV, TrainingJob
    from autoresearch.outcomes import TRAINING, job_outcome

    folder, model = tmp_path / "job", tmp_path / "model"
    folder.mkdir()
    model.mkdir()
    # a sparse terabyte and a link to the worker's own memory: packing either would hang or read what it must not
    (folder / "leave.py").write_text(
        "import os\nout = os.environ['AUTORESEARCH_OUTPUT_DIR']\n"
        "with open(os.path.join(out, 'huge.bin'), 'wb') as handle:\n    handle.truncate(1 << 40)\n"
        "os.symlink('/proc/self/pagemap', os.path.join(out, 'pagemap'))\n")
    executor = RayExecutor(kill_wait_seconds=KILL_WAIT)
    started = time.monotonic()
    try:
        result = executor.run(TrainingJob(command="python leave.py", cwd=folder, log_path=tmp_path / "leave.log",
                                          budget_seconds=60, grace_seconds=5, slot=0,
                                          env={OUTPUT_DIR_ENV: str(model)}, brings_back=(OUTPUT_DIR_ENV,)))
    finally:
        executor.close()
    assert time.monotonic() - started < 30
    outcome, reason = job_outcome(result, TRAINING, 60)
    assert outcome == "invalid" and reason.startswith("its model folder ")
    assert not any(model.iterdir())  # nothing of it came back
