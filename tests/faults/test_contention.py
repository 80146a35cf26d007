"""The machine is part of the measurement (issue 23): contention measured per training run, machine-caused
failures told from the change's, a busy machine said, start-up and export allowed apart from the budget.

Real processes throughout: a busy machine is real busy loops (bounded in time, killed after), a hostile
training is a real script run by the real executor, the loop runs through the CLI on a real git workspace.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
import time
from pathlib import Path

import pytest
from conftest import SYNTH_RECIPE, SYNTH_TRAIN, make_workspace
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.execution.contention import (BUSY_SHARE, ContentionMeter, Progress, TreeCpu, busy_machine_line,
                                               deadline_seconds)
from autoresearch.execution.jobs import OUTPUT_DIR_ENV, TrainingJob, TrainingResult
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.processes import ProcessTree
from autoresearch.ledger import Ledger
from autoresearch.noise import noise_warning
from autoresearch.outcomes import BROKEN_RECIPE, BUDGET_TOO_SMALL, BUSY_MACHINE, baseline_cause
from autoresearch.recipe import load_recipe

BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def busy_processes(count: int, seconds: float) -> list[subprocess.Popen]:
    """Real busy loops beside the test, each ending by itself after `seconds` (and killed by the caller)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)]) for _ in range(count)]


def end(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def job(tmp_path: Path, script: str, budget: float, grace: float, startup: float = 0.0, export: float = 0.0,
        name: str = "train") -> TrainingJob:
    folder = tmp_path / name
    (folder / "out").mkdir(parents=True)
    (folder / "train.py").write_text(textwrap.dedent(script))
    return TrainingJob(command="python train.py", cwd=folder, log_path=folder / "train.log", budget_seconds=budget,
                       grace_seconds=grace, makes_up_steal=True, startup_seconds=startup, export_seconds=export,
                       env={OUTPUT_DIR_ENV: str(folder / "out")})


# --- the one deadline rule (pure)

def test_start_up_counts_until_the_first_line_and_never_past_its_allowance():
    assert deadline_seconds(60, 5, 20, 20, startup_used=3.0, export_claimed=None) == 3 + 60 + 5 + 20
    assert deadline_seconds(60, 5, 20, 20, startup_used=50.0, export_claimed=None) == 20 + 60 + 5 + 20
    assert deadline_seconds(60, 5, 20, 20, startup_used=None, export_claimed=None) == 20 + 60 + 5 + 20


def test_claiming_the_export_early_only_brings_the_deadline_forward():
    unclaimed = deadline_seconds(60, 5, 20, 20, startup_used=3.0, export_claimed=None)
    assert deadline_seconds(60, 5, 20, 20, startup_used=3.0, export_claimed=10.0) == 10 + 20  # cut at the allowance
    assert deadline_seconds(60, 5, 20, 20, startup_used=3.0, export_claimed=80.0) == unclaimed  # a late write: the same
    assert deadline_seconds(60, 15, 0, 0, startup_used=3.0, export_claimed=10.0) == 75  # no allowance: grace as ever


def test_steal_and_contention_each_move_the_deadline_by_at_most_a_quarter_of_the_budget():
    quiet = deadline_seconds(60, 5, 20, 20, 3.0, None)
    assert deadline_seconds(60, 5, 20, 20, 3.0, None, steal=4, contention=6) == quiet + 10
    assert deadline_seconds(60, 5, 20, 20, 3.0, None, steal=400, contention=600) == quiet + 15 + 15
    assert Progress(startup_ended=3.0, contention=6).deadline(60, 5, 20, 20) == quiet + 6


def test_the_built_in_tiny_recipe_gives_start_up_and_export_their_own_allowances():
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "tiny")
    assert recipe.startup_seconds >= 15 and recipe.export_seconds >= 15 and recipe.grace(60) <= 5
    assert recipe.past_budget(60) == recipe.grace(60) + recipe.startup_seconds + recipe.export_seconds


# --- contention, measured from outside the training

def test_other_processes_are_contention_and_the_trees_own_cpu_is_not(tmp_path):
    tree_cpu = TreeCpu()
    meter = ContentionMeter(tree_cpu)
    own = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=3)])
    others = busy_processes(2, 3)
    tree = ProcessTree(own.pid)
    try:
        while own.poll() is None:
            tree.sample()
            tree_cpu.sample(tree.members())
            time.sleep(0.1)
    finally:
        end(others + [own])
    assert tree_cpu.seconds() > 0.05  # its own loop, as the harness sampled it
    # the two loops beside it had as much of the CPUs as its own one (and the rest of the machine more)
    assert meter.cpu_seconds() >= 1.5 * tree_cpu.seconds()
    assert meter.seconds() == pytest.approx(meter.cpu_seconds() / meter.cpus, rel=0.2)


