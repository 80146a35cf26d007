"""Faults of the training script: each is typed in the ledger, cleaned up, and the run goes on.

Every test runs the baseline, the faulty experiment and then a good change (kept), in a real git
repository with real subprocesses, and checks the invariants of faultkit.assert_consistent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import git
from faultkit import BETTER, TAG, assert_consistent, inject, pids_with_cmdline, resume_with

from autoresearch.ledger import Ledger
from autoresearch.errors import StopRun


def fault_row(rows):
    """The faulty experiment, after which the good change was still tried and kept."""
    assert rows[2]["outcome"] == "keep", rows[2]
    return rows[1]


# --- the script does not run

def test_syntax_error_is_invalid_and_never_trained(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([inject("typo", "x = (1,"), BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "invalid" and row["reason"].startswith("does not compile: train.py line")
    assert not (workspace / "runs/t/1.log").exists()
    assert_consistent(workspace, rows)


def test_import_error_is_a_crash_with_the_missing_module(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([inject("new dependency", "import no_such_module_xyz"), BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "crash"
    assert "ModuleNotFoundError" in row["reason"] and "no_such_module_xyz" in row["reason"]
    assert "no_such_module_xyz" in row["log_tail"]
    assert_consistent(workspace, rows)


def test_exception_on_the_first_step(workspace, fake_llm, run_loop):
    _, rows, _ = run_loop.small([inject("bad shape", "raise ValueError('shapes (3,) and (4,) do not match')"),
                                  BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "crash"
    assert "ValueError: shapes (3,) and (4,) do not match" in row["reason"]
    assert_consistent(workspace, rows)


def test_exception_after_training_a_while(workspace, fake_llm, run_loop):
    """A crash late in training (scaled down from "after the first minute") keeps its progress lines."""
    code = """
    for step in range(10):
        print(f"step {step} loss {2.0 - step / 10:.3f}", flush=True)
        time.sleep(0.1)
    raise RuntimeError("index out of range in self")
    """
    _, rows, _ = run_loop.small([inject("longer schedule", textwrap.dedent(code)), BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "crash" and "RuntimeError: index out of range in self" in row["reason"]
    assert row["train_seconds"] >= 1.0
    assert "step 9 loss" in row["log_tail"]
    assert_consistent(workspace, rows)


# --- numbers that are not numbers

@pytest.mark.parametrize("code", [
    "LEARNING_RATE = float('nan')",
    "LEARNING_RATE = float('inf')",
], ids=["nan", "inf"])
def test_non_finite_metric_is_a_crash_nan(workspace, fake_llm, code, run_loop):
    _, rows, _ = run_loop.small([inject("diverge", code), BETTER])
    row = fault_row(rows)
    assert (row["outcome"], row["reason"], row["metric"]) == ("crash", "nan", None)
    assert_consistent(workspace, rows)


def test_recipe_that_fails_fast_on_a_nan_loss_is_a_crash_nan(workspace, fake_llm, run_loop):
    code = """
    import math, sys
    loss_value = float("nan")
    if math.isnan(loss_value):
        print("step 3: loss is nan, stopping", flush=True)
        sys.exit(1)
    """
    _, rows, _ = run_loop.small([inject("huge lr", textwrap.dedent(code)), BETTER])
    assert (fault_row(rows)["outcome"], fault_row(rows)["reason"]) == ("crash", "nan")
    assert_consistent(workspace, rows)


@pytest.mark.parametrize("code", [
    "big = bytearray(1 << 50)",  # a real allocation failure: Python's MemoryError
    "raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total capacity)')",
], ids=["MemoryError", "cuda-message"])
def test_out_of_memory_is_a_crash_oom(workspace, fake_llm, code, run_loop):
    _, rows, _ = run_loop.small([inject("bigger batch", code), BETTER])
    row = fault_row(rows)
    assert (row["outcome"], row["reason"]) == ("crash", "oom")
    assert_consistent(workspace, rows)


# --- processes that will not end

def test_hang_is_killed_at_the_limit_as_timeout(workspace, fake_llm, run_loop):
    started = time.monotonic()
    _, rows, _ = run_loop.small([inject("wait for data", "while True:\n    time.sleep(1)"), BETTER],
                       budget_seconds=1)
    row = fault_row(rows)
    assert row["outcome"] == "timeout" and "budget 1s" in row["reason"]
    # budget 1 s + grace 1 s, then killed; the whole run of three experiments stays short
    assert 2.0 <= row["train_seconds"] < 4.0
    assert time.monotonic() - started < 15
    assert_consistent(workspace, rows)


def test_script_that_ignores_sigterm_is_killed_with_sigkill(workspace, fake_llm, run_loop):
    code = """
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    while True:
        time.sleep(0.1)
    """
    _, rows, _ = run_loop.small([inject("stubborn", textwrap.dedent(code)), BETTER], budget_seconds=1)
    row = fault_row(rows)
    assert row["outcome"] == "timeout"
    # SIGTERM at 2 s, ignored; SIGKILL after the kill wait (0.5 s in tests); then it is gone
    assert row["total_seconds"] < 2.0 + 0.5 + 2.0
    assert_consistent(workspace, rows)


def test_children_and_grandchildren_that_leave_the_group_are_killed(workspace, fake_llm, run_loop):
    """A shell backgrounding a setsid'd sleep and a double-forked daemon: neither is in the process group."""
    code = """
    import subprocess
    subprocess.Popen("setsid sleep 987601 &", shell=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "987602"])
        os._exit(0)
    subprocess.Popen(["sleep", "987603"])
    while True:
        time.sleep(0.1)
    """
    _, rows, _ = run_loop.small([inject("prefetch in background", textwrap.dedent(code)), BETTER],
                       budget_seconds=1)
    assert fault_row(rows)["outcome"] == "timeout"
    for marker in ("987601", "987602", "987603"):
        assert pids_with_cmdline(marker) == [], marker
    assert_consistent(workspace, rows)


