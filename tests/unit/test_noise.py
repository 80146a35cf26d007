"""The statistics of docs/noise.md as pure functions: seeds, the keep rule, the seed guard, t intervals."""

from __future__ import annotations

import random
import statistics

import pytest

from autoresearch.keep import KeepRule, decide, ignores_harness_seed
from autoresearch.noise import NoiseFloor, derive_seed, gain_interval, harness_tampering, t_quantile_95, verify_seed

TRAIN = """\
import os
import random
import torch

LEARNING_RATE = 0.5

seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
random.seed(seed)
torch.manual_seed(seed)
loss = LEARNING_RATE
"""


def edited(old: str, new: str) -> dict[str, str]:
    assert old in TRAIN
    return {"train.py": TRAIN.replace(old, new)}


# --- seeds

def test_first_runs_get_the_run_seed_and_other_runs_distinct_derived_seeds():
    assert derive_seed(7, 0, 0) == derive_seed(7, 12, 0) == 7
    derived = {derive_seed(7, experiment, attempt) for experiment in range(50) for attempt in range(1, 5)}
    assert len(derived) == 200 and 7 not in derived
    assert derive_seed(7, 3, 1) == derive_seed(7, 3, 1)  # replayable
    assert derive_seed(7, 3, 1) != derive_seed(8, 3, 1)
    verify = {verify_seed(7, index) for index in range(20)}
    assert len(verify) == 20 and not verify & derived


# --- the keep rule

SIGMA = 0.01
RULE = KeepRule(noise_multiple=2.0, min_delta=0.0, confirm_runs=2)
BEST = [1.00, 1.01, 0.99]  # mean 1.0, lower is better


def test_gain_within_the_noise_is_discarded_at_once():
    decision = decide([0.995], BEST, "lower", SIGMA, RULE)
    assert decision.verdict == "discard"
    assert decision.noise == pytest.approx(SIGMA * (1 + 1 / 3) ** 0.5)
    assert "within noise" in decision.reason


def test_gain_past_the_margin_needs_one_more_seed_then_is_kept():
    first = decide([0.95], BEST, "lower", SIGMA, RULE)
    assert first.verdict == "confirm" and first.gain == pytest.approx(0.05)
    second = decide([0.95, 0.96], BEST, "lower", SIGMA, RULE)
    assert second.verdict == "keep"
    assert second.margin == pytest.approx(2 * SIGMA * (1 / 2 + 1 / 3) ** 0.5)


def test_gain_between_noise_and_margin_is_confirmed_then_decided_on_the_mean():
    assert decide([0.985], BEST, "lower", SIGMA, RULE).verdict == "confirm"
    assert decide([0.985, 1.0], BEST, "lower", SIGMA, RULE).verdict == "discard"  # mean gain 0.0075 < noise
    assert decide([0.985, 0.98, 0.98], BEST, "lower", SIGMA, RULE).verdict == "keep"  # 0.0183 > 2 * 0.00816


def test_confirmations_are_bounded():
    decision = decide([0.986, 0.988, 0.987], BEST, "lower", SIGMA, RULE)
    assert decision.verdict == "discard" and "after 3 runs" in decision.reason
    no_confirm = KeepRule(noise_multiple=2.0, confirm_runs=0)
    assert decide([0.985], BEST, "lower", SIGMA, no_confirm).verdict == "discard"
    assert decide([0.95], BEST, "lower", SIGMA, no_confirm).verdict == "keep"


def test_min_delta_raises_the_margin_and_higher_is_better_works():
    rule = KeepRule(noise_multiple=2.0, min_delta=0.1, confirm_runs=2)
    assert decide([0.95, 0.95], BEST, "lower", SIGMA, rule).verdict == "discard"
    assert decide([1.05, 1.06], BEST, "higher", SIGMA, RULE).verdict == "keep"
    assert decide([0.95], BEST, "higher", SIGMA, RULE).verdict == "discard"


def test_without_a_noise_floor_the_rule_is_the_plain_one():
    for std in (None, 0.0):
        assert decide([0.999], BEST, "lower", std, RULE).verdict == "keep"
        assert decide([1.0], BEST, "lower", std, RULE).verdict == "discard"
        small = decide([0.999], BEST, "lower", std, KeepRule(min_delta=0.01))
        assert small.verdict == "discard" and "--min-delta" in small.reason


