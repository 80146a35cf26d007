"""The keep rule in the real loop: noise runs, confirmation runs, the seed guard, every training run recorded.

A real fake endpoint, real git repositories, real training subprocesses, on the noisy synthetic
recipe of noisy_recipe.py (val_loss = known function of the constants + noise of sd 0.01).
"""

from __future__ import annotations

import statistics

import pytest
from conftest import reply
from noisy_recipe import NOISE_SD, make_noisy_workspace, val_noise

from autoresearch.ledger import Ledger

REAL_GAIN = reply("lower the learning rate", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3")  # gain 0.04 = 4 sd
FIRST_LINE = "save_model(LEARNING_RATE, WIDTH, MEMORIZE, seed)"


@pytest.fixture
def noisy(run_loop):
    return run_loop.workspace(make_noisy_workspace)


def test_noise_floor_is_measured_from_baseline_runs_and_matches_the_known_noise(noisy, fake_llm, run_loop):
    loop, rows, _ = run_loop([REAL_GAIN], max_experiments=1, noise_runs=24)
    ledger = loop.ledger
    assert len(rows) == 1  # the noise runs are training runs of the baseline, not experiments
    runs = ledger.training_runs("t", 0)
    assert [r["kind"] for r in runs] == ["first"] + ["noise"] * 24
    assert len({r["seed"] for r in runs}) == 25 and runs[0]["seed"] == 0
    assert all(r["outcome"] == "ok" and r["commit_sha"] == rows[0]["commit_sha"] for r in runs)
    metrics = [r["metric"] for r in runs]
    run = ledger.run("t")
    assert run["noise_std"] == pytest.approx(statistics.stdev(metrics))
    assert run["noise_std"] == pytest.approx(NOISE_SD, rel=0.35)
    assert run["noise_runs"] == 25
    assert rows[0]["metric"] == pytest.approx(statistics.mean(metrics))  # the baseline is the mean of its runs
    assert rows[0]["decision"]["seeds"] == [r["seed"] for r in runs]


def test_noise_floor_and_margin_are_in_the_prompt(noisy, fake_llm, run_loop):
    run_loop([REAL_GAIN, REAL_GAIN], max_experiments=2)
    prompt = fake_llm.requests[0]["messages"][1]["content"]
    assert "run-to-run noise" in prompt and "over 3 runs with different seeds" in prompt
    assert "kept only when it beats the best by more than" in prompt


def test_a_real_improvement_is_kept_after_it_holds_on_a_second_seed(noisy, fake_llm, run_loop):
    loop, rows, _ = run_loop([REAL_GAIN])
    ledger = loop.ledger
    assert rows[1]["outcome"] == "keep"
    runs = ledger.training_runs("t", 1)
    assert [r["kind"] for r in runs] == ["first", "confirm"]
    assert runs[0]["seed"] == 0 and runs[1]["seed"] not in {r["seed"] for r in ledger.training_runs("t", 0)}
    decision = rows[1]["decision"]
    assert decision["candidate_runs"] == 2 and decision["best_runs"] == 3
    assert rows[1]["metric"] == pytest.approx(statistics.mean(r["metric"] for r in runs))
    assert rows[1]["best_before"] == pytest.approx(rows[0]["metric"])
    assert decision["gain"] > decision["margin"] > 0
    assert (noisy / "runs/t/1.log").is_file() and (noisy / "runs/t/1.1.log").is_file()


def test_changes_below_the_noise_are_not_kept(noisy, fake_llm, run_loop):
    # Six changes whose true gain is 0.2 sd or less: under the naive rule about half would be kept.
    tiny = [reply(f"nudge {value}", "LEARNING_RATE = 0.5", f"LEARNING_RATE = {value}")
            for value in (0.499, 0.498, 0.497, 0.496, 0.495, 0.501)]
    loop, rows, _ = run_loop(tiny, max_experiments=7, noise_runs=4)
    ledger = loop.ledger
    assert [r["outcome"] for r in rows[1:]] == ["discard"] * 6
    assert all(r["reason"] is None or r["reason"].startswith(("within noise", "below the margin")) for r in rows[1:])
    # The naive rule (one run each, keep anything lower than the best) would have kept some of them.
    naive_best, naive_keeps = rows[0]["decision"]["metrics"][0], 0
    for row in rows[1:]:
        first = row["decision"]["metrics"][0]
        if first < naive_best:
            naive_best, naive_keeps = first, naive_keeps + 1
    assert naive_keeps >= 1
    for row in (r for r in rows[1:] if r["decision"]["candidate_runs"] > 1):  # decided on the mean of its runs
        metrics = [r["metric"] for r in ledger.training_runs("t", row["number"])]
        assert row["metric"] == pytest.approx(statistics.mean(metrics))


def test_a_seed_only_change_never_wins(noisy, fake_llm, run_loop):
    # The edit swaps the harness's seed for the luckiest of 5000 seeds, in a way no pattern catches.
    lucky = min(range(5000), key=val_noise)
    assert val_noise(lucky) < -3 * NOISE_SD
    sneaky = reply("use a better initialisation", FIRST_LINE, FIRST_LINE.replace("seed)", f"{lucky})"))
    loop, rows, _ = run_loop([sneaky])
    ledger = loop.ledger
    assert rows[1]["outcome"] == "invalid"
    assert "ignores the harness's seed" in rows[1]["reason"]
    runs = ledger.training_runs("t", 1)
    assert len(runs) == 2 and runs[0]["metric"] == runs[1]["metric"] and runs[0]["seed"] != runs[1]["seed"]


@pytest.mark.parametrize("search, replace", [
    ('seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))', "seed = 1234"),
    (FIRST_LINE, 'os.environ["AUTORESEARCH_SEED"] = "7"\n' + FIRST_LINE),
    (FIRST_LINE, "import random\nrandom.seed(3)\n" + FIRST_LINE),
])
def test_an_edit_that_sets_the_seed_is_invalid_and_never_trained(noisy, fake_llm, search, replace, run_loop):
    loop, rows, _ = run_loop([reply("pick a seed", search, replace)])
    ledger = loop.ledger
    assert rows[1]["outcome"] == "invalid" and "the harness owns the seed" in rows[1]["reason"]
    assert ledger.training_runs("t", 1) == []


def test_a_run_never_scores_the_test_split_and_what_the_training_prints_of_it_is_ignored(noisy, fake_llm, run_loop):
    """Only `verify` asks the harness's evaluation for the test split; a training's own test_loss line is no number."""
    cheat = reply("report more", 'print("---")', 'print("---")\nprint("test_loss: 0.1")\nprint("val_loss: 0.01")')
    loop, rows, _ = run_loop([cheat], noise_runs=0)
    ledger = loop.ledger
    assert rows[1]["outcome"] == "discard" and rows[1]["metric"] == pytest.approx(rows[0]["metric"], abs=0.05)
    assert "test_loss" not in rows[1]["summary"] and "val_loss" not in rows[1]["summary"]
    for run in ledger.training_runs("t"):
        assert set(run["evaluation"]) == {"val_loss"}  # the harness evaluated the validation split only


def test_noise_runs_zero_is_the_plain_rule(noisy, fake_llm, run_loop):
    nudge = reply("nudge", "LEARNING_RATE = 0.5", "LEARNING_RATE = 0.499")
    loop, rows, _ = run_loop([nudge], noise_runs=0)
    ledger = loop.ledger
    assert ledger.run("t")["noise_std"] is None
    assert len(ledger.training_runs("t")) == 2  # one run each, no confirmations
    expected = "keep" if rows[1]["metric"] < rows[0]["metric"] else "discard"
    assert rows[1]["outcome"] == expected


def test_resume_keeps_the_noise_floor_and_the_best_runs(noisy, fake_llm, run_loop):
    run_loop([REAL_GAIN], max_experiments=1)
    run_loop([REAL_GAIN], resume=True, tag="t", max_experiments=2)
    rows = Ledger(noisy / "runs/ledger.db").experiments("t")
    assert rows[1]["outcome"] == "keep"
    assert rows[1]["decision"]["best_metrics"] == rows[0]["decision"]["metrics"]
    assert "run-to-run noise" in fake_llm.requests[0]["messages"][1]["content"]
