"""The limits (run/limits.py): one definition of whether another experiment may start."""

from __future__ import annotations

import pytest
from conftest import UNIT_TAG as TAG

from autoresearch.agents import LLMCall
from autoresearch.errors import UserError
from autoresearch.run.limits import ActiveClock, Limits, check_caps, experiments_done
from autoresearch.run.state import Best
from autoresearch.settings import RunOptions


def limits_of(new_run, **options) -> Limits:
    return Limits(new_run.ledger, new_run.state, RunOptions(**options), ActiveClock(new_run.ledger, TAG),
                  new_run.prices)


def test_experiments_count_when_they_ended_and_not_when_interrupted(new_run):
    journal = new_run.journal
    done, stopped = journal.open_experiment(), journal.open_experiment()
    journal.open_experiment()  # still open: it does not count
    journal.close(done, "discard", None, 1.0)
    journal.interrupt(stopped, "Ctrl-C")
    assert experiments_done(new_run.ledger, TAG) == 1
    limits = limits_of(new_run, max_experiments=2)
    assert limits.reached() is None
    assert limits.reached(in_flight=1) == "reached --max-experiments 2"  # the one in flight counts


def test_hours_count_the_time_the_run_has_been_going(new_run):
    new_run.ledger.add_active_seconds(TAG, 3600.0)
    assert limits_of(new_run, hours=1.0).reached() == "reached --hours 1"
    assert limits_of(new_run, hours=2.0).reached() is None


def test_a_token_cap_stops_before_an_experiment_would_pass_it_but_never_a_combination(new_run):
    journal, state = new_run.journal, new_run.state
    state.best = Best(state.best.commit, 0, 1.0)  # caps count once the baseline is measured
    number = journal.open_experiment()
    journal.record_call(number, LLMCall(1, "gpt-5-mini", [], "ok", None, 900, 100, 0.1))
    limits = limits_of(new_run, max_tokens=1500)
    assert "reached --max-tokens 1500" in limits.reached()
    assert limits.reached(asks_agent=False) is None
    assert not limits.spending_unmeasured()
    assert limits_of(new_run, max_tokens=5000).reached() is None


def test_a_cap_with_no_proposal_priced_yet_drafts_one_at_a_time(new_run):
    assert limits_of(new_run, max_tokens=1000).spending_unmeasured()
    assert not limits_of(new_run).spending_unmeasured()


def test_a_dollar_cap_needs_the_model_price(new_run):
    with pytest.raises(UserError, match="needs a price for model 'my-local'"):
        check_caps(RunOptions(max_cost=1.0), new_run.prices, "my-local")
    check_caps(RunOptions(max_cost=1.0), new_run.prices, "gpt-5-mini")