def test_the_rule_keeps_few_pure_noise_candidates_and_most_real_gains():
    rng = random.Random(1)

    def kept(effect: float) -> bool:
        best = [rng.gauss(1.0, SIGMA) for _ in range(3)]
        runs = []
        while True:
            runs.append(rng.gauss(1.0 - effect, SIGMA))
            verdict = decide(runs, best, "lower", SIGMA, RULE).verdict
            if verdict != "confirm":
                return verdict == "keep"

    noise_kept = sum(kept(0.0) for _ in range(2000)) / 2000
    real_kept = sum(kept(4 * SIGMA) for _ in range(2000)) / 2000
    assert noise_kept < 0.05
    assert real_kept > 0.9


def test_noise_floor_is_the_sample_standard_deviation():
    metrics = [1.0, 1.02, 0.97, 1.01]
    floor = NoiseFloor.measure(metrics)
    assert floor.std == pytest.approx(statistics.stdev(metrics)) and floor.runs == 4 and floor.known
    assert not NoiseFloor.measure([1.0]).known
    assert not NoiseFloor.measure([1.0, 1.0]).known


def test_identical_metrics_under_different_seeds_mean_the_seed_was_ignored():
    noisy = NoiseFloor(std=0.01, runs=3)
    assert ignores_harness_seed([0.9, 0.9], [0, 5], noisy)
    assert not ignores_harness_seed([0.9, 0.91], [0, 5], noisy)
    assert not ignores_harness_seed([0.9, 0.9], [0, 5], NoiseFloor(std=0.0, runs=3))  # a deterministic recipe
    assert not ignores_harness_seed([0.9], [0], noisy)


# --- the seed guard

@pytest.mark.parametrize("old, new", [
    ('seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))', 'seed = 7'),
    ('seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))', 'os.environ["AUTORESEARCH_SEED"] = "7"\nseed = 7'),
    ("torch.manual_seed(seed)", "torch.manual_seed(1234)"),
    ("torch.manual_seed(seed)\n", ""),
    ("loss = LEARNING_RATE", "seed += 1\nloss = LEARNING_RATE"),
    ("loss = LEARNING_RATE", "import numpy as np\nnp.random.seed(0)\nloss = LEARNING_RATE"),
    ("loss = LEARNING_RATE", "rng = random.Random()\nloss = LEARNING_RATE"),
    ("loss = LEARNING_RATE", "split = train_test_split(data, random_state=42)\nloss = LEARNING_RATE"),
])
def test_edits_that_read_set_or_drop_the_seed_are_refused(old, new):
    reason = harness_tampering({"train.py": TRAIN}, edited(old, new))
    assert reason is not None and "seed" in reason


@pytest.mark.parametrize("old, new", [
    ("LEARNING_RATE = 0.5", "LEARNING_RATE = 0.3"),
    ("loss = LEARNING_RATE", "generator = torch.Generator().manual_seed(seed)\nloss = LEARNING_RATE"),
    ("loss = LEARNING_RATE", "loss = LEARNING_RATE  # not the seed = 3 you are looking for"),
])
def test_edits_that_leave_seeding_alone_pass(old, new):
    assert harness_tampering({"train.py": TRAIN}, edited(old, new)) is None


# --- confidence intervals

def test_t_quantiles_round_the_degrees_of_freedom_down():
    assert t_quantile_95(1) == 12.706 and t_quantile_95(4) == 2.776
    assert t_quantile_95(4.9) == 2.776
    assert t_quantile_95(35) == 2.042 and t_quantile_95(1000) == 1.960


def test_gain_interval_is_student_t_and_covers_the_true_gain_about_95_percent_of_the_time():
    interval = gain_interval([1.0, 1.02, 0.98], [0.9, 0.91, 0.89], "lower")
    assert interval.gain == pytest.approx(0.1)
    assert interval.dof == 4
    pooled = ((0.02 ** 2 * 2 + 0.01 ** 2 * 2) / 4) ** 0.5
    assert interval.high - interval.gain == pytest.approx(2.776 * pooled * (2 / 3) ** 0.5)
    assert interval.excludes_zero and interval.low < 0.1 < interval.high
    assert gain_interval([1.0], [0.9, 0.9], "lower") is None

    rng = random.Random(3)
    covered = 0
    for _ in range(2000):
        reference = [rng.gauss(1.0, 0.01) for _ in range(3)]
        candidate = [rng.gauss(0.99, 0.01) for _ in range(3)]
        found = gain_interval(reference, candidate, "lower")
        covered += found.low <= 0.01 <= found.high
    assert 0.93 < covered / 2000 < 0.985
