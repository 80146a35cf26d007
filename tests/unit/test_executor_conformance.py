"""The Executor seam (autoresearch.execution.jobs): every executor keeps the same contract.

One class of tests runs against each implementation: `LocalExecutor` (a subprocess here) and
`RayExecutor` (a job on a slot's actor of the real local Ray cluster that conftest starts; marked
`ray`, skipped where the ray extra is not installed). Real commands, real processes: a job that
ends, one that fails, one past its deadline, one cancelled, a flood of output, summary lines, the
environment a job sees, what the ledger keeps of a job, and the handle's callback.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest
from faultkit import KILL_WAIT

from autoresearch.execution.jobs import JOB_MARKER, JobHandle, TrainingJob, new_job_id
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.processes import find_marked_processes
from autoresearch.execution.ray import RayExecutor

SECRET = "sk-conformance-secret"  # in the tool's environment (and the Ray cluster's): never in a job's
LOG_BOUND = 10_000  # each executor keeps this much of a job's output's head, and as much of its tail
ALLOWED_SLACK = 200  # the line between the head and the tail that says how much was left out


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def executor(request, monkeypatch):
    """A fresh executor of each kind, closed after the test; the tool's environment holds a secret."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # set before a Ray cluster starts, so its workers have it too
    if request.param == "local":
        made = LocalExecutor(kill_wait_seconds=KILL_WAIT, log_head_bytes=LOG_BOUND, log_tail_bytes=LOG_BOUND)
    else:
        request.getfixturevalue("ray_cluster")
        made = RayExecutor(kill_wait_seconds=KILL_WAIT, log_head_bytes=LOG_BOUND, log_tail_bytes=LOG_BOUND)
    yield made
    made.close()


def job(root: Path, name: str, code: str, budget_seconds: float = 60, grace_seconds: float = 5,
        **fields) -> TrainingJob:
    """`python NAME.py` in a folder of its own holding only that script, on slot 0."""
    folder = root / name
    folder.mkdir()
    (folder / f"{name}.py").write_text(code)
    return TrainingJob(command=f"python {name}.py", cwd=folder, log_path=root / f"{name}.log",
                       budget_seconds=budget_seconds, grace_seconds=grace_seconds, slot=0, job_id=new_job_id(),
                       **fields)