def test_grandchild_holding_the_pipe_after_a_normal_exit_does_not_stall_the_run(workspace, fake_llm, run_loop):
    """The script exits with its metric, but a setsid'd grandchild keeps its stdout open."""
    code = 'import subprocess\nsubprocess.Popen("setsid sleep 987604 &", shell=True)'
    started = time.monotonic()
    _, rows, _ = run_loop.small([inject("warm the cache", code), BETTER])
    row = rows[1]
    assert row["outcome"] in ("keep", "discard") and row["metric"] is not None
    assert row["train_seconds"] < 2.0
    assert time.monotonic() - started < 10
    assert pids_with_cmdline("987604") == []
    assert_consistent(workspace, rows)


def test_dataloader_workers_are_killed_with_the_script(workspace, fake_llm, run_loop):
    code = """
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Endless(IterableDataset):
        def __iter__(self):
            while True:
                time.sleep(0.01)
                yield torch.zeros(1)

    for batch in DataLoader(Endless(), batch_size=1, num_workers=2):
        pass
    """
    _, rows, _ = run_loop.small([inject("parallel loading", textwrap.dedent(code)), BETTER], budget_seconds=3)
    assert fault_row(rows)["outcome"] == "timeout"
    assert_consistent(workspace, rows)


# --- output

def test_flood_of_output_keeps_the_log_bounded_and_the_metric(workspace, fake_llm, run_loop):
    code = """
    import sys
    line = b"x" * 1023 + b"\\n"
    block = line * 1024
    for _ in range(200):  # 200 MB
        sys.stdout.buffer.write(block)
    sys.stdout.flush()
    """
    _, rows, _ = run_loop.small([inject("verbose", textwrap.dedent(code)), BETTER], max_experiments=3)
    row = rows[1]
    assert row["outcome"] == "discard" and row["metric"] is not None  # its metric was still read
    log = workspace / "runs/t/1.log"
    assert log.stat().st_size < 2_100_000  # 1 MB head + 1 MB tail + a note
    text = log.read_bytes()
    assert b"bytes of output left out here" in text and b"peak_memory_mb: " in text[-1000:]
    assert_consistent(workspace, rows)


