"""What is in flight (run/flights.py): how many proposals to draft at once, and how the agent is told of them."""

from __future__ import annotations

from autoresearch.agents import Candidate
from autoresearch.run.flights import MAX_DRAFTS, Draft, Flight, draft_concurrency, in_flight_lines
from autoresearch.run.state import Best


def test_while_the_baseline_trains_every_slot_wants_a_draft():
    assert draft_concurrency(slots=3, idle=0, baseline_measured=False, propose_times=[], train_times=[]) == 3
    assert draft_concurrency(slots=8, idle=0, baseline_measured=False, propose_times=[], train_times=[]) == MAX_DRAFTS


def test_drafts_follow_the_measured_proposal_and_training_times():
    # proposals as long as half a training: two busy slots need one draft ahead; one idle slot one more
    assert draft_concurrency(2, idle=0, baseline_measured=True, propose_times=[5.0], train_times=[10.0]) == 1
    assert draft_concurrency(2, idle=1, baseline_measured=True, propose_times=[5.0], train_times=[10.0]) == 2
    # proposals twice as long as a training on four slots: as many as may be, no more
    assert draft_concurrency(4, idle=0, baseline_measured=True, propose_times=[20.0], train_times=[10.0]) == MAX_DRAFTS
    assert draft_concurrency(1, idle=0, baseline_measured=True, propose_times=[], train_times=[]) == 1


def test_the_agent_is_told_what_trains_and_what_waits_for_a_slot():
    best = Best("abc", 0, 1.0)
    baseline = Flight(0, "baseline", "baseline: the unmodified recipe", best, 0.0)
    wider = Flight(1, "candidate", "wider", best, 0.0)
    waiting = Draft(2, "abc", 0, {}, 0.0)
    lines = in_flight_lines([baseline, wider], [(waiting, Candidate("deeper", {}))])
    assert lines == ("experiment 0: baseline: the unmodified recipe (its numbers come when it ends)",
                     "experiment 1: wider", "experiment 2: deeper (waiting for a slot)")