def wait_for_line(lines: list[str], text: str, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(text in line for line in lines):
            return True
        time.sleep(0.05)
    return False


# A job that starts a grandchild in a session of its own (it leaves the process group), says so, and
# waits: only the harness ends it.
HANGS = """\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("ready", flush=True)
time.sleep(600)
"""


class TestExecutorConformance:
    def test_a_job_runs_to_its_end_and_its_result_comes_back(self, executor, tmp_path):
        handle = executor.submit(job(tmp_path, "hello", "print('hello from the job')\n"))
        assert isinstance(handle, JobHandle)
        result = handle.result()
        assert (result.exit_code, result.timed_out, result.cancelled, result.lost) == (0, False, False, False)
        assert handle.done()
        assert result.log_path == tmp_path / "hello.log"
        assert "hello from the job" in result.log_tail
        assert (tmp_path / "hello.log").read_text() == "hello from the job\n"
        assert result.log_bytes == len("hello from the job\n") and result.log_error is None
        assert 0 < result.seconds < 60
        # `run` is submit and wait
        again = executor.run(job(tmp_path, "again", "print('again')\n"))
        assert again.exit_code == 0 and again.log_tail == "again"

    def test_a_job_that_exits_non_zero_says_its_code(self, executor, tmp_path):
        result = executor.run(job(tmp_path, "fails", "import sys\nprint('something broke')\nsys.exit(3)\n"))
        assert (result.exit_code, result.timed_out, result.cancelled, result.lost) == (3, False, False, False)
        assert "something broke" in result.log_tail

    def test_a_job_past_its_deadline_is_killed_with_every_process_it_started(self, executor, tmp_path):
        hanging = job(tmp_path, "hangs", HANGS, budget_seconds=1, grace_seconds=0.5)
        lines: list[str] = []
        handle = executor.submit(hanging, lines.append)
        assert wait_for_line(lines, "ready")
        assert len(find_marked_processes(JOB_MARKER, hanging.job_id)) >= 2  # the job and its grandchild
        result = handle.result()
        assert result.timed_out and not result.cancelled and not result.lost
        assert result.exit_code != 0
        assert 1.5 <= result.seconds < 1.5 + KILL_WAIT + 10, result.seconds
        assert not find_marked_processes(JOB_MARKER, hanging.job_id)

    def test_cancel_stops_a_job_and_every_process_it_started(self, executor, tmp_path):
        hanging = job(tmp_path, "cancelled", HANGS)
        lines: list[str] = []
        handle = executor.submit(hanging, lines.append)
        assert wait_for_line(lines, "ready")
        started = time.monotonic()
        handle.cancel()
        result = handle.result()
        assert result.cancelled and not result.timed_out and not result.lost
        assert time.monotonic() - started < KILL_WAIT + 10
        assert not find_marked_processes(JOB_MARKER, hanging.job_id)

    def test_a_flood_of_output_keeps_its_head_and_its_tail(self, executor, tmp_path):
        flood = "for i in range(40_000):\n    print('x' * 50, i)\nprint('steps: 40000')\n"
        result = executor.run(job(tmp_path, "flood", flood))
        assert result.exit_code == 0 and result.summary == {"steps": 40000.0}
        log = (tmp_path / "flood.log").read_bytes()
        assert result.log_bytes > 2_000_000  # what it printed
        assert len(log) < 2 * LOG_BOUND + ALLOWED_SLACK  # what was kept
        assert log.startswith(b"x" * 50 + b" 0\n") and log.endswith(b"steps: 40000\n")
        assert b"bytes of output left out here]" in log
        assert result.log_tail.endswith("steps: 40000") and len(result.log_tail) <= 8_000

    def test_summary_lines_are_parsed_from_the_output(self, executor, tmp_path):
        printed = ("print('loss: 2.5')\nprint('not a summary line')\nprint('peak_memory_mb: 512')\n"
                   "print('lr: 3e-4')\nprint('grad_norm: nan')\nprint('name: text')\nprint('loss: 1.25')\n")
        result = executor.run(job(tmp_path, "summary", printed))
        assert result.exit_code == 0
        assert set(result.summary) == {"loss", "peak_memory_mb", "lr", "grad_norm"}
        assert result.summary["loss"] == 1.25  # the last one wins
        assert result.summary["peak_memory_mb"] == 512.0 and result.summary["lr"] == 3e-4
        assert math.isnan(result.summary["grad_norm"])

    def test_a_job_sees_the_allowlist_and_what_it_was_given_never_a_secret(self, executor, tmp_path, monkeypatch):
        if isinstance(executor, RayExecutor):  # the test means something only where the worker has the secret
            import ray

            assert ray.get(ray.remote(os.getenv).remote("OPENAI_API_KEY")) == SECRET
        monkeypatch.setenv("AUTORESEARCH_CONFORMANCE_PASSED", "by the recipe's env:")
        shows = ("import os\nfor name in ('OPENAI_API_KEY', 'AUTORESEARCH_CONFORMANCE_PASSED', 'GIVEN', "
                 f"'AUTORESEARCH_TIME_BUDGET', {JOB_MARKER!r}, 'PATH'):\n"
                 "    print(name, '=', os.environ.get(name))\n")
        given = job(tmp_path, "env", shows, budget_seconds=42, env={"GIVEN": "by the harness"},
                    passthrough=("AUTORESEARCH_CONFORMANCE_PASSED",))
        result = executor.run(given)
        assert result.exit_code == 0
        seen = dict(line.split(" = ", 1) for line in (tmp_path / "env.log").read_text().splitlines())
        assert seen["OPENAI_API_KEY"] == "None"
        assert SECRET not in (tmp_path / "env.log").read_text()
        assert seen["AUTORESEARCH_CONFORMANCE_PASSED"] == "by the recipe's env:"
        assert seen["GIVEN"] == "by the harness"
        assert seen["AUTORESEARCH_TIME_BUDGET"] == "42"
        assert seen[JOB_MARKER] == given.job_id
        assert seen["PATH"] != "None"

    def test_what_the_ledger_keeps_of_a_job_and_what_a_resume_finds(self, executor, tmp_path):
        job_id = new_job_id()
        ref = executor.job_ref(job_id, 0)
        assert isinstance(ref, str) and ref.endswith(f":{job_id}")
        assert executor.job_ref(job_id, None) == f"local:{job_id}"  # a harness step of this machine
        offered = executor.offered_slots()
        assert offered is None or (isinstance(offered, int) and offered >= 1)
        found = executor.find_jobs([ref, f"local:{new_job_id()}"], run_marker=new_job_id())
        assert isinstance(found, dict) and set(found) <= {ref}
        assert all(isinstance(what, str) and what for what in found.values())

    def test_on_done_calls_back_once_the_job_has_ended(self, executor, tmp_path):
        called: list[JobHandle] = []
        ended = threading.Event()

        def done(handle: JobHandle) -> None:
            called.append(handle)
            ended.set()

        handle = executor.submit(job(tmp_path, "quick", "print('done')\n"))
        handle.on_done(done)
        assert ended.wait(60) and handle.wait(5)
        assert called == [handle] and handle.done()
        handle.on_done(called.append)  # registered after the end: called at once, in this thread
        assert called == [handle, handle]
        assert handle.result().exit_code == 0