def test_flood_of_output_keeps_the_tool_memory_flat(tmp_path):
    """The executor reads 300 MB of output in a fresh process whose peak memory is measured."""
    probe = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from autoresearch.execution.jobs import TrainingJob
        from autoresearch.execution.local import LocalExecutor
        flood = "import sys\\nblock = (b'y' * 99 + b'\\\\n') * 10000\\nfor _ in range(300): sys.stdout.buffer.write(block)\\nprint('val: 1.5')"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = LocalExecutor().run(TrainingJob(command=f"python -c \\"{{flood}}\\"", cwd=Path({str(tmp_path)!r}),
                                                 log_path=Path({str(tmp_path / 'flood.log')!r}), budget_seconds=60,
                                                 grace_seconds=5))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(result.log_bytes, result.summary.get("val"), after - before)
    """)
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2]).stdout.split()
    total, metric, growth_kb = int(output[0]), float(output[1]), int(output[2])
    assert total >= 300_000_000 and metric == 1.5
    assert growth_kb < 40_000, f"the tool grew by {growth_kb} kB reading {total} bytes"
    assert (tmp_path / "flood.log").stat().st_size < 2_100_000


def test_metric_printed_before_a_crash_is_not_trusted(workspace, fake_llm, run_loop):
    code = 'print("val_loss: 0.0001", flush=True)\nraise RuntimeError("died after printing")'
    _, rows, _ = run_loop.small([inject("early report", code), BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "crash" and row["metric"] is None and "died after printing" in row["reason"]
    assert_consistent(workspace, rows)


# --- the script reaches outside its own files (without the sandbox: the guards; tests/test_trust.py has the rest)

UP_TO_RUNS = "../../../../.."  # from runs/t/work/<n>/recipes/synth, where a training runs, to runs/


@pytest.mark.parametrize("code", [
    'open("prepare.py", "a").write("\\ndef evaluate(learning_rate, width):\\n    return 0.0\\n")',
    'os.remove("prepare.py")',
], ids=["writes", "deletes"])
def test_script_that_changes_its_copy_of_a_fixed_file_changes_nothing(workspace, fake_llm, code, run_loop):
    """It runs in a fresh copy of its commit; the evaluation runs the fixed file as committed at the run's start."""
    _, rows, _ = run_loop.small([inject("better eval", code), BETTER])
    row = fault_row(rows)
    assert row["outcome"] == "discard" and row["metric"] == pytest.approx(rows[0]["metric"])
    prepare = workspace / "runs/t/worktree/recipes/synth/prepare.py"
    assert prepare.read_text() == (workspace / "recipes/synth/prepare.py").read_text()
    assert rows[2]["metric"] == pytest.approx(0.25)
    assert not (workspace / "runs/t/work").exists() or not any((workspace / "runs/t/work").iterdir())
    assert_consistent(workspace, rows)


@pytest.mark.parametrize("code", [
    f'open("{UP_TO_RUNS}/ledger.db", "r+b").write(b"garbage" * 1000)',
    f'os.remove("{UP_TO_RUNS}/ledger.db")',
    f'import sqlite3\ndb = sqlite3.connect("{UP_TO_RUNS}/ledger.db")\ndb.execute("DELETE FROM experiments")\ndb.commit()',
], ids=["overwrites", "deletes", "rewrites-rows"])
def test_script_that_touches_the_ledger_cannot_lose_a_row(workspace, fake_llm, code, run_loop):
    loop, rows, _ = run_loop.small([inject("clean up", code), BETTER], sandbox="off")
    row = fault_row(rows)
    assert (row["outcome"], row["reason"]) == ("invalid", "touched the ledger during training")
    # read afresh from the file: every row is there, in order, with its outcome
    on_disk = Ledger(workspace / "runs/ledger.db").experiments(TAG)
    assert [(r["number"], r["outcome"]) for r in on_disk] == [(0, "keep"), (1, "invalid"), (2, "keep")]
    assert_consistent(workspace, on_disk)


def test_script_that_commits_on_the_run_branch_is_invalid_and_undone(workspace, fake_llm, run_loop):
    code = f"""
    import subprocess
    tree = "{UP_TO_RUNS}/t/worktree"
    open(tree + "/recipes/synth/train.py", "a").write("# sneaky\\n")
    subprocess.run(["git", "-C", tree, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "sneaky"],
                   check=True)
    """
    _, rows, _ = run_loop.small([inject("self-edit", textwrap.dedent(code)), BETTER], sandbox="off")
    row = fault_row(rows)
    assert (row["outcome"], row["reason"]) == ("invalid", "touched the run's refs, the run's worktree during training")
    assert "sneaky" not in git(workspace, "log", "--format=%s", "autoresearch/t")
    assert_consistent(workspace, rows)


