"""Several things in flight at once: drafts made while trainings run, and trainings side by side on slots.

The synthetic recipe trains for as long as its SLEEP_SECONDS (and any sleep an edit adds) say, so
each test knows which experiment is still training when another one's answer comes. Where the
order matters, the fake endpoint holds an answer until the ledger shows what the test waits for.
Everything here needs the sandbox (drafting ahead and slots do), as CI has it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import SYNTH_TRAIN, git, make_workspace, reply
from faultkit import (BETTER, RUN_FLAGS, TAG, ToolProcess, assert_consistent, best_kept, inject, run_processes,
                      tool_env, wait_until)

from autoresearch.run.session import Session
from autoresearch.errors import InvalidSetting
from autoresearch.settings import resumed_options

SLOW_TRAIN = SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.0")
DEVICE_TRAIN = SYNTH_TRAIN.replace("# --- training\n", """# --- training
devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
if not devices.isdigit():  # one GPU each, never none, never a list
    raise SystemExit(f"expected one device, got {devices!r}")
""").replace('print("---")\n', 'print("---")\nprint(f"device: {devices}")\n')


def blocks(description: str, *edits: tuple[str, str]) -> str:
    """A well-formed reply with one SEARCH/REPLACE block per (search, replace) edit of train.py."""
    body = "".join(f"train.py\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"
                   for search, replace in edits)
    return f"DESCRIPTION: {description}\nBecause it should help.\n{body}"


def ledger_query(root: Path, sql: str, *params) -> list[tuple]:
    db = sqlite3.connect(f"file:{root / 'runs/ledger.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def outcome_of(root: Path, number: int) -> str | None:
    rows = ledger_query(root, "SELECT outcome FROM experiments WHERE tag = ? AND number = ?", TAG, number)
    return rows[0][0] if rows else None


def answer_when(condition, entry, seconds: float = 60.0):
    """A script entry that holds its answer until condition() holds (the loop is busy elsewhere meanwhile)."""
    def answer(request: dict):
        assert wait_until(condition, seconds), "the awaited state never came"
        return entry
    return answer


def prompt_of(request: dict) -> str:
    return request["messages"][-1]["content"]


def is_for(number: int):
    return lambda request: f"Propose experiment {number}:" in prompt_of(request)


def by_experiment(answers: dict[int, object]) -> list:
    """A script that answers each request (a repair turn too) by the experiment it drafts, not by arrival.

    Drafts for several idle slots are asked at once, so the order their requests reach the server is a race.
    """
    def answer(request: dict):
        asked = "\n".join(str(message.get("content")) for message in request["messages"])
        number = next(number for number in answers if f"Propose experiment {number}:" in asked)
        entry = answers[number]
        return entry(request) if callable(entry) else entry
    return [answer]


@pytest.fixture
def slow_workspace(tmp_path, monkeypatch) -> Path:
    """The synthetic recipe, training for a second."""
    root = make_workspace(tmp_path / "ws", train=SLOW_TRAIN)
    monkeypatch.chdir(root)
    return root


def run_ahead(run_loop, script: list, **options) -> tuple[Session, list[dict]]:
    """A small run `t` in the sandbox, drafting ahead; returns (loop, its experiment rows)."""
    loop, rows, _ = run_loop.small(script, tag=TAG, sandbox="on", draft_ahead=True, **options)
    return loop, rows


def commit_parent(root: Path, commit: str) -> str:
    return git(root, "rev-parse", f"{commit}^")


def train_py_at(root: Path, commit: str) -> str:
    return git(root, "show", f"{commit}:recipes/synth/train.py")


# --- drafting ahead

def test_the_next_proposal_is_drafted_while_an_experiment_trains_and_is_told_what_trains(slow_workspace, fake_llm,
                                                                                         run_loop):
    seen = {}

    def second(request: dict):
        seen["training"] = ledger_query(slow_workspace, "SELECT experiment, outcome FROM training_runs WHERE tag = ? "
                                        "AND outcome = 'running'", TAG)
        seen["prompt"] = prompt_of(request)
        return reply("double the width", "WIDTH = 4", "WIDTH = 8")

    _, rows = run_ahead(run_loop, [BETTER, second], max_experiments=3)
    assert seen["training"] == [(1, "running")]  # asked while experiment 1 trained
    assert "training now: experiment 1: lower the learning rate" in seen["prompt"]
    assert "# Training now" in seen["prompt"]
    assert [(row["number"], row["outcome"]) for row in rows] == [(0, "keep"), (1, "keep"), (2, "keep")]
    assert_consistent(slow_workspace, rows)


def test_a_draft_ready_before_a_keep_is_applied_onto_the_new_best(slow_workspace, fake_llm, run_loop):
    _, rows = run_ahead(run_loop, [BETTER, reply("double the width", "WIDTH = 4", "WIDTH = 8")], max_experiments=3)
    first, second = rows[1], rows[2]
    assert first["outcome"] == "keep"
    # drafted against the baseline while experiment 1 trained; committed on top of experiment 1 once kept
    assert (second["parent_number"], second["parent_sha"]) == (1, first["commit_sha"])
    assert commit_parent(slow_workspace, second["commit_sha"]) == first["commit_sha"]
    code = train_py_at(slow_workspace, second["commit_sha"])
    assert "LEARNING_RATE = 0.3" in code and "WIDTH = 8" in code
    assert (second["outcome"], second["metric"]) == ("keep", pytest.approx(0.125))
    assert second["best_before"] == pytest.approx(0.25)  # decided against experiment 1, its parent
    assert_consistent(slow_workspace, rows)


def test_a_draft_that_no_longer_applies_after_a_keep_is_drafted_again(slow_workspace, fake_llm, run_loop):
    stale = reply("a learning rate of 0.4", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.4")
    fresh = reply("double the width", "WIDTH = 4", "WIDTH = 8")
    loop, rows = run_ahead(run_loop, [BETTER, stale, fresh], max_experiments=3)
    assert [(row["number"], row["outcome"]) for row in rows] == [(0, "keep"), (1, "keep"), (2, "keep")]
    assert rows[2]["description"] == "double the width" and rows[2]["parent_number"] == 1
    asked = [request for request in fake_llm.requests if is_for(2)(request)]
    assert len(asked) == 2  # the stale draft, then a new one: two LLM calls, one experiment
    assert "LEARNING_RATE = 0.3" in prompt_of(asked[1])  # drafted again from the new best
    assert len(loop.ledger.llm_calls(TAG, 2)) == 2
    assert any("experiment 2: the draft no longer applies on top of the new best (experiment 1" in note
               for note in loop.reporter.notes)
    assert_consistent(slow_workspace, rows)


def test_the_first_drafts_are_made_while_the_baseline_trains_and_wait_for_it(tmp_path, monkeypatch, fake_llm, run_loop):
    # The baseline trains for 4 s of its 5 s budget; past half of it, a draft for each of the two slots.
    root = make_workspace(tmp_path / "ws", train=SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 4.0"))
    monkeypatch.chdir(root)
    seen = {}

    def drafted(number: int, change: tuple[str, str]):
        def answer(request: dict):
            seen[number] = (ledger_query(root, "SELECT experiment FROM training_runs WHERE tag = ? AND "
                                         "outcome = 'running'", TAG), prompt_of(request))
            return blocks(f"change {number}", ("SLEEP_SECONDS = 4.0", "SLEEP_SECONDS = 0.0"), change)
        return answer

    _, rows = run_ahead(run_loop, by_experiment({1: drafted(1, ("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")),
                                                 2: drafted(2, ("# --- summary", "# --- summary\n# the same"))}),
                        slots=2, max_experiments=3)
    for number in (1, 2):
        training, prompt = seen[number]
        assert training == [(0,)]  # asked while the baseline trained
        assert "training now: experiment 0: baseline: the unmodified recipe (its numbers come when it ends)" in prompt
    runs = ledger_query(root, "SELECT experiment, started_at, finished_at FROM training_runs WHERE tag = ? "
                        "ORDER BY id", TAG)
    assert runs[0][0] == 0 and sorted(run[0] for run in runs[1:]) == [1, 2]
    assert all(run[1] >= runs[0][2] for run in runs[1:])  # trained only once the baseline was decided
    assert [(row["number"], row["outcome"], row["parent_number"]) for row in rows] == [
        (0, "keep", None), (1, "keep", 0), (2, "discard", 0)]
    assert rows[1]["best_before"] == rows[0]["metric"]
    assert_consistent(root, rows)


def test_on_one_slot_the_first_draft_waits_for_the_baselines_last_run(tmp_path, monkeypatch, fake_llm, run_loop):
    # One slot, a first run and a noise run of 3 s each: drafting during the first would wait out all
    # of the noise run; the draft starts past half of the last one.
    root = make_workspace(tmp_path / "ws", train=SYNTH_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 3.0"))
    monkeypatch.chdir(root)
    seen = []

    def answer(request: dict):
        seen.append(ledger_query(root, "SELECT experiment, attempt FROM training_runs WHERE tag = ? AND "
                                 "outcome = 'running'", TAG))
        return reply("no sleep", "SLEEP_SECONDS = 3.0", "SLEEP_SECONDS = 0.0")

    _, rows = run_ahead(run_loop, [answer], noise_runs=1, max_experiments=2)
    assert seen == [[(0, 1)]]  # asked while the noise run, the baseline's last, trained
    assert [(row["number"], row["outcome"]) for row in rows] == [(0, "keep"), (1, "discard")]
    assert_consistent(root, rows)


def test_a_baseline_that_fails_early_asks_the_agent_nothing(tmp_path, monkeypatch, fake_llm, run_loop):
    root = make_workspace(tmp_path / "ws", train=SYNTH_TRAIN.replace("time.sleep(SLEEP_SECONDS)",
                                                                     "time.sleep(1.0)\nraise SystemExit(3)"))
    monkeypatch.chdir(root)
    loop = run_loop.make([BETTER], small=True)
    with pytest.raises(Exception, match="baseline"):
        run_loop(loop=loop, small=True, tag=TAG, sandbox="on", draft_ahead=True, slots=2, max_experiments=3)
    assert not [request for request in fake_llm.requests if "Propose experiment" in prompt_of(request)]
    assert [row["number"] for row in loop.ledger.experiments(TAG)] == [0]


def test_without_drafting_ahead_nothing_is_asked_while_a_training_runs(slow_workspace, fake_llm, run_loop):
    seen = []

    def second(request: dict):
        seen.append(ledger_query(slow_workspace, "SELECT COUNT(*) FROM training_runs WHERE tag = ? AND "
                                 "outcome = 'running'", TAG)[0][0])
        return reply("double the width", "WIDTH = 4", "WIDTH = 8")

    run_loop.small([BETTER, second], tag=TAG, sandbox="on", draft_ahead=False, max_experiments=3)
    assert seen == [0]


# --- one best, nothing lost

def test_a_candidate_that_beat_its_parent_after_the_best_moved_is_combined_and_decided_again(workspace, fake_llm,
                                                                                            run_loop):
    # Experiment 1 trains for 1 s, experiment 2 (drafted from the baseline while 1 trains) for 2.5 s on
    # the second slot: 1 is kept first, so 2 beats its own parent (the baseline) against a best that moved.
    faster = blocks("lower the learning rate", ("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3"),
                    ("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.0"))
    wider = blocks("double the width", ("WIDTH = 4", "WIDTH = 8"),
                   ("save_model(LEARNING_RATE, WIDTH)", "time.sleep(2.5)\nsave_model(LEARNING_RATE, WIDTH)"))
    # A third and a fourth draft (made while both train, or the fourth for the slot experiment 1 left:
    # how many are drafted ahead follows the measured times) are held until experiment 2 is decided,
    # and are no edit at all.
    held = answer_when(lambda: outcome_of(workspace, 2) not in (None, "running"),
                       reply("nothing", "NO SUCH LINE", "NOTHING"))
    loop, rows = run_ahead(run_loop, by_experiment({1: faster, 2: wider, 3: held, 4: held}), slots=2,
                           max_experiments=6)
    outcomes = [(row["number"], row["outcome"], row["parent_number"]) for row in rows]
    assert outcomes[:4] == [(0, "keep", None), (1, "keep", 0), (2, "discard", 0), (3, "invalid", 0)]
    assert outcomes[4] in ((4, "invalid", 0), (4, "invalid", 1)) and outcomes[5] == (5, "keep", 1)
    assert "best moved on to experiment 1: combined with it as experiment 5" in rows[2]["reason"]
    assert rows[2]["metric"] == pytest.approx(0.04 + 0.125)  # better than its parent, never kept on it
    combined = rows[5]
    assert combined["description"] == "double the width (on top of experiment 1)"
    assert commit_parent(workspace, combined["commit_sha"]) == rows[1]["commit_sha"]
    assert (combined["metric"], combined["best_before"]) == (pytest.approx(0.125), pytest.approx(0.25))
    assert best_kept(workspace, rows)["number"] == 5
    assert_consistent(workspace, rows)


def test_no_combination_past_the_runs_limit(workspace, fake_llm, run_loop):
    faster = blocks("lower the learning rate", ("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3"),
                    ("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.0"))
    wider = blocks("double the width", ("WIDTH = 4", "WIDTH = 8"),
                   ("save_model(LEARNING_RATE, WIDTH)", "time.sleep(2.5)\nsave_model(LEARNING_RATE, WIDTH)"))
    _, rows = run_ahead(run_loop, by_experiment({1: faster, 2: wider}), slots=2, max_experiments=3)
    assert [(row["number"], row["outcome"]) for row in rows] == [(0, "keep"), (1, "keep"), (2, "discard")]
    assert "no combination with it (reached --max-experiments 3)" in rows[2]["reason"]
    assert_consistent(workspace, rows)


# --- slots

@pytest.mark.parametrize("gpus", ["0,1", "3,5,7,9"])
def test_each_training_runs_on_its_own_gpu_side_by_side(tmp_path, monkeypatch, fake_llm, gpus, run_loop):
    # Each training outlasts a second: the ledger times them to the second, and side by side must show.
    root = make_workspace(tmp_path / "ws", train=DEVICE_TRAIN.replace("SLEEP_SECONDS = 0.0", "SLEEP_SECONDS = 1.5"))
    monkeypatch.chdir(root)
    devices = gpus.split(",")
    # Changes that leave the metric as it is (nothing is kept) and that apply whatever trained before.
    script = [reply(f"variant {n}", "# --- summary", f"# --- summary\n# variant {n}") for n in range(8)]
    _, rows = run_ahead(run_loop, script, gpus=gpus, noise_runs=len(devices) - 1, max_experiments=5)
    runs = [dict(zip(("experiment", "attempt", "slot", "device", "summary", "started", "finished"), row))
            for row in ledger_query(root, "SELECT experiment, attempt, slot, device, summary_json, started_at, "
                                    "finished_at FROM training_runs WHERE tag = ? ORDER BY id", TAG)]
    assert all(row["outcome"] not in ("crash", "invalid") for row in rows), [row["reason"] for row in rows]
    for run in runs:  # the device each training saw, by its own account, is the one recorded for its slot
        assert run["device"] == devices[run["slot"]]
        assert str(json.loads(run["summary"])["device"]).removesuffix(".0") == run["device"]
    baseline = [run for run in runs if run["experiment"] == 0]
    assert len(baseline) == len(devices)  # the first run and the noise runs, side by side
    assert {run["slot"] for run in baseline} == set(range(len(devices)))
    assert max(run["started"] for run in baseline) < min(run["finished"] for run in baseline)
    for one in runs:  # never two trainings on one device at once
        for other in runs:
            if one is not other and one["device"] == other["device"]:
                assert one["finished"] <= other["started"] or other["finished"] <= one["started"]
    assert_consistent(root, rows)


def test_several_slots_need_the_sandbox(workspace, fake_llm, run_loop):
    with pytest.raises(InvalidSetting, match="slots"):
        run_loop.small([BETTER], tag=TAG, sandbox="off", slots=2, max_experiments=2)


# --- stopping with several things in flight

def two_trainings_and_a_draft_in_flight(workspace: Path, fake_llm) -> ToolProcess:
    """The tool as a real process on two slots, both training experiments that hang, a third being drafted."""
    hang = [inject(f"wait for the data {n}", f"time.sleep({60 + n})") for n in (1, 2)]
    fake_llm.set_script([*hang, {"content": BETTER, "delay": 60}])
    tool = ToolProcess(workspace, "run", "--tag", TAG, *RUN_FLAGS, "--slots", "2", "--sandbox", "on", "--draft-ahead",
                       env=tool_env(fake_llm))
    assert tool.wait_for("experiment 3: started", 30), tool.stderr()
    assert wait_until(lambda: ledger_query(workspace, "SELECT COUNT(*) FROM training_runs WHERE tag = ? AND "
                                           "outcome = 'running' AND experiment > 0", TAG)[0][0] == 2, 20)
    return tool


def test_ctrl_c_with_trainings_and_a_draft_in_flight_stops_within_seconds(workspace, fake_llm, run_loop):
    tool = two_trainings_and_a_draft_in_flight(workspace, fake_llm)
    started = time.monotonic()
    tool.interrupt()
    assert tool.wait(20) == 130, tool.stderr()
    assert time.monotonic() - started < 10
    rows = ledger_query(workspace, "SELECT number, outcome, reason FROM experiments WHERE tag = ? ORDER BY number", TAG)
    assert rows[1:] == [(n, "interrupted", "stopped by the person (Ctrl-C)") for n in (1, 2, 3)]
    assert run_processes(workspace) == []
    # the resume goes on with the next number, its own settings (two slots) and a consistent run
    loop = run_loop.make([reply("double the width", "WIDTH = 4", "WIDTH = 8")], small=True)
    options = resumed_options(loop.ledger.run(TAG), {"max_experiments": 2})
    assert options.slots == 2
    _, rows, _ = run_loop(loop=loop, resume=True, tag=TAG, options=options)
    assert [(row["number"], row["outcome"]) for row in rows][4:] == [(4, "keep")]
    assert_consistent(workspace, rows)


def test_a_resume_with_several_in_flight_at_the_kill_puts_each_straight(workspace, fake_llm, run_loop):
    tool = two_trainings_and_a_draft_in_flight(workspace, fake_llm)
    tool.kill(whole_group=True)
    tool.wait(10)
    assert wait_until(lambda: run_processes(workspace) == [], 10)  # the sandboxes die with their launcher
    loop = run_loop.make([reply("double the width", "WIDTH = 4", "WIDTH = 8")], small=True)
    _, rows, _ = run_loop(loop=loop, resume=True, tag=TAG, options=resumed_options(loop.ledger.run(TAG),
                                                                                     {"max_experiments": 2}))
    assert [(row["number"], row["outcome"]) for row in rows] == [
        (0, "keep"), (1, "interrupted"), (2, "interrupted"), (3, "interrupted"), (4, "keep")]
    assert all(run["outcome"] != "running" for run in loop.ledger.training_runs(TAG))
    assert_consistent(workspace, rows)


# --- spending caps with drafts under way

def test_a_token_cap_counts_the_drafts_under_way_on_four_slots(workspace, fake_llm, run_loop):
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    script = [{"content": reply(f"variant {n}", "# --- summary", f"# --- summary\n# variant {n}"), "usage": usage,
               "delay": 0.3} for n in range(6)]
    loop, rows = run_ahead(run_loop, script, slots=4, max_experiments=10, max_tokens=2500)
    # Four idle slots would draft four at once (4,400 tokens); the first draft's cost is measured
    # before a second starts, and the second, under way, counts before a third would.
    spent = sum(row["prompt_tokens"] + row["completion_tokens"] for row in loop.ledger.token_usage(TAG))
    assert spent == 2200 and len(rows) == 3
    assert loop.ledger.run(TAG)["status"] == "finished"
    assert_consistent(workspace, rows)