def test_a_training_that_loads_the_machine_itself_gains_no_time(tmp_path):
    """The hostile training starts busy children and outstays its budget; beside it an honest sleeper. The
    hostile's children are the sleeper's contention, never the hostile's own: it is stopped at its deadline
    moved only by what the rest of the machine did, and measures less contention than the sleeper."""
    hostile = job(tmp_path, f"""\
        import subprocess, sys, time
        print("starting", flush=True)
        children = [subprocess.Popen([sys.executable, "-c", {BUSY_LOOP.format(seconds=30)!r}]) for _ in range(3)]
        time.sleep(60)
        """, budget=4, grace=0.5, name="hostile")
    honest = job(tmp_path, "import time\nprint('starting', flush=True)\ntime.sleep(6)\n", budget=4, grace=0.5,
                 name="honest")
    executor = LocalExecutor(kill_wait_seconds=1)
    handles = [executor.submit(hostile), executor.submit(honest)]
    hostile_result, honest_result = (handle.result() for handle in handles)
    assert hostile_result.timed_out
    cap = hostile.budget_seconds / 4
    assert hostile_result.seconds <= 4 + 0.5 + min(hostile_result.contention_seconds, cap) + 1.5
    assert hostile_result.contention_seconds < honest_result.contention_seconds


def test_a_training_that_claims_to_export_while_it_trains_on_is_cut_at_the_allowance(tmp_path):
    claimer = job(tmp_path, """\
        import os, time
        print("step 0", flush=True)
        open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "model.json"), "w").write("{}")  # 'exporting'
        step = 0
        while True:  # ...and it trains on
            step += 1
            print(f"step {step}", flush=True)
            time.sleep(0.2)
        """, budget=20, grace=1, startup=10, export=2)
    result = LocalExecutor(kill_wait_seconds=1).run(claimer)
    assert result.timed_out
    assert result.seconds < 10  # not the budget's 20 s: the claim started the export's 2 s
    assert result.startup_seconds is not None and result.startup_seconds < 10


def test_a_harness_step_keeps_budget_and_grace(tmp_path):
    step = job(tmp_path, "import time\ntime.sleep(30)\n", budget=1, grace=0.5)
    step = replace(step, makes_up_steal=False)
    result = LocalExecutor(kill_wait_seconds=1).run(step)
    assert result.timed_out and result.seconds < 3 and result.contention_seconds == 0


# --- what the person is told

def test_a_busy_machine_is_said_at_the_start():
    assert busy_machine_line(load=4.2, cpus=2).startswith("this machine is busy: load average 4.2 over the 2 CPUs")
    assert busy_machine_line(load=0.3, cpus=2) is None


def test_a_noise_floor_that_is_a_large_share_of_the_metric_is_said_with_the_machine():
    line = noise_warning("val_bpb", 3.47, 0.176, 0.405, busy_share=0.6)
    assert line.startswith("the noise floor is 5.1% of val_bpb")
    assert "other work on this machine (it took 60% of the CPU time during the baseline) costs the training steps" in line
    assert noise_warning("val_bpb", 2.1, 0.01, 0.03, busy_share=0.6) is None


def trained(outcome: str, contention: float, seconds: float = 80.0):
    """A finished baseline training as the scheduler holds it (the trainer's Trained shape)."""
    from autoresearch.trainer import Trained
    result = TrainingResult(exit_code=None, timed_out=outcome == "timeout", seconds=seconds, summary={},
                            log_path=Path("0.log"), log_tail="", contention_seconds=contention, startup_seconds=4.0)
    return Trained(None, result, outcome, "why", None, None, Path("model"))


def test_the_cause_of_a_failed_baseline_is_told_apart():
    assert baseline_cause(trained("timeout", 50.0), 60)[0] == BUSY_MACHINE
    assert "other processes took 62% of the machine's CPU time" in baseline_cause(trained("timeout", 50.0), 60)[1]
    assert baseline_cause(trained("timeout", 80 * BUSY_SHARE / 4), 60)[0] == BUDGET_TOO_SMALL
    assert baseline_cause(trained("crash", 50.0), 60)[0] == BROKEN_RECIPE


# --- the loop: a failed baseline stops at once, with the advice of its cause

CRASHING_TRAIN = SYNTH_TRAIN.replace("# --- training\n", "# --- training\nraise SystemExit('broken')\n")
SLOW_TRAIN = SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 30.0")