def test_script_that_edits_the_worktree_is_invalid_and_the_worktree_cleaned(workspace, fake_llm, run_loop):
    code = f'open("{UP_TO_RUNS}/t/worktree/recipes/synth/train.py", "a").write("# written during training\\n")'
    _, rows, _ = run_loop.small([inject("self-edit", code), BETTER], sandbox="off")
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("invalid", "touched the run's worktree during training")
    assert "written during training" not in (workspace / "runs/t/worktree/recipes/synth/train.py").read_text()
    assert_consistent(workspace, rows)


def test_script_that_edits_its_own_copy_leaves_nothing_behind(workspace, fake_llm, run_loop):
    code = 'open("train.py", "a").write("# written during training\\n")\nopen("leftover.pyc", "w").write("x")'
    _, rows, _ = run_loop.small([inject("self-edit", code), BETTER])
    assert rows[1]["outcome"] in ("keep", "discard")
    assert "written during training" not in (workspace / "runs/t/worktree/recipes/synth/train.py").read_text()
    assert not list((workspace / "runs").rglob("leftover.pyc"))
    assert_consistent(workspace, rows)


# --- the disk

def test_log_that_cannot_be_written_does_not_stop_the_run(workspace, fake_llm, run_loop):
    """The disk is full when the log is written: /dev/full answers every write with ENOSPC."""
    run_loop.small([], max_experiments=1)  # the baseline
    os.symlink("/dev/full", workspace / "runs/t/1.log")
    loop, rows = resume_with(run_loop, [BETTER], max_experiments=1)
    assert (rows[1]["outcome"], rows[1]["metric"]) == ("keep", pytest.approx(0.25))
    assert any("1.log: cannot write the log: No space left on device" in note for note in loop.reporter.notes)
    assert_consistent(workspace, rows)


def test_ledger_copy_that_cannot_be_written_does_not_stop_the_run(workspace, fake_llm, run_loop):
    """The disk is full when the ledger's safety copy is written: the training runs without it."""
    run_loop.small([], max_experiments=1)
    (workspace / "runs/t/ledger-backup.db").unlink(missing_ok=True)
    os.symlink("/dev/full", workspace / "runs/t/ledger-backup.db")
    loop, rows = resume_with(run_loop, [BETTER], max_experiments=1, sandbox="off")  # the sandbox needs no copy
    assert rows[1]["outcome"] == "keep"
    assert any("could not copy the ledger" in note for note in loop.reporter.notes)
    assert_consistent(workspace, rows)


# --- what the training can see

def test_no_secret_of_the_tool_reaches_the_training(tmp_path, fake_llm, monkeypatch, run_loop):
    """The environment is an allowlist: the API key stays out, the locale and the recipe's own names come in."""
    from conftest import SYNTH_RECIPE, make_workspace

    root = make_workspace(tmp_path / "env", recipe_yaml=SYNTH_RECIPE + "env: [MY_SETTING]\n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-456")
    monkeypatch.setenv("MY_SETTING", "handed-through")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    probe = "import os\nprint('SEEN', sorted(os.environ))\nprint('MINE', os.environ.get('MY_SETTING'))"
    _, rows, _ = run_loop.small([inject("look around", probe), BETTER])
    log = (root / "runs/t/1.log").read_text()
    assert "sk-secret-123" not in log and "aws-secret-456" not in log
    assert "'OPENAI_API_KEY'" not in log and "'AWS_SECRET_ACCESS_KEY'" not in log
    assert "MINE handed-through" in log and "'LC_ALL'" in log and "'PATH'" in log
    assert "'AUTORESEARCH_SEED'" in log and "'AUTORESEARCH_TIME_BUDGET'" in log
    assert_consistent(root, rows)


@pytest.mark.parametrize("code", [
    f'import sqlite3\ndb = sqlite3.connect("{UP_TO_RUNS}/ledger.db")\ndb.execute("UPDATE runs SET config_json = \'{{}}\'")\n'
    'db.commit()',
    f'import sqlite3\ndb = sqlite3.connect("{UP_TO_RUNS}/ledger.db")\ndb.execute("DELETE FROM llm_calls")\ndb.commit()',
    f'import sqlite3\ndb = sqlite3.connect("{UP_TO_RUNS}/ledger.db")\ndb.execute("UPDATE training_runs SET metric = 0")\n'
    'db.commit()',
], ids=["the-runs-settings", "its-llm-calls", "training-runs"])
def test_a_change_to_any_table_of_the_ledger_is_caught_and_put_back(workspace, fake_llm, code, run_loop):
    """Not only the run's experiment rows: every table the tool wrote is checked after a training."""
    loop, rows, _ = run_loop.small([inject("tidy the record", code), BETTER], sandbox="off")
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("invalid", "touched the ledger during training")
    ledger = Ledger(workspace / "runs/ledger.db")
    assert ledger.run(TAG)["config"]["max_experiments"] == 3
    assert ledger.llm_calls(TAG, 1) and ledger.training_runs(TAG, 0)[0]["metric"] == pytest.approx(0.29)
    assert_consistent(workspace, rows)


