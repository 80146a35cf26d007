"""The keep rule (keep.py): numbers in, a verdict out, and the record the ledger keeps of it."""

from __future__ import annotations

import json

from autoresearch.keep import DecisionRecord, Evidence, KeepRule, failed_confirmation, judge, keep_margin
from autoresearch.noise import NoiseFloor

RULE = KeepRule(noise_multiple=2.0, min_delta=0.0, confirm_runs=3)
BASELINE_RUNS = [1.0, 1.01, 0.99]  # the baseline's runs: the noise floor they make
NOISE = NoiseFloor.pooled([BASELINE_RUNS])


def evidence(metrics, against=(1.0,), parent_is_best=True, seeds=None, noise=NOISE):
    return Evidence(list(metrics), list(seeds or range(len(metrics))), list(against), parent_is_best, "lower", noise,
                    [BASELINE_RUNS])


def test_a_clear_gain_on_one_seed_asks_for_a_confirmation_then_keeps():
    assert judge(evidence([0.9]), RULE, "val_loss").verdict == "confirm"
    kept = judge(evidence([0.9, 0.9001]), RULE, "val_loss")
    assert kept.verdict == "keep" and kept.refines_noise and kept.metric == (0.9 + 0.9001) / 2


def test_a_loss_is_discarded_and_a_gain_within_the_noise_too():
    assert judge(evidence([1.1]), RULE, "val_loss").verdict == "discard"
    within = judge(evidence([0.999]), RULE, "val_loss")
    assert within.verdict == "discard" and "within noise" in within.reason


def test_a_gain_over_a_parent_that_is_no_longer_the_best_is_combined_never_kept():
    judgement = judge(evidence([0.9, 0.9001], parent_is_best=False), RULE, "val_loss")
    assert judgement.verdict == "combine"
    assert judge(evidence([1.1, 1.1001], parent_is_best=False), RULE, "val_loss").verdict == "discard"


def test_the_same_metric_under_different_seeds_is_invalid():
    judgement = judge(evidence([0.9, 0.9], seeds=[1, 2]), RULE, "val_loss")
    assert judgement.verdict == "invalid" and "ignores the harness's seed" in judgement.reason
    assert not judgement.refines_noise


def test_without_a_noise_floor_the_plain_rule_keeps_any_gain_past_min_delta():
    unknown = NoiseFloor(std=None, runs=1)
    assert judge(evidence([0.99], noise=unknown), RULE, "val_loss").verdict == "keep"
    assert judge(evidence([0.99], noise=unknown), KeepRule(min_delta=0.05), "val_loss").verdict == "discard"


def test_the_record_keeps_the_keys_show_and_log_json_read():
    record = judge(evidence([0.9, 0.9001]), RULE, "val_loss").record.as_dict()
    assert set(record) == {"verdict", "gain", "margin", "noise", "candidate_runs", "best_runs", "reason", "metrics",
                           "seeds", "best_metrics", "noise_std"}
    json.dumps(record)  # what the ledger stores
    assert DecisionRecord.of_baseline([1.0, 1.01], [0, 5], 0.007).as_dict() == {
        "verdict": "keep", "metrics": [1.0, 1.01], "seeds": [0, 5], "noise_std": 0.007, "candidate_runs": 2}
    assert failed_confirmation([0.9], [0], [1.0], 0.01).as_dict() == {
        "metrics": [0.9], "seeds": [0], "best_metrics": [1.0], "noise_std": 0.01}


def test_the_margin_the_agent_is_told_follows_the_best_runs_and_the_noise():
    one, three = keep_margin([1.0], "lower", NOISE, RULE), keep_margin([1.0, 1.0, 1.0], "lower", NOISE, RULE)
    assert one > three > 0
    assert keep_margin([1.0], "lower", NoiseFloor(None, 1), KeepRule(min_delta=0.02)) == 0.02