def run_loop(tmp_path, monkeypatch, train: str, recipe_yaml: str = SYNTH_RECIPE):
    root = make_workspace(tmp_path / "ws", train=train, recipe_yaml=recipe_yaml)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "--agent", "mutate", "--tag", "t", "--noise-runs", "2",
                                      "--max-experiments", "3"], catch_exceptions=False)
    return result, Ledger(root / "runs/ledger.db").training_runs("t")


def test_a_crashing_unmodified_recipe_stops_the_run_before_any_noise_run(tmp_path, monkeypatch):
    result, runs = run_loop(tmp_path, monkeypatch, CRASHING_TRAIN)
    assert result.exit_code == 1
    assert [run["kind"] for run in runs] == ["first"]  # no noise run trained after the failed first one
    assert "fix the recipe and commit the fix" in result.output


def test_a_baseline_too_slow_for_its_budget_on_a_quiet_machine_says_the_budget(tmp_path, monkeypatch):
    quick = SYNTH_RECIPE.replace("budget_seconds: 5", "budget_seconds: 1").replace("grace_seconds: 1",
                                                                                   "grace_seconds: 0.5")
    result, runs = run_loop(tmp_path, monkeypatch, SLOW_TRAIN, quick)
    assert result.exit_code == 1
    assert [run["kind"] for run in runs] == ["first"] and runs[0]["outcome"] == "timeout"
    assert runs[0]["contention_seconds"] is not None  # recorded for every training run
    assert ("the budget is too small" in result.output or "the machine was busy" in result.output), result.output
    assert "fix the recipe" not in result.output


def test_a_timeout_on_a_busy_machine_says_so_in_its_reason():
    from autoresearch.outcomes import TRAINING, job_outcome
    busy = trained("timeout", 50.0).result
    outcome, reason = job_outcome(busy, TRAINING, 60)
    assert outcome == "timeout" and "(budget 60s; other processes took 62% of the machine)" in reason
    assert "other processes" not in job_outcome(trained("timeout", 1.0).result, TRAINING, 60)[1]


FIRST_SEED_HANGS = SYNTH_TRAIN.replace("# --- training\n", "# --- training\nif os.environ['AUTORESEARCH_SEED'] == '0':\n"
                                                         "    time.sleep(60)\n")


def test_noise_runs_that_scored_beside_a_timed_out_first_run_stand_in_for_it(tmp_path, monkeypatch):
    slow = SYNTH_RECIPE.replace("budget_seconds: 5", "budget_seconds: 8")
    root = make_workspace(tmp_path / "ws", train=FIRST_SEED_HANGS, recipe_yaml=slow)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["run", "--agent", "mutate", "--tag", "t", "--noise-runs", "2", "--slots", "3",
                                      "--max-experiments", "1"], catch_exceptions=False)
    runs = Ledger(root / "runs/ledger.db").training_runs("t", 0)
    assert [run["outcome"] for run in runs] == ["timeout", "ok", "ok"], result.output
    assert "its 2 noise runs that scored stand in for it" in result.output
    assert Ledger(root / "runs/ledger.db").experiment("t", 0)["outcome"] == "keep"


def test_the_gpu_neighbours_are_skipped_quietly_where_there_is_no_gpu_or_no_nvidia_smi():
    import shutil
    from autoresearch.execution.contention import other_gpu_processes
    assert other_gpu_processes(None, set()) is None
    if shutil.which("nvidia-smi") is None:
        assert other_gpu_processes("0", set()) is None


def test_each_training_runs_contention_is_recorded_and_shown_by_show_and_the_report(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    runner = CliRunner()
    assert runner.invoke(app, ["run", "--agent", "mutate", "--tag", "t", "--noise-runs", "1", "--max-experiments",
                               "2"], catch_exceptions=False).exit_code == 0
    runs = Ledger(root / "runs/ledger.db").training_runs("t")
    assert runs and all(run["contention_seconds"] is not None and run["startup_seconds"] is not None for run in runs)
    shown = runner.invoke(app, ["show", "0", "--tag", "t"], catch_exceptions=False).stdout
    assert "machine" in shown and "others " in shown
    report = tmp_path / "report.html"
    assert runner.invoke(app, ["report", "--tag", "t", "-o", str(report)], catch_exceptions=False).exit_code == 0
    assert "<dt>machine</dt><dd>first others " in report.read_text()


def test_a_silent_training_gets_no_more_start_up_than_its_allowance(tmp_path):
    silent = job(tmp_path, "import time\ntime.sleep(60)\n", budget=1, grace=0.5, startup=2)
    result = LocalExecutor(kill_wait_seconds=1).run(silent)
    assert result.timed_out and result.startup_seconds is None  # it never printed: the whole allowance counted
    assert 3.0 <= result.seconds <= 2 + 1 + 0.5 + 0.25 + 1.5