def test_a_training_that_rewrites_the_ledger_and_its_copy_stops_the_run(workspace, fake_llm, run_loop):
    code = (f'import sqlite3\nfor name in ("ledger.db", "t/ledger-backup.db"):\n'
            f'    db = sqlite3.connect("{UP_TO_RUNS}/" + name)\n    db.execute("DELETE FROM llm_calls")\n'
            '    db.commit()')
    with pytest.raises(StopRun, match="changed the ledger .* and its copy .*: the record cannot be put back"):
        run_loop.small([inject("cover the tracks", code), BETTER], sandbox="off")


@pytest.mark.parametrize("code, what", [
    (f'open("{UP_TO_RUNS}/../.git/config", "a").write("[core]\\n\\tfsmonitor = /bin/false\\n[filter \\"x\\"]\\n'
     f'\\tclean = touch {UP_TO_RUNS}/pwned\\n")', "the git config"),
    (f'import os\nos.makedirs("{UP_TO_RUNS}/../.git/info", exist_ok=True)\n'
     f'open("{UP_TO_RUNS}/../.git/info/attributes", "w").write("* filter=x\\n")', "the git attributes"),
    (f'import os\nhook = "{UP_TO_RUNS}/../.git/hooks/pre-commit"\nopen(hook, "w").write("#!/bin/sh\\ntouch '
     f'{UP_TO_RUNS}/pwned\\n")\nos.chmod(hook, 0o755)', "the git hooks"),
    (f'import subprocess\nsubprocess.run(["git", "-C", "{UP_TO_RUNS}/..", "update-ref", "-d", "refs/autoresearch/t/1"],'
     ' check=True)', "the run's refs"),
], ids=["config", "attributes", "hook", "refs"])
def test_what_a_training_writes_into_git_never_runs_and_is_put_back(workspace, fake_llm, code, what, run_loop):
    """Without the sandbox: a hook, a filter or an fsmonitor it installs would run the next time the tool used git."""
    config_before = (workspace / ".git/config").read_text()
    _, rows, _ = run_loop.small([inject("make git faster", code), BETTER], sandbox="off")
    assert (rows[1]["outcome"], rows[1]["reason"]) == ("invalid", f"touched {what} during training")
    assert not (workspace / "runs/pwned").exists()
    assert (workspace / ".git/config").read_text() == config_before
    assert not (workspace / ".git/hooks/pre-commit").exists()
    assert git(workspace, "rev-parse", "refs/autoresearch/t/1") == rows[1]["commit_sha"]
    assert_consistent(workspace, rows)


def test_a_submitted_job_is_cancelled_and_its_processes_are_gone(tmp_path):
    """The executor's handle: submit returns at once, cancel ends the process tree as at a deadline."""
    import threading

    from autoresearch.execution.jobs import TrainingJob
    from autoresearch.execution.local import LocalExecutor

    script = tmp_path / "stubborn.py"
    script.write_text("import signal, subprocess, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "subprocess.Popen(['sleep', '987612'])\nprint('started', flush=True)\nwhile True:\n"
                      "    time.sleep(0.1)\n")
    seen = threading.Event()
    handle = LocalExecutor(kill_wait_seconds=0.5).submit(
        TrainingJob(command=f"python {script}", cwd=tmp_path, log_path=tmp_path / "job.log", budget_seconds=60,
                    grace_seconds=1), on_output=lambda line: seen.set())
    assert seen.wait(10) and not handle.done()
    ended = []
    handle.on_done(lambda done: ended.append(done.id))
    handle.cancel()
    assert handle.wait(10)
    result = handle.result()
    assert result.cancelled and not result.timed_out and ended == [handle.id]
    assert pids_with_cmdline("987612") == []
